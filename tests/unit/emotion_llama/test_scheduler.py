"""Continuous batching (emoserve.emotion_llama.scheduler) on the tiny random Llama: sequences that join a
running batch at any step compute exactly what they compute alone, share decode steps, leave at once when
cancelled, and the active-sequence and KV bounds hold. Steps are driven by hand, so every join is exact.
"""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch

from emoserve.emotion_llama import llm
from emoserve.emotion_llama.engine import EmotionLlamaEngine, EngineRequest, EngineRequestError, _label_prefix_text
from emoserve.emotion_llama.generation import SamplingParams, emotion_confidence, generate_batch
from emoserve.emotion_llama.prompts import EMOTION_LABELS
from emoserve.emotion_llama.scheduler import (
    ContinuousBatchScheduler,
    GenerationJob,
    SchedulerFull,
    SequenceCallbacks,
)
from tests.unit.emotion_llama.conftest import LONG_LABELS


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, top_p=1.0, repetition_penalty=1.0, top_k=0, max_new_tokens=n, **kw)


def hot(n: int, seed: int) -> SamplingParams:
    return SamplingParams(temperature=1.3, top_p=0.9, top_k=40, repetition_penalty=1.1, max_new_tokens=n, seed=seed)


def embeds(model, tokenizer, text: str) -> torch.Tensor:
    return llm.embed_tokens(model, tokenizer(text, add_special_tokens=False)["input_ids"])


class Recorder:
    """One sequence's callbacks, recording what came back (and the order events happened in across sequences)."""

    def __init__(self, name: str, log: list, cancelled: threading.Event | None = None, fail_on_token: int | None = None):
        self.name, self.log = name, log
        self.tokens: list[int] = []
        self.result = None
        self.error: BaseException | None = None
        self.cancelled = cancelled or threading.Event()
        self.fail_on_token = fail_on_token

    def callbacks(self) -> SequenceCallbacks:
        return SequenceCallbacks(self.on_finish, self.on_error, self.on_token, self.cancelled.is_set)

    def on_token(self, token: int, delta: str) -> None:
        if self.fail_on_token is not None and len(self.tokens) == self.fail_on_token:
            raise RuntimeError("the client went away")
        self.tokens.append(token)
        self.log.append((self.name, "token"))

    def on_finish(self, result) -> None:
        self.result = result
        self.log.append((self.name, "finish"))

    def on_error(self, exc: BaseException) -> None:
        self.error = exc
        self.log.append((self.name, "error"))


@pytest.fixture()
def scheduler(tiny):
    model, tokenizer, _ = tiny
    return ContinuousBatchScheduler(model, tokenizer, max_active_sequences=4, max_batch_tokens=4096, max_waiting=16)


@pytest.fixture()
def prompts(tiny):
    model, tokenizer, _ = tiny
    return [embeds(model, tokenizer, text) for text in
            ("Tell me a long story about a dragon", "Hi", "A much longer prompt than the others " * 6, "Count with me")]


def drain(scheduler: ContinuousBatchScheduler, limit: int = 500) -> None:
    for _ in range(limit):
        if not scheduler.has_work():
            return
        scheduler.step()
    raise AssertionError("the scheduler did not finish")


def test_joiners_at_any_step_equal_running_alone(tiny, scheduler, prompts):
    model, tokenizer, _ = tiny
    params = [greedy(30, min_new_tokens=30), greedy(12, min_new_tokens=12), hot(20, seed=5), hot(25, seed=9)]
    alone = [generate_batch(model, tokenizer, [p], [sp])[0] for p, sp in zip(prompts, params)]
    log: list = []
    recorders = [Recorder(str(i), log) for i in range(4)]
    join_after_steps = [0, 3, 4, 11]  # two joiners arrive in consecutive steps, one after others left
    steps = 0
    for i, join in enumerate(join_after_steps):
        while steps < join:
            scheduler.step()
            steps += 1
        scheduler.submit(GenerationJob(prompts[i], params[i]), recorders[i].callbacks())
    drain(scheduler)
    for recorder, expected in zip(recorders, alone):
        assert recorder.error is None
        got = recorder.result.generation
        assert got.token_ids == expected.token_ids and got.finish_reason == expected.finish_reason
        assert got.text == expected.text and recorder.tokens == list(expected.token_ids)
        assert np.allclose(got.token_logprobs, expected.token_logprobs, atol=1e-4)
    assert max(recorders[1].result.stats.step_batch_sizes) >= 2  # it really was decoded inside a batch
    assert scheduler.active_count == 0 and scheduler._reserved_tokens == 0 and scheduler._cache is None


