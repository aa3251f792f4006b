"""Emotion-LLaMA's LLM engine on a CUDA GPU vs the CPU (the gpu target's KIND_GPU instance path).

    python -m benchmarks.gpu_emotion_llm --llm-folder DIR [--out FILE]

Greedy generation for a batch of prompts with seeded multimodal embeddings must give the same tokens
on both devices (the decode loop is device-agnostic); prints the GPU decode rate too.
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import numpy as np
import torch

from emoserve.emotion_llama.engine import NUM_MULTIMODAL_TOKENS, EmotionLlamaEngine, EngineRequest
from emoserve.emotion_llama.generation import SamplingParams

QUESTIONS = [
    "The person in video says: I can't believe it!  [reason] What is the emotional state of the person?",
    "[emotion] What is the emotion expressed in this video?",
    "Describe the person's emotional state in detail.",
    "[reason] What are the facial expressions and vocal tone used in the video?",
]


def requests(hidden: int, max_new_tokens: int) -> list[EngineRequest]:
    rng = np.random.default_rng(0)
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    return [EngineRequest(q, (0.02 * rng.standard_normal((NUM_MULTIMODAL_TOKENS, hidden))).astype(np.float32), params) for q in QUESTIONS]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--llm-folder", type=Path, required=True)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    cpu = EmotionLlamaEngine(args.llm_folder)
    batch = requests(cpu.hidden_size, args.max_new_tokens)
    cpu_results = cpu.run(batch)
    gpu = EmotionLlamaEngine(args.llm_folder, device="cuda:0")
    gpu.run(batch[:1])  # warm-up
    torch.cuda.synchronize()
    started = time.perf_counter()
    gpu_results = gpu.run(batch)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    same = [a.token_ids == b.token_ids for a, b in zip(cpu_results, gpu_results)]
    tokens = sum(len(r.token_ids) for r in gpu_results)
    lines = [
        "# Emotion-LLaMA LLM engine: CUDA vs CPU",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; device {torch.cuda.get_device_name(0)}; torch {torch.__version__}",
        f"- command: `python -m benchmarks.gpu_emotion_llm --llm-folder {args.llm_folder.name} --max-new-tokens {args.max_new_tokens}`",
        f"- model: {cpu.model.config.num_hidden_layers} layers, hidden {cpu.hidden_size} ({args.llm_folder.name})",
        f"- greedy token ids identical on CUDA and CPU, per request: {same}",
        f"- emotion label (CPU / CUDA): {cpu_results[1].emotion} / {gpu_results[1].emotion}; confidence {cpu_results[1].confidence:.4f} / {gpu_results[1].confidence:.4f}",
        f"- CUDA batch of {len(batch)}: {tokens} tokens in {elapsed:.3f} s = {tokens / elapsed:.0f} tokens/s",
        "",
    ]
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines))
    return 0 if all(same) else 1


if __name__ == "__main__":
    raise SystemExit(main())
