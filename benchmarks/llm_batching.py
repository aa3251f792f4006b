"""Continuous batching in ``emotion_llama_llm`` (the default SmolLM2 build), measured over Triton gRPC streaming.

Calls the LLM model directly (fixed random multimodal embeddings, greedy decoding), so the figures are the LLM's
own and not the encoders'. Every request generates exactly its ``MAX_NEW_TOKENS`` (``MIN_NEW_TOKENS`` equal to it:
EOS ignored, as vLLM's benchmarks do), so tokens/s measures decoding, not answers that happened to end early:

* total generated tokens/s with 1 and with 4 closed-loop clients (each sends its next request when its
  previous one is answered),
* time to first token of a short request alone, and of the same request sent while a long one is generating.

``python -m benchmarks.llm_batching --out benchmarks/results/llm-batching.md``
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import WORK_DIR, build, load_average, triton_server

log = logging.getLogger("benchmarks.llm_batching")

LONG_QUESTION = "Describe in great detail, step by step and at length, everything a person might feel on their first day at a new job."
SHORT_QUESTION = "The person in video says: Why are you looking at me like this?  [reason] What is the emotional state?"


@dataclass
class Answer:
    sent: float
    first_token: float
    done: float
    tokens: int
    metadata: dict


def stream_request(grpc_url: str, hidden: int, question: str, max_new_tokens: int,
                   on_delta: threading.Event | None = None, deltas_before_signal: int = 1) -> Answer:
    import tritonclient.grpc as grpcclient

    from emoserve.emotion_llama.engine import NUM_MULTIMODAL_TOKENS
    from emoserve.model_catalog import (
        EMOTION_LLM_MODEL,
        MAX_NEW_TOKENS,
        MIN_NEW_TOKENS,
        MULTIMODAL_EMBEDDINGS,
        PROMPT,
        RESULT_METADATA,
        TEMPERATURE,
        TEXT_DELTA,
        TOKEN_IDS,
    )

    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(grpc_url)
    client.start_stream(callback=lambda result, error: responses.put((time.perf_counter(), result, error)))
    try:
        multimodal = np.random.default_rng(0).standard_normal((1, NUM_MULTIMODAL_TOKENS, hidden)).astype(np.float32) * 0.02
        inputs = []
        for name, array, datatype in ((MULTIMODAL_EMBEDDINGS, multimodal, "FP32"),
                                      (PROMPT, np.array([[question.encode()]], dtype=np.object_), "BYTES"),
                                      (TEMPERATURE, np.array([[0.0]], np.float32), "FP32"),
                                      (MAX_NEW_TOKENS, np.array([[max_new_tokens]], np.int32), "INT32"),
                                      (MIN_NEW_TOKENS, np.array([[max_new_tokens]], np.int32), "INT32")):
            tensor = grpcclient.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        sent = time.perf_counter()
        client.async_stream_infer(EMOTION_LLM_MODEL, inputs)
        first, deltas = None, 0
        while True:
            arrived, result, error = responses.get(timeout=600)
            if error is not None:
                raise RuntimeError(str(error))
            if result.as_numpy(TEXT_DELTA) is not None:
                first = arrived if first is None else first
                deltas += 1
                if on_delta is not None and deltas == deltas_before_signal:
                    on_delta.set()
                continue
            metadata = json.loads(result.as_numpy(RESULT_METADATA).reshape(-1)[0])
            tokens = len(result.as_numpy(TOKEN_IDS).reshape(-1))
            return Answer(sent, first if first is not None else arrived, arrived, tokens, metadata)
    finally:
        client.stop_stream()
        client.close()


def throughput(grpc_url: str, hidden: int, clients: int, requests_per_client: int, max_new_tokens: int) -> dict:
    answers: list[Answer] = []
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
    tokens = sum(a.tokens for a in answers)
    return {"clients": clients, "requests": len(answers), "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "ttft_p50_s": statistics.median(a.first_token - a.sent for a in answers),
            "max_step_batch_size": max(a.metadata.get("max_step_batch_size", a.metadata.get("batch_size", 1)) for a in answers)}


def late_joiner_ttft(grpc_url: str, hidden: int, repeats: int, short_tokens: int, long_tokens: int, head_start_tokens: int) -> dict:
    alone = [stream_request(grpc_url, hidden, SHORT_QUESTION, short_tokens) for _ in range(repeats)]
    joined, long_still_running = [], []
    for _ in range(repeats):
        generating = threading.Event()
        long_answer: list[Answer] = []

        def run_long(answers=long_answer, signal=generating) -> None:
            answers.append(stream_request(grpc_url, hidden, LONG_QUESTION, long_tokens, signal, head_start_tokens))

        long_thread = threading.Thread(target=run_long)
        long_thread.start()
        if not generating.wait(600):
            raise RuntimeError("the long request streamed nothing")
        joined.append(stream_request(grpc_url, hidden, SHORT_QUESTION, short_tokens))
        long_thread.join()
        long_still_running.append(joined[-1].first_token < long_answer[0].done)
    return {"alone_ttft_s": statistics.median(a.first_token - a.sent for a in alone),
            "joined_ttft_s": statistics.median(a.first_token - a.sent for a in joined),
            "joined_max_step_batch_size": max(a.metadata.get("max_step_batch_size", a.metadata.get("batch_size", 1)) for a in joined),
            "long_still_running": all(long_still_running)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=128, help="per request of the throughput runs")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="TTFT measurements per case (the median is reported)")
    parser.add_argument("--label", default="continuous batching")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from export.build_repository import BuildSettings

    repository = build(WORK_DIR / "llm-batching-smollm2", BuildSettings(slices=("emotion_llama",)))
    hidden = json.loads((repository / "emotion_llama_llm" / "1" / "llm" / "config.json").read_text())["hidden_size"]
    server = triton_server(repository, "llm-batching")
    server.start()
    try:
        stream_request(server.grpc_url, hidden, SHORT_QUESTION, 4)  # warm-up
        figures = {"label": args.label, "max_new_tokens": args.max_new_tokens}
        for clients in (1, 4):
            figures[f"c{clients}"] = throughput(server.grpc_url, hidden, clients, args.requests_per_client, args.max_new_tokens)
            log.info("%s", figures[f"c{clients}"])
        figures["ttft"] = late_joiner_ttft(server.grpc_url, hidden, args.repeats, short_tokens=8, long_tokens=300,
                                           head_start_tokens=20)
        figures["load_average"] = load_average()
    finally:
        server.stop()
    figures["c4_over_c1_total"] = figures["c4"]["tokens_per_s"] / figures["c1"]["tokens_per_s"]
    figures["joined_over_alone_ttft"] = figures["ttft"]["joined_ttft_s"] / figures["ttft"]["alone_ttft_s"]
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