def test_late_joiner_shares_steps_and_gets_its_first_token_before_the_long_one_ends(scheduler, prompts):
    log: list = []
    long, late = Recorder("long", log), Recorder("late", log)
    scheduler.submit(GenerationJob(prompts[0], greedy(40, min_new_tokens=40)), long.callbacks())
    for _ in range(5):
        scheduler.step()
    scheduler.submit(GenerationJob(prompts[1], greedy(6, min_new_tokens=6)), late.callbacks())
    drain(scheduler)
    assert log.index(("late", "token")) < log.index(("long", "finish"))
    assert log.index(("late", "finish")) < log.index(("long", "finish"))
    late_stats, long_stats = late.result.stats, long.result.stats
    assert late_stats.step_batch_sizes == [2] * 5  # 6 tokens: the first from its prefill, 5 decode steps shared
    assert long_stats.step_batch_sizes == [1] * 5 + [2] * 5 + [1] * 29  # 40 tokens: 1 from the prefill, 39 steps
    summary = late_stats.summary()
    assert summary["max_step_batch_size"] == 2 and summary["decode_steps"] == 5
    assert summary["queue_seconds"] >= 0 and summary["time_to_first_token_seconds"] >= summary["queue_seconds"]


def test_cancel_leaves_the_batch_at_once_and_others_continue(tiny, scheduler, prompts):
    model, tokenizer, _ = tiny
    log: list = []
    stays, goes = Recorder("stays", log), Recorder("goes", log)
    scheduler.submit(GenerationJob(prompts[0], greedy(20, min_new_tokens=20)), stays.callbacks())
    scheduler.submit(GenerationJob(prompts[2], greedy(50, min_new_tokens=50)), goes.callbacks())
    for _ in range(4):
        scheduler.step()
    goes.cancelled.set()
    tokens_when_cancelled = len(goes.tokens)
    scheduler.step()
    assert goes.result is not None and goes.result.generation.finish_reason == "cancelled"
    assert len(goes.tokens) == tokens_when_cancelled  # not one more token
    assert scheduler.active_count == 1
    # its cache rows are gone and so is the left padding only the short prompt had
    assert scheduler._mask.shape == (1, int(prompts[0].shape[0]) + len(stays.tokens) - 1)
    assert bool(scheduler._mask.all())
    drain(scheduler)
    expected = generate_batch(model, tokenizer, [prompts[0]], [greedy(20, min_new_tokens=20)])[0]
    assert stays.result.generation.token_ids == expected.token_ids
    assert stays.result.stats.step_batch_sizes == [2] * 4 + [1] * 15


def test_cancelled_while_waiting_is_answered_without_decoding(tiny, prompts):
    model, tokenizer, _ = tiny
    scheduler = ContinuousBatchScheduler(model, tokenizer, max_active_sequences=1, max_batch_tokens=4096, max_waiting=4)
    log: list = []
    first, waiting = Recorder("first", log), Recorder("waiting", log)
    scheduler.submit(GenerationJob(prompts[0], greedy(30, min_new_tokens=30)), first.callbacks())
    scheduler.submit(GenerationJob(prompts[1], greedy(30)), waiting.callbacks())
    scheduler.step()
    waiting.cancelled.set()
    scheduler.step()
    assert waiting.result.generation.finish_reason == "cancelled" and waiting.tokens == []
    assert waiting.result.stats.admitted_at is None and first.result is None


def test_max_active_sequences_bound_and_waiters_admitted_when_slots_free(tiny, prompts):
    model, tokenizer, _ = tiny
    scheduler = ContinuousBatchScheduler(model, tokenizer, max_active_sequences=2, max_batch_tokens=4096, max_waiting=8)
    log: list = []
    lengths = [5, 9, 4, 6, 3]
    recorders = [Recorder(str(i), log) for i in range(len(lengths))]
    for i, n in enumerate(lengths):
        scheduler.submit(GenerationJob(prompts[i % len(prompts)], greedy(n, min_new_tokens=n)), recorders[i].callbacks())
    active_per_step = []
    while scheduler.has_work():
        scheduler.step()
        active_per_step.append(scheduler.active_count)
    assert all(r.error is None and len(r.result.generation.token_ids) == n for r, n in zip(recorders, lengths))
    assert max(max(r.result.stats.step_batch_sizes, default=1) for r in recorders) == 2
    assert max(active_per_step) <= 2
    # the third request starts as soon as the first (5 tokens) leaves, not when the second one does
    admitted = [r.result.stats.admitted_at for r in recorders]
    assert admitted[2] < recorders[1].result.stats.finished_at
    assert admitted == sorted(admitted)  # oldest first


