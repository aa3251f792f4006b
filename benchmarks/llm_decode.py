"""One LLM decode step against its memory-bandwidth floor, and lower-precision weights under a quality gate.

    python -m benchmarks.llm_decode --out benchmarks/results/llm-decode.md      # ~4 min on 2 cores

In-process (no Triton), the default LLM (SmolLM2-135M-Instruct, fp32), this machine's torch threads:

* **bandwidth**: a 1 GiB fp32 ``copy_`` (bytes copied per second, the issue's "copy bandwidth"; a copy reads and
  writes each byte, so its memory traffic is twice that) and a 1 GiB ``sum`` (bytes read per second);
* **floor** of one decode step = the weight bytes every step reads (each parameter once; tied embeddings once)
  over each bandwidth;
* **linear kernels**: all the model's linear layers once, ``F.linear`` against
  :class:`~emoserve.emotion_llama.skinny_gemm.SkinnyGemmLinear`, per number of rows;
* **decode step** (a 330-token context, like the 313-token Emotion-LLaMA prompt plus answer) per batch size for
  the served default (fp32, skinny GEMM), plain fp32, bf16 weights and int8 dynamic quantisation of the linear
  layers (per tensor and per channel);
* **quality gate** for each lower-precision variant against the served fp32 model: greedy answers of 32
  tokens on a fixed set of prompts must be identical (and the prompts' last-position logit error is reported,
  relative to the logits' standard deviation). A variant that fails is not offered as a build option.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks import common as c
from emoserve.emotion_llama.skinny_gemm import MAX_SKINNY_ROWS, skinny_mm

log = logging.getLogger("benchmarks.llm_decode")

GiB = 1024**3
CONTEXT_TOKENS = 330
BATCH_SIZES = (1, 2, 4, 8)
KERNEL_ROWS = (1, 2, 3, 4, 6, 8, 16, 32)
QUALITY_TOKENS = 32
QUALITY_PROMPTS = (
    "What is the capital of France?",
    "Describe how a person feels after losing a job.",
    "Write one sentence about the sea.",
    "The person in video says: I can't believe you did this! What is the emotion?",
    "List three colors.",
    "Why do people smile?",
    "Explain what anger is in one sentence.",
    "Give a synonym for happy.",
)


@dataclass(frozen=True)
class Bandwidth:
    copy_bytes_per_s: float  # bytes copied per second (read + write traffic is twice this)
    read_bytes_per_s: float


def best_seconds(work, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``work``, after one untimed warm-up call."""
    work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def measure_bandwidth(repeats: int = 10) -> Bandwidth:
    source = torch.ones(GiB // 4)
    target = torch.empty_like(source)

    copy_s = best_seconds(lambda: target.copy_(source), repeats)
    read_s = best_seconds(lambda: source.sum(), repeats)
    return Bandwidth(GiB / copy_s, GiB / read_s)


def weight_bytes(model) -> int:
    """Bytes of every parameter, each once (a tied lm_head is the embedding table)."""
    seen: dict[int, int] = {}
    for parameter in model.parameters():
        seen[id(parameter)] = parameter.numel() * parameter.element_size()
    return sum(seen.values())


def linear_kernel_ms(model, rows: int, repeats: int = 5) -> tuple[float, float]:
    """(F.linear, :func:`skinny_mm`) ms for all the model's linear layers once at ``rows`` rows (best of
    ``repeats``), whatever the row count (above ``MAX_SKINNY_ROWS`` SkinnyGemmLinear itself calls F.linear)."""

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = {m.in_features: torch.randn(rows, m.in_features) for m in linears}

    with torch.inference_mode():
        plain = best_seconds(lambda: [F.linear(inputs[m.in_features], m.weight, m.bias) for m in linears], repeats)
        fast = best_seconds(lambda: [skinny_mm(inputs[m.in_features], m.weight) for m in linears], repeats)
    return 1000 * plain, 1000 * fast


def decode_step_ms(model, batch: int, steps: int = 20, dtype=torch.float32) -> float:
    """Median ms of one KV-cache decode step for ``batch`` rows after a ``CONTEXT_TOKENS`` prefill."""
    generator = torch.Generator().manual_seed(0)
    hidden = model.config.hidden_size
    context = (torch.randn(batch, CONTEXT_TOKENS, hidden, generator=generator) * 0.02).to(dtype)
    with torch.inference_mode():
        out = model(inputs_embeds=context, use_cache=True, logits_to_keep=1)
        cache, ids = out.past_key_values, torch.full((batch, 1), 42)
        times = []
        for _ in range(steps):
            started = time.perf_counter()
            out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times[3:])


