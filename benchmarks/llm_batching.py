"""Continuous batching in ``emotion_llama_llm`` (the default SmolLM2 build), measured over Triton gRPC streaming.

Calls the LLM model directly (fixed random multimodal embeddings, greedy decoding), so the figures are the LLM's
own and not the encoders'. Every request generates exactly its ``MAX_NEW_TOKENS`` (``MIN_NEW_TOKENS`` equal to it:
EOS ignored, as vLLM's benchmarks do), so tokens/s measures decoding, not answers that happened to end early:

* total generated tokens/s with 1 and with 4 closed-loop clients (each sends its next request when its
  previous one is answered),
* time to first token of a short request alone, and of the same request sent while a long one is generating.

``python -m benchmarks.llm_batching`` (~6 min on 2 cores) writes ``benchmarks/results/llm-batching.md``: the
serving goals with what was measured, the bandwidth floor measured in the same run (:mod:`benchmarks.llm_decode`).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import statistics
import threading
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR, WORK_DIR, Report, build, environment_lines, load_average, triton_server
from benchmarks.common import versions as c_versions
from emoserve.emotion_llama.defaults import EMOTION_LLAMA
from emoserve.emotion_llama.llm_stream import LlmAnswer, LlmStream, llm_hidden_size
from emoserve.model_catalog import EMOTION_LLM_MODEL

log = logging.getLogger("benchmarks.llm_batching")

LONG_QUESTION = "Describe in great detail, step by step and at length, everything a person might feel on their first day at a new job."
SHORT_QUESTION = "The person in video says: Why are you looking at me like this?  [reason] What is the emotional state?"


def stream_request(grpc_url: str, hidden: int, question: str, max_new_tokens: int,
                   on_delta: threading.Event | None = None, deltas_before_signal: int = 1) -> LlmAnswer:
    """One request of exactly ``max_new_tokens`` tokens; ``on_delta`` is set after ``deltas_before_signal`` deltas."""
    signal = None if on_delta is None else (lambda n: on_delta.set() if n == deltas_before_signal else None)
    with LlmStream(grpc_url, hidden, question, max_new_tokens, min_new_tokens=max_new_tokens) as stream:
        return stream.final(timeout_s=600, on_delta=signal)


def first_token_at(answer: LlmAnswer) -> float:
    return answer.done_at if answer.first_delta_at is None else answer.first_delta_at


def throughput(grpc_url: str, hidden: int, clients: int, requests_per_client: int, max_new_tokens: int) -> dict:
    answers: list[LlmAnswer] = []
    lock = threading.Lock()

    def client_loop() -> None:
        for _ in range(requests_per_client):
            answer = stream_request(grpc_url, hidden, LONG_QUESTION, max_new_tokens)
            with lock:
                answers.append(answer)

    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    tokens = sum(len(a.token_ids) for a in answers)
    decode_rates = [(len(a.token_ids) - 1) / (a.done_at - first_token_at(a)) for a in answers
                    if len(a.token_ids) > 1 and a.done_at > first_token_at(a)]
    return {"clients": clients, "requests": len(answers), "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "decode_tokens_per_s": statistics.median(decode_rates),
            "ttft_p50_s": statistics.median(first_token_at(a) - a.sent_at for a in answers),
            "max_step_batch_size": max(a.metadata.get("max_step_batch_size", a.metadata.get("batch_size", 1)) for a in answers)}


def late_joiner_ttft(grpc_url: str, hidden: int, repeats: int, short_tokens: int, long_tokens: int, head_start_tokens: int) -> dict:
    alone = [stream_request(grpc_url, hidden, SHORT_QUESTION, short_tokens) for _ in range(repeats)]
    joined, long_still_running = [], []
    for _ in range(repeats):
        generating = threading.Event()
        long_answer: list[LlmAnswer] = []

        def run_long(answers=long_answer, signal=generating) -> None:
            answers.append(stream_request(grpc_url, hidden, LONG_QUESTION, long_tokens, signal, head_start_tokens))

        long_thread = threading.Thread(target=run_long)
        long_thread.start()
        if not generating.wait(600):
            raise RuntimeError("the long request streamed nothing")
        joined.append(stream_request(grpc_url, hidden, SHORT_QUESTION, short_tokens))
        long_thread.join()
        long_still_running.append(first_token_at(joined[-1]) < long_answer[0].done_at)
    return {"alone_ttft_s": statistics.median(first_token_at(a) - a.sent_at for a in alone),
            "joined_ttft_s": statistics.median(first_token_at(a) - a.sent_at for a in joined),
            "joined_max_step_batch_size": max(a.metadata.get("max_step_batch_size", a.metadata.get("batch_size", 1)) for a in joined),
            "long_still_running": all(long_still_running)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answer-tokens", type=int, nargs="+", default=[128, EMOTION_LLAMA.max_new_tokens],
                        help="answer lengths of the throughput runs (default: 128 and the served max_new_tokens)")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="TTFT measurements per case (the median is reported)")
    parser.add_argument("--quick", action="store_true", help="128-token answers only, one TTFT measurement per case")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "llm-batching.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.quick:
        args.answer_tokens, args.repeats = [128], 1

    from benchmarks.llm_decode import measure_bandwidth, weight_bytes
    from emoserve.emotion_llama.llm import load_llm
    from export.build_repository import BuildSettings

    started_at, started = _dt.datetime.now(_dt.timezone.utc), time.perf_counter()
    repository = build(WORK_DIR / "llm-batching-smollm2", BuildSettings(slices=("emotion_llama",)))
    llm_folder = repository / EMOTION_LLM_MODEL / "1" / "llm"
    hidden = llm_hidden_size(repository)
    bandwidth = measure_bandwidth()
    floor_s = weight_bytes(load_llm(llm_folder)[0]) / bandwidth.copy_bytes_per_s
    server = triton_server(repository, "llm-batching")
    server.start()
    runs: dict[int, dict[int, dict]] = {}
    try:
        stream_request(server.grpc_url, hidden, SHORT_QUESTION, 4)  # warm-up
        for tokens in args.answer_tokens:
            runs[tokens] = {}
            for clients in (1, 4):
                runs[tokens][clients] = throughput(server.grpc_url, hidden, clients, args.requests_per_client, tokens)
                log.info("%d tokens, c%d: %s", tokens, clients, runs[tokens][clients])
        ttft = late_joiner_ttft(server.grpc_url, hidden, args.repeats, short_tokens=8, long_tokens=300, head_start_tokens=20)
        log.info("ttft: %s", ttft)
        versions = c_versions(server.grpc_url)
    finally:
        server.stop()
    report = Report()
    report.add("\n".join([
        "# Emotion-LLaMA LLM: continuous batching over Triton", "",
        f"- date: {started_at.isoformat(timespec='seconds')}; {time.perf_counter() - started:.0f} s",
        f"- command: `.venv/bin/python -m benchmarks.llm_batching{' --quick' if args.quick else ''}`",
        *environment_lines(versions),
        f"- load average at end: {load_average()}",
        "- model: `emotion_llama_llm` of the default build (SmolLM2-135M-Instruct, fp32), called over gRPC streaming with "
        f"fixed random multimodal embeddings, greedy; every answer exactly its length (MIN_NEW_TOKENS = MAX_NEW_TOKENS); "
        f"closed loop, {args.requests_per_client} requests per client", "",
    ]))
    first = runs[args.answer_tokens[0]]
    c1_step_s = 1 / first[1]["decode_tokens_per_s"]
    report.table("Summary", ["goal", "measured", "met"], [
        *[[f"total tokens/s at concurrency 4 >= 3x concurrency 1 ({tokens}-token answers)",
           f"{r[4]['tokens_per_s']:.1f} / {r[1]['tokens_per_s']:.1f} = {r[4]['tokens_per_s'] / r[1]['tokens_per_s']:.2f}x",
           "yes" if r[4]["tokens_per_s"] >= 3 * r[1]["tokens_per_s"] else "no"] for tokens, r in runs.items()],
        ["a request arriving while another generates: first token within 2x the unloaded time to first token",
         f"{ttft['joined_ttft_s'] * 1000:.0f} ms / {ttft['alone_ttft_s'] * 1000:.0f} ms = "
         f"{ttft['joined_ttft_s'] / ttft['alone_ttft_s']:.2f}x (joined a batch of {ttft['joined_max_step_batch_size']})",
         "yes" if ttft["joined_ttft_s"] <= 2 * ttft["alone_ttft_s"] else "no"],
        ["tokens/s at concurrency 1 within 1.5x of the bandwidth floor (weight bytes / copy bandwidth)",
         f"{c1_step_s * 1000:.1f} ms per decoded token over Triton vs floor {floor_s * 1000:.1f} ms "
         f"({bandwidth.copy_bytes_per_s / 1e9:.1f} GB/s copied) = {c1_step_s / floor_s:.2f}x",
         "yes" if c1_step_s <= 1.5 * floor_s else "no"],
    ])
    report.table("Throughput (closed loop)", ["answer tokens", "clients", "requests", "wall s", "total tokens/s",
                                              "decode tokens/s per client", "TTFT p50 ms", "max step batch"],
                 [[str(tokens), str(clients), str(f["requests"]), f"{f['wall_s']:.1f}", f"{f['tokens_per_s']:.1f}",
                   f"{f['decode_tokens_per_s']:.1f}", f"{f['ttft_p50_s'] * 1000:.0f}", str(f["max_step_batch_size"])]
                  for tokens, r in runs.items() for clients, f in r.items()],
                 note="total tokens/s = all generated tokens / wall time (prefills included); decode tokens/s per client "
                      "= tokens after the first / (final response - first token), the median over requests. Each new "
                      "request's ~313-token prompt is prefilled (compute-bound, about as long as a dozen decode steps) while "
                      "the running sequences wait.")
    report.table("Late joiner", ["case", "time to first token (median)"], [
        ["8-token request alone", f"{ttft['alone_ttft_s'] * 1000:.0f} ms"],
        ["the same, sent while a 300-token request generates", f"{ttft['joined_ttft_s'] * 1000:.0f} ms "
         f"(the long one still running: {ttft['long_still_running']})"],
    ])
    report.write(args.out)


if __name__ == "__main__":
    main()