def test_kv_budget_bounds_admission(tiny, prompts):
    model, tokenizer, _ = tiny
    short = prompts[1]
    reservation = int(short.shape[0]) + 10
    scheduler = ContinuousBatchScheduler(model, tokenizer, max_active_sequences=8, max_batch_tokens=2 * reservation,
                                         max_waiting=8)
    recorders = [Recorder(str(i), []) for i in range(3)]
    for recorder in recorders:
        scheduler.submit(GenerationJob(short, greedy(10, min_new_tokens=10)), recorder.callbacks())
    scheduler.step()
    assert scheduler.active_count == 2 and scheduler.waiting_count == 1  # two reservations fill the budget
    drain(scheduler)
    assert all(len(r.result.generation.token_ids) == 10 for r in recorders)
    with pytest.raises(ValueError, match="KV budget"):
        scheduler.submit(GenerationJob(short, greedy(2 * reservation)), Recorder("big", []).callbacks())


def test_kept_prompt_cache_scores_labels_as_running_the_prompt_again(tiny, scheduler, prompts):
    """Prompts of three lengths prefilled together (left-padded) and one joining later: each kept cache gives
    the label probabilities a fresh run of its prompt gives, with and without an answer prefix."""
    model, tokenizer, _ = tiny
    recorders = [Recorder(str(i), []) for i in range(4)]
    lengths = [greedy(1), greedy(5, min_new_tokens=5), greedy(3, min_new_tokens=3), greedy(4, min_new_tokens=4)]
    for i in range(3):  # the first finishes at its first token, inside the prefill
        scheduler.submit(GenerationJob(prompts[i], lengths[i], keep_prompt_cache=True), recorders[i].callbacks())
    scheduler.step()
    scheduler.submit(GenerationJob(prompts[3], lengths[3], keep_prompt_cache=True), recorders[3].callbacks())
    drain(scheduler)
    prefix = tokenizer(" The emotion is", add_special_tokens=False)["input_ids"]
    for recorder, prompt in zip(recorders, prompts):
        kept = recorder.result.prompt_cache
        assert kept.length == prompt.shape[0] and kept.cache.get_seq_length() == prompt.shape[0]
        for prefix_ids, labels in (([], LONG_LABELS), (prefix, EMOTION_LABELS)):
            fresh = emotion_confidence(model, prompt, prefix_ids, tokenizer=tokenizer, labels=labels)
            from_cache = emotion_confidence(model, None, prefix_ids, tokenizer=tokenizer, labels=labels,
                                            prompt_cache=copy.deepcopy(kept))  # scoring consumes the cache
            for label in labels:
                assert from_cache[label] == pytest.approx(fresh[label], abs=1e-5), (recorder.name, label)
    assert scheduler._reserved_tokens == 0
    assert GenerationJob(prompts[1], greedy(10), keep_prompt_cache=True).kv_reservation == 2 * prompts[1].shape[0] + 10
    # without the flag nothing is kept
    plain = Recorder("plain", [])
    scheduler.submit(GenerationJob(prompts[1], greedy(2)), plain.callbacks())
    drain(scheduler)
    assert plain.result.prompt_cache is None


def test_waiting_queue_bound(tiny, prompts):
    model, tokenizer, _ = tiny
    scheduler = ContinuousBatchScheduler(model, tokenizer, max_active_sequences=1, max_batch_tokens=4096, max_waiting=2)
    for i in range(2):
        scheduler.submit(GenerationJob(prompts[1], greedy(3)), Recorder(str(i), []).callbacks())
    with pytest.raises(SchedulerFull):
        scheduler.submit(GenerationJob(prompts[1], greedy(3)), Recorder("x", []).callbacks())