def greedy_answers(model, tokenizer) -> list[tuple[list[int], torch.Tensor]]:
    """(greedy tokens, the prompt's last-position logits) per quality prompt."""
    answers = []
    for prompt in QUALITY_PROMPTS:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt").input_ids
        with torch.inference_mode():
            generated = model.generate(ids, max_new_tokens=QUALITY_TOKENS, do_sample=False, repetition_penalty=1.0,
                                       pad_token_id=tokenizer.eos_token_id)
            logits = model(ids).logits[0, -1].float()
        answers.append((generated[0, ids.shape[1]:].tolist(), logits))
    return answers


def quality(reference: list, candidate: list) -> dict:
    identical, first_difference, logit_error = 0, [], []
    for (ref_tokens, ref_logits), (tokens, logits) in zip(reference, candidate, strict=True):
        identical += ref_tokens == tokens
        differs = next((i for i, (a, b) in enumerate(zip(ref_tokens, tokens)) if a != b), None)
        if differs is None and len(ref_tokens) != len(tokens):
            differs = min(len(ref_tokens), len(tokens))
        first_difference.append("—" if differs is None else str(differs))
        logit_error.append(float((ref_logits - logits).abs().max() / ref_logits.std()))
    return {"identical": identical, "prompts": len(reference), "first_difference": first_difference,
            "max_logit_error_over_std": max(logit_error), "passed": identical == len(reference)}


