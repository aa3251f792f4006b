"""A2E network on a CUDA GPU: parity with the CPU and window throughput (run where a GPU exists).

    python -m benchmarks.gpu_a2e [--profile full] [--out benchmarks/results/gpu-a2e.md]

Reports whether TensorRT / onnxruntime-gpu are importable (the NGC container has both; bare hosts may
not), the max abs difference CUDA fp32/fp16 vs CPU fp32 on streaming windows, and the time per batch
of 64-frame windows (the streaming model's unit of work) at several batch sizes.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import platform
import time
from pathlib import Path

import torch

from emoserve.lam_a2e.network import build_network
from emoserve.constants import WINDOW_SAMPLES


def _timed(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="full")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    lines = [
        f"# A2E network on GPU ({args.profile} profile)",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, python {platform.python_version()}",
        f"- tensorrt importable: {importlib.util.find_spec('tensorrt') is not None}; "
        f"onnxruntime-gpu importable: {importlib.util.find_spec('onnxruntime') is not None and 'CUDAExecutionProvider' in __import__('onnxruntime').get_available_providers()}",
        "- command: `python -m benchmarks.gpu_a2e --profile %s`" % args.profile,
        "",
    ]
    cpu_net = build_network(args.profile, seed=0)
    gpu_net = build_network(args.profile, seed=0).cuda()
    generator = torch.Generator().manual_seed(0)
    windows = (torch.randn(4, WINDOW_SAMPLES, generator=generator) * 0.1).clamp(-1, 1)
    ids = torch.tensor([0, 3, 7, 11])
    with torch.no_grad():
        reference = cpu_net(windows, ids)
        fp32 = gpu_net(windows.cuda(), ids.cuda()).cpu()
        with torch.autocast("cuda", dtype=torch.float16):
            fp16 = gpu_net(windows.cuda(), ids.cuda()).float().cpu()
    lines += [
        f"- parity on 4 streaming windows: CUDA fp32 vs CPU max abs diff {float((fp32 - reference).abs().max()):.2e}; "
        f"CUDA fp16-autocast vs CPU {float((fp16 - reference).abs().max()):.2e}",
        "",
        "| batch (64-frame windows) | fp32 ms/batch | fp16 ms/batch | fp16 windows/s |",
        "|---:|---:|---:|---:|",
    ]
    with torch.no_grad():
        for batch in (1, 8, 32, 128):
            x = (torch.randn(batch, WINDOW_SAMPLES, device="cuda") * 0.1).clamp(-1, 1)
            i = torch.randint(0, 12, (batch,), device="cuda")
            t32 = _timed(lambda: gpu_net(x, i), 20)
            with torch.autocast("cuda", dtype=torch.float16):
                t16 = _timed(lambda: gpu_net(x, i), 20)
            lines.append(f"| {batch} | {t32 * 1e3:.2f} | {t16 * 1e3:.2f} | {batch / t16:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