def test_a_failing_callback_fails_only_its_sequence(tiny, scheduler, prompts):
    model, tokenizer, _ = tiny
    log: list = []
    healthy, broken = Recorder("healthy", log), Recorder("broken", log, fail_on_token=3)
    scheduler.submit(GenerationJob(prompts[0], greedy(15, min_new_tokens=15)), healthy.callbacks())
    scheduler.submit(GenerationJob(prompts[2], greedy(15, min_new_tokens=15)), broken.callbacks())
    drain(scheduler)
    assert isinstance(broken.error, RuntimeError) and broken.result is None and len(broken.tokens) == 3
    expected = generate_batch(model, tokenizer, [prompts[0]], [greedy(15, min_new_tokens=15)])[0]
    assert healthy.error is None and healthy.result.generation.token_ids == expected.token_ids
    assert scheduler._reserved_tokens == 0


def test_a_failing_forward_fails_the_batch_and_the_loop_thread_keeps_serving(tiny, prompts, monkeypatch):
    model, tokenizer, _ = tiny
    scheduler = ContinuousBatchScheduler(model, tokenizer, max_active_sequences=4, max_batch_tokens=4096, max_waiting=8)
    scheduler.start()
    try:
        done = threading.Event()
        broken = Recorder("broken", [])
        broken.on_error = lambda exc: (setattr(broken, "error", exc), done.set())
        original = model.forward
        monkeypatch.setattr(model, "forward", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
        scheduler.submit(GenerationJob(prompts[0], greedy(5)), broken.callbacks())
        assert done.wait(30) and str(broken.error) == "boom"
        monkeypatch.setattr(model, "forward", original)
        finished = threading.Event()
        healthy = Recorder("healthy", [])
        healthy.on_finish = lambda result: (setattr(healthy, "result", result), finished.set())
        scheduler.submit(GenerationJob(prompts[0], greedy(5, min_new_tokens=5)), healthy.callbacks())
        assert finished.wait(30) and len(healthy.result.generation.token_ids) == 5
    finally:
        scheduler.stop()
    assert not scheduler._thread.is_alive()


def test_the_loop_thread_runs_with_its_own_torch_thread_count(tiny, prompts):
    """Triton's thread stays single-threaded while the loop decodes with the threads it was started with."""
    model, tokenizer, _ = tiny
    scheduler = ContinuousBatchScheduler(model, tokenizer, max_active_sequences=2, max_batch_tokens=4096, max_waiting=4)
    seen, done = [], threading.Event()
    callbacks = SequenceCallbacks(on_finish=lambda result: (seen.append(torch.get_num_threads()), done.set()),
                                  on_error=lambda exc: done.set())
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(ValueError, match="intra_op_threads"):
            scheduler.start(intra_op_threads=0)
        scheduler.start(intra_op_threads=2)
        scheduler.submit(GenerationJob(prompts[1], greedy(2)), callbacks)
        assert done.wait(60) and seen == [2]
        assert torch.get_num_threads() == 1
    finally:
        scheduler.stop()
        torch.set_num_threads(before)


def test_engine_on_its_loop_thread_streams_and_scores_emotion(tiny_llm_folder):
    engine = EmotionLlamaEngine(tiny_llm_folder, max_active_sequences=2)
    multimodal = np.random.default_rng(0).standard_normal((260, engine.hidden_size)).astype(np.float32) * 0.02
    request = EngineRequest("[emotion] What is the emotion expressed in this video?", multimodal, greedy(6))
    (reference,) = engine.run([request])  # steps in this thread
    engine.start()
    try:
        results, deltas, done = [], [], threading.Event()
        engine.submit(request, on_result=lambda r: (results.append(r), done.set()), on_error=lambda e: done.set(),
                      on_token=lambda token, delta: deltas.append(delta))
        assert done.wait(60) and results
        with pytest.raises(EngineRequestError):
            engine.submit(EngineRequest("", multimodal), on_result=print, on_error=print)
    finally:
        engine.stop()
    (result,) = results
    assert result.token_ids == reference.token_ids and "".join(deltas) == result.text
    assert result.emotion == reference.emotion and result.confidence == pytest.approx(reference.confidence)
    metadata = result.metadata()
    assert metadata["max_step_batch_size"] == metadata["batch_size"] == 1 and metadata["time_to_first_token_seconds"] > 0
    # the label scores continue the prompt's cache from its prefill: they equal a fresh run of the prompt
    prefix = _label_prefix_text(result.text)
    prefix_ids = engine.tokenizer(prefix, add_special_tokens=False).input_ids if prefix else []
    fresh = emotion_confidence(engine.model, engine._embed(request), prefix_ids)
    assert result.label_probs == pytest.approx({label: round(p, 6) for label, p in fresh.items()}, abs=2e-6)