def variants(model):
    """(name, model, activation dtype) of every variant measured; the first is the served default."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    from emoserve.emotion_llama.skinny_gemm import use_skinny_gemm

    served = copy.deepcopy(model)
    use_skinny_gemm(served)
    yield "fp32, skinny GEMM (served default)", served, torch.float32
    yield "fp32, F.linear", model, torch.float32
    yield "bf16 weights", copy.deepcopy(model).to(torch.bfloat16), torch.bfloat16
    yield "int8 dynamic (per tensor)", quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8), torch.float32
    yield ("int8 dynamic (per channel)", quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear: per_channel_dynamic_qconfig}),
           torch.float32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=c.RESULTS_DIR / "llm-decode.md")
    parser.add_argument("--quick", action="store_true", help="batch sizes 1 and 4 only, fewer repeats")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import warnings

    warnings.filterwarnings("ignore")  # torch.ao's deprecation notices, once per quantised layer

    from emoserve.emotion_llama.llm import load_llm, prepare_smollm2, smollm2_cache_dir

    started_at, started = _dt.datetime.now(_dt.timezone.utc), time.perf_counter()
    bandwidth = measure_bandwidth(5 if args.quick else 10)
    model, tokenizer, _ = load_llm(prepare_smollm2(smollm2_cache_dir()))
    weights = weight_bytes(model)
    copy_floor_ms, read_floor_ms = 1000 * weights / bandwidth.copy_bytes_per_s, 1000 * weights / bandwidth.read_bytes_per_s
    batch_sizes = (1, 4) if args.quick else BATCH_SIZES
    kernels = {rows: linear_kernel_ms(model, rows) for rows in ((1, 4, 32) if args.quick else KERNEL_ROWS)}
    reference = None
    measured = []
    for name, variant, dtype in variants(model):
        steps = {batch: decode_step_ms(variant, batch, dtype=dtype) for batch in batch_sizes}
        answers = greedy_answers(variant, tokenizer)
        reference = reference or answers
        measured.append((name, steps, None if answers is reference else quality(reference, answers)))
        log.info("%s: %s", name, steps)

    report = c.Report()
    report.add("\n".join([
        "# LLM decode step: memory-bandwidth floor and lower-precision weights", "",
        f"- date: {started_at.isoformat(timespec='seconds')}; {time.perf_counter() - started:.0f} s",
        f"- command: `.venv/bin/python -m benchmarks.llm_decode{' --quick' if args.quick else ''}`",
        *c.environment_lines(c.versions(None, ("torch", "transformers", "numpy"))),
        f"- torch threads: {torch.get_num_threads()}; load average at end: {c.load_average()}",
        f"- model: SmolLM2-135M-Instruct (fp32), {weights / 1e6:.1f} MB of weights read per decode step; context "
        f"{CONTEXT_TOKENS} tokens; median of 17 steps", "",
    ]))
    served_ms = measured[0][1][1]
    report.table("Summary", ["figure", "value"], [
        ["copy bandwidth (1 GiB copy_, bytes copied/s)", f"{bandwidth.copy_bytes_per_s / 1e9:.1f} GB/s"],
        ["read bandwidth (1 GiB sum, bytes read/s)", f"{bandwidth.read_bytes_per_s / 1e9:.1f} GB/s"],
        ["floor: weight bytes / copy bandwidth", f"{copy_floor_ms:.1f} ms per step ({1000 / copy_floor_ms:.1f} tokens/s)"],
        ["floor: weight bytes / read bandwidth", f"{read_floor_ms:.1f} ms per step ({1000 / read_floor_ms:.1f} tokens/s)"],
        ["served decode step, batch 1", f"{served_ms:.1f} ms ({1000 / served_ms:.1f} tokens/s): "
         f"{served_ms / copy_floor_ms:.2f}x the copy floor, {served_ms / read_floor_ms:.2f}x the read floor"],
        *[[f"{name}: quality gate", "—" if gate is None else
           f"{'passed' if gate['passed'] else 'failed'} ({gate['identical']}/{gate['prompts']} greedy answers identical)"]
          for name, _, gate in measured[2:]],
    ])
    report.table("Decode step per batch size (ms)", ["weights / kernel", *[f"batch {b}" for b in batch_sizes],
                                                      "tokens/s at the largest batch"],
                 [[name, *[f"{steps[b]:.1f}" for b in batch_sizes], f"{batch_sizes[-1] * 1000 / steps[batch_sizes[-1]]:.0f}"]
                  for name, steps, _ in measured])
    report.table("Linear layers of one step (all 211 once), ms", ["rows", "F.linear", "skinny_mm (W @ x.T)", "speed-up"],
                 [[str(rows), f"{plain:.1f}", f"{fast:.1f}", f"{plain / fast:.2f}x"] for rows, (plain, fast) in kernels.items()],
                 note="A row per running sequence in a decode step; prefill has hundreds of rows "
                      f"(SkinnyGemmLinear hands more than {MAX_SKINNY_ROWS} to F.linear).")
    report.table("Quality gate (greedy answers of 32 tokens on 8 fixed prompts, against the served fp32 model)",
                 ["variant", "identical answers", "first differing token per prompt", "max logit error / logit std", "kept"],
                 [[name, f"{gate['identical']}/{gate['prompts']}", ", ".join(gate["first_difference"]),
                   f"{gate['max_logit_error_over_std']:.3f}", "yes" if gate["passed"] else "no"]
                  for name, _, gate in measured if gate is not None],
                 note="fp32 with F.linear is the same arithmetic up to reassociation; the others are kept only when "
                      "every answer is identical.")
    report.write(args.out)
    raw = c.WORK_DIR / args.out.with_suffix(".json").name  # raw figures stay out of the committed results
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps({
        "copy_bytes_per_s": bandwidth.copy_bytes_per_s, "read_bytes_per_s": bandwidth.read_bytes_per_s,
        "weight_bytes": weights, "copy_floor_ms": copy_floor_ms, "read_floor_ms": read_floor_ms,
        "decode_step_ms": {name: steps for name, steps, _ in measured},
        "quality": {name: gate for name, _, gate in measured if gate is not None}}, indent=2) + "\n")


if __name__ == "__main__":
    main()
