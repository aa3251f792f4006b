"""Iteration-level (continuous, in-flight) batching: one decode loop that sequences join and leave between steps.

:class:`ContinuousBatchScheduler` keeps a waiting queue and a running batch. Each :meth:`~ContinuousBatchScheduler.step`

1. retires cancelled sequences (their KV-cache rows are dropped at once),
2. admits waiting sequences, oldest first, while fewer than ``max_active_sequences`` run and the KV budget
   allows (each sequence reserves ``prompt_tokens + max_new_tokens`` of ``max_batch_tokens``, so an admitted
   sequence can always run to its end); the admitted prompts are prefilled together, their first token is
   chosen, and their caches are merged into the running batch,
3. runs ONE decode step over the whole running batch and chooses every sequence's next token.

Finished sequences (EOS, length, stop string) leave right after the step that finished them. The running
batch follows :func:`~emoserve.emotion_llama.generation.generate_batch`'s convention: rows are left-padded
under a zero attention mask and position ids count only real positions, so every row computes what it would
compute alone (up to floating-point reassociation); when rows leave, the left padding that every remaining
row shares is trimmed. Sampling state per sequence (seeded generator, repetition-penalty history, stop
strings) is :class:`~emoserve.emotion_llama.generation.RequestState`, the same as in ``generate_batch``.

The scheduler knows nothing of Triton: callers get :class:`SequenceCallbacks` calls from the loop thread
(:meth:`~ContinuousBatchScheduler.start`) or from their own :meth:`~ContinuousBatchScheduler.step` calls (tests).
An exception while serving one sequence (its callback, its sampling) fails that sequence only; a failed
forward pass fails the sequences in it; the loop keeps running.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from emoserve.emotion_llama.generation import (
    FINISH_CANCELLED,
    GenerationResult,
    PromptCache,
    RequestState,
    SamplingParams,
    check_prompt_shapes,
    eos_token_ids,
    left_padded,
)

_log = logging.getLogger(__name__)


class SchedulerFull(RuntimeError):
    """The waiting queue is full: the caller should refuse the request (try again later)."""


class SchedulerStopped(RuntimeError):
    """The scheduler stopped before the sequence finished (or was submitted after it stopped)."""


@dataclass(frozen=True)
class GenerationJob:
    prompt_embeds: torch.Tensor  # [L, hidden]
    params: SamplingParams
    keep_prompt_cache: bool = False  # hand the prompt's own cache to on_finish (label scoring continues it)

    @property
    def prompt_tokens(self) -> int:
        return int(self.prompt_embeds.shape[0])

    @property
    def kv_reservation(self) -> int:
        """The most cache positions this sequence can ever hold: its prompt and every token it may generate
        (and a second copy of the prompt's when it is kept)."""
        return self.prompt_tokens * (2 if self.keep_prompt_cache else 1) + self.params.max_new_tokens


@dataclass
class SequenceCallbacks:
    on_finish: Callable[[SequenceResult], None]
    on_error: Callable[[BaseException], None]
    on_token: Callable[[int, str], None] | None = None  # (token id, text delta; "" inside a multi-byte character)
    is_cancelled: Callable[[], bool] | None = None  # polled before every step


@dataclass
class SequenceStats:
    """Where one sequence's time went, and with how many others it shared each decode step."""

    submitted_at: float
    admitted_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    step_batch_sizes: list[int] = field(default_factory=list)  # rows in each decode step this sequence was in

    def summary(self) -> dict:
        def since_submit(moment: float | None) -> float | None:
            return None if moment is None else round(moment - self.submitted_at, 4)

        steps = self.step_batch_sizes
        return {
            "queue_seconds": since_submit(self.admitted_at),
            "time_to_first_token_seconds": since_submit(self.first_token_at),
            "generation_seconds": None if self.admitted_at is None or self.finished_at is None
            else round(self.finished_at - self.admitted_at, 4),
            "decode_steps": len(steps),
            "max_step_batch_size": max(steps, default=1),
            "mean_step_batch_size": round(sum(steps) / len(steps), 3) if steps else 1.0,
        }


@dataclass(frozen=True)
class SequenceResult:
    generation: GenerationResult
    stats: SequenceStats
    prompt_cache: PromptCache | None = None  # with GenerationJob.keep_prompt_cache


@dataclass(eq=False)
class _Sequence:
    job: GenerationJob
    callbacks: SequenceCallbacks
    stats: SequenceStats
    state: RequestState | None = None  # set at admission
    next_token: int = 0  # chosen, not yet fed to the model
    next_position: int = 0  # its position id: real tokens before it
    prompt_cache: PromptCache | None = None  # kept from the prefill until the sequence finishes


class ContinuousBatchScheduler:
    def __init__(
        self,
        model,
        tokenizer,
        max_active_sequences: int,
        max_batch_tokens: int,
        max_waiting: int,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        for name, value in (("max_active_sequences", max_active_sequences), ("max_batch_tokens", max_batch_tokens),
                            ("max_waiting", max_waiting)):
            _check_positive_int(name, value)
        self.model = model
        self.tokenizer = tokenizer
        self.max_active_sequences = max_active_sequences
        self.max_batch_tokens = max_batch_tokens
        self.max_waiting = max_waiting
        self.clock = clock
        table = model.get_input_embeddings()
        self._table = table
        self._device, self._dtype = table.weight.device, table.weight.dtype
        self._eos_ids = eos_token_ids(model, tokenizer)
        # the waiting queue is shared with submitters; everything below it only with the loop
        self._wake = threading.Condition()
        self._waiting: deque[_Sequence] = deque()
        self._active: list[_Sequence] = []
        self._cache = None  # the running batch's KV cache, one row per active sequence
        self._mask: torch.Tensor | None = None  # [rows, cache width]: 0 on each row's left padding
        self._reserved_tokens = 0
        self._thread: threading.Thread | None = None
        self._stopping = False

    # ---- callers ----------------------------------------------------------------------------------------

    def submit(self, job: GenerationJob, callbacks: SequenceCallbacks) -> None:
        """Queue ``job``; raises ValueError (bad job), SchedulerFull or SchedulerStopped instead of queueing."""
        check_prompt_shapes([job.prompt_embeds], hidden=self._table.weight.shape[1])
        if job.kv_reservation > self.max_batch_tokens:
            kept = " (its cache kept for the label scores counts twice)" if job.keep_prompt_cache else ""
            raise ValueError(f"prompt ({job.prompt_tokens} tokens{kept}) + max_new_tokens "
                             f"({job.params.max_new_tokens}) exceeds the KV budget of {self.max_batch_tokens} tokens")
        with self._wake:
            if self._stopping:
                raise SchedulerStopped("the LLM scheduler has stopped")
            if len(self._waiting) >= self.max_waiting:
                raise SchedulerFull(f"{len(self._waiting)} requests are already waiting for the LLM")
            self._waiting.append(_Sequence(job, callbacks, SequenceStats(self.clock())))
            self._wake.notify()

    @property
    def active_count(self) -> int:
        return len(self._active)

    @property
    def waiting_count(self) -> int:
        with self._wake:
            return len(self._waiting)

    def has_work(self) -> bool:
        return bool(self._active) or self.waiting_count > 0

    @property
    def running(self) -> bool:
        """True while the loop thread runs the steps (then nobody else may call :meth:`step`)."""
        return self._thread is not None

    def start(self, intra_op_threads: int | None = None) -> None:
        """Run the decode loop on a daemon thread until :meth:`stop`, with ``intra_op_threads`` torch threads
        (torch's thread count is per OpenMP thread: the loop's own, not its starter's)."""
        if self._thread is not None:
            raise RuntimeError("the scheduler loop is already running")
        if intra_op_threads is not None:
            _check_positive_int("intra_op_threads", intra_op_threads)
        self._thread = threading.Thread(target=self._loop, args=(intra_op_threads,), name="emotion-llama-decode-loop",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the loop after its current step; sequences not finished get :class:`SchedulerStopped`."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                _log.error("the decode loop did not stop within %.0f s", timeout_s)
                return  # never touch the batch under a running step
        with self._wake:
            leftovers = list(self._waiting) + self._active
            self._waiting.clear()
        self._active, self._cache, self._mask, self._reserved_tokens = [], None, None, 0
        for seq in leftovers:
            self._fail(seq, SchedulerStopped("the LLM is shutting down"))

    def step(self) -> None:
        """One iteration: retire cancelled sequences, admit waiting ones, decode one token for the batch."""
        with torch.inference_mode():  # thread-local: the loop thread needs its own
            self._retire_cancelled()
            self._admit()
            if self._active:
                self._decode()

    # ---- the loop ---------------------------------------------------------------------------------------

    def _loop(self, intra_op_threads: int | None) -> None:
        if intra_op_threads is not None:
            torch.set_num_threads(intra_op_threads)
        while True:
            with self._wake:
                while not self._stopping and not self._waiting and not self._active:
                    self._wake.wait()
                if self._stopping:
                    return
            try:
                self.step()
            except Exception:  # a bug in the scheduler itself: fail what is running, keep serving
                _log.exception("decode loop step failed")
                self._fail_active(RuntimeError("internal scheduler error"))

    def _retire_cancelled(self) -> None:
        with self._wake:
            waiting = list(self._waiting)
        for seq in waiting:  # cancelled before admission: answered now, not when a slot frees
            if self._cancelled(seq):
                with self._wake:
                    self._waiting.remove(seq)
                self._finish_cancelled(seq)
        gone = [seq for seq in self._active if self._cancelled(seq)]
        for seq in gone:
            self._finish_cancelled(seq)
        self._keep_rows([seq for seq in self._active if seq not in gone])

    def _admit(self) -> None:
        admitted: list[_Sequence] = []
        with self._wake:
            # strictly oldest first: a big request at the head is not overtaken forever by small ones
            while self._waiting and len(self._active) + len(admitted) < self.max_active_sequences:
                reservation = self._waiting[0].job.kv_reservation
                if self._reserved_tokens + reservation > self.max_batch_tokens:
                    break
                admitted.append(self._waiting.popleft())
                self._reserved_tokens += reservation
        now = self.clock()
        joining = []
        for seq in admitted:
            seq.stats.admitted_at = now
            seq.state = RequestState.start(seq.job.params, self.tokenizer)
            joining.append(seq)
        if joining:
            self._prefill(joining)

    def _prefill(self, joining: list[_Sequence]) -> None:
        """Run the joiners' prompts together, choose their first tokens, merge their caches into the batch."""
        try:
            inputs, mask = left_padded([seq.job.prompt_embeds for seq in joining], self._dtype, self._device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            out = self.model(inputs_embeds=inputs, attention_mask=mask, position_ids=positions, use_cache=True,
                             logits_to_keep=1)
            logits = out.logits[:, -1, :].float().cpu()
        except Exception as exc:
            _log.exception("prefill of %d sequences failed", len(joining))
            for seq in joining:
                self._fail(seq, exc)
            return
        for row, seq in enumerate(joining):
            if seq.job.keep_prompt_cache:  # before _choose: a sequence may finish at its first token
                length = seq.job.prompt_tokens
                seq.prompt_cache = PromptCache(_row_cache(out.past_key_values, row, length), logits[row].clone(), length)
        now = self.clock()
        staying = []
        for row, seq in enumerate(joining):
            seq.stats.first_token_at = now
            seq.next_position = seq.job.prompt_tokens
            if self._choose(seq, logits[row]):
                staying.append(row)
        if not staying:
            return
        _select_rows(out.past_key_values, staying)
        self._merge(out.past_key_values, mask[staying], [joining[row] for row in staying])

    def _decode(self) -> None:
        batch = len(self._active)
        ids = torch.tensor([seq.next_token for seq in self._active], dtype=torch.long, device=self._device)
        positions = torch.tensor([[seq.next_position] for seq in self._active], dtype=torch.long, device=self._device)
        mask = torch.cat([self._mask, torch.ones(batch, 1, dtype=self._mask.dtype, device=self._device)], dim=1)
        try:
            out = self.model(inputs_embeds=self._table(ids)[:, None, :], attention_mask=mask, position_ids=positions,
                             past_key_values=self._cache, use_cache=True)
            logits = out.logits[:, -1, :].float().cpu()
        except Exception as exc:
            _log.exception("decode step over %d sequences failed", batch)
            self._fail_active(exc)
            return
        self._cache, self._mask = out.past_key_values, mask
        staying = []
        for row, seq in enumerate(self._active):
            seq.stats.step_batch_sizes.append(batch)
            seq.next_position += 1
            if self._choose(seq, logits[row]):
                staying.append(seq)
        self._keep_rows(staying)

    # ---- one sequence -----------------------------------------------------------------------------------

    def _choose(self, seq: _Sequence, logits: torch.Tensor) -> bool:
        """Advance ``seq`` by one token; True while it goes on (finished and failed sequences are dealt with)."""
        try:
            token = seq.state.advance(logits, self._eos_ids, seq.callbacks.on_token)
        except Exception as exc:
            _log.exception("sequence failed while choosing its token")
            self._fail(seq, exc)
            return False
        if token is None:
            self._finish(seq)
            return False
        seq.next_token = token
        return True

    def _cancelled(self, seq: _Sequence) -> bool:
        if seq.callbacks.is_cancelled is None:
            return False
        try:
            return bool(seq.callbacks.is_cancelled())
        except Exception:
            _log.exception("is_cancelled raised: treating the sequence as cancelled")
            return True

    def _finish(self, seq: _Sequence) -> None:
        seq.stats.finished_at = self.clock()
        kept = seq.prompt_cache
        self._release(seq)
        try:
            seq.callbacks.on_finish(SequenceResult(seq.state.result(), seq.stats, kept))
        except Exception as exc:
            _log.exception("on_finish raised")
            self._report_error(seq, exc)

    def _finish_cancelled(self, seq: _Sequence) -> None:
        if seq.state is None:
            seq.state = RequestState.start(seq.job.params, self.tokenizer)
        seq.state.finish = FINISH_CANCELLED
        self._finish(seq)

    def _fail(self, seq: _Sequence, exc: BaseException) -> None:
        if seq.stats.finished_at is None:
            seq.stats.finished_at = self.clock()
            self._release(seq)
        self._report_error(seq, exc)

    def _release(self, seq: _Sequence) -> None:
        seq.prompt_cache = None
        if seq.stats.admitted_at is not None:
            self._reserved_tokens -= seq.job.kv_reservation

    @staticmethod
    def _report_error(seq: _Sequence, exc: BaseException) -> None:
        try:
            seq.callbacks.on_error(exc)
        except Exception:
            _log.exception("on_error raised")

    def _fail_active(self, exc: BaseException) -> None:
        failed, self._active, self._cache, self._mask = self._active, [], None, None
        for seq in failed:
            self._fail(seq, exc)

    # ---- the running batch's cache ----------------------------------------------------------------------

    def _keep_rows(self, staying: list[_Sequence]) -> None:
        """Drop the rows of sequences that left, then the left padding every remaining row has."""
        if len(staying) == len(self._active):
            return
        if not staying:
            self._active, self._cache, self._mask = [], None, None
            return
        rows = [self._active.index(seq) for seq in staying]
        _select_rows(self._cache, rows)
        mask = self._mask[rows]
        shared_padding = int((mask.cumsum(-1) == 0).sum(-1).min())
        if shared_padding:
            for layer in _layers(self._cache):
                layer.keys = layer.keys[..., shared_padding:, :]
                layer.values = layer.values[..., shared_padding:, :]
            mask = mask[:, shared_padding:]
        self._active, self._mask = staying, mask

    def _merge(self, cache, mask: torch.Tensor, joining: list[_Sequence]) -> None:
        """Append the joiners' cache rows to the running batch, left-padding the narrower side."""
        if self._cache is None:
            self._cache, self._mask, self._active = cache, mask, list(joining)
            return
        width = max(self._mask.shape[1], mask.shape[1])
        for running, new in zip(_layers(self._cache), _layers(cache), strict=True):
            running.keys = torch.cat([_pad_left(running.keys, width), _pad_left(new.keys, width)], dim=0)
            running.values = torch.cat([_pad_left(running.values, width), _pad_left(new.values, width)], dim=0)
        self._mask = torch.cat([_pad_left_mask(self._mask, width), _pad_left_mask(mask, width)], dim=0)
        self._active = self._active + list(joining)


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _layers(cache) -> list:
    """The cache's per-layer key/value holders (``[rows, heads, width, head_dim]`` each)."""
    layers = getattr(cache, "layers", None)
    if layers is None or any(getattr(layer, "is_sliding", False) for layer in layers):
        raise TypeError(f"continuous batching needs a DynamicCache of full-attention layers, got {type(cache).__name__}")
    return layers


def _row_cache(cache, row: int, length: int) -> DynamicCache:
    """Row ``row``'s real (last ``length``) positions as a cache of its own: what a prefill of it alone holds."""
    kept = DynamicCache()
    for index, layer in enumerate(_layers(cache)):
        kept.update(layer.keys[row:row + 1, :, -length:].clone(), layer.values[row:row + 1, :, -length:].clone(), index)
    return kept


def _select_rows(cache, rows: list[int]) -> None:
    index = torch.tensor(rows, dtype=torch.long)
    for layer in _layers(cache):
        layer.keys = layer.keys[index.to(layer.keys.device)]
        layer.values = layer.values[index.to(layer.values.device)]


def _pad_left(states: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(states, (0, 0, width - states.shape[-2], 0))  # masked out: zeros never reach a real row


def _pad_left_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(mask, (width - mask.shape[1], 0))
