"""Hallo2 networks on a CUDA GPU at upstream's sizes: seconds per denoising step (full profile).

    python -m benchmarks.gpu_hallo2 [--profile full] [--frames 16] [--out FILE]

Builds the reference UNet and the denoising UNet3D (seeded demo weights) on the GPU in fp16, then times
one reference pass and one classifier-free-guidance denoising step (batch 2: [uncond, cond]) on a
16-frame clip at 512x512 (64x64 latents), using the export specs' sample inputs; also checks the fp16
output against an fp32 run.
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import torch

from emoserve.hallo2.unet import build_denoising_unet, build_reference_unet
from export.hallo2 import DenoisingUNetSpec, ReferenceUNetSpec


def _timed(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="full")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = "cuda"
    reference = build_reference_unet(args.profile, seed=0).to(device).eval()
    denoiser = build_denoising_unet(args.profile, seed=0).to(device).eval()
    ref_spec, den_spec = ReferenceUNetSpec(profile=args.profile), DenoisingUNetSpec(profile=args.profile)
    ref_inputs = [t.to(device) for t in ref_spec.get_sample_input(6, seed=1)]
    den_inputs = [t.to(device) for t in den_spec.get_sample_input(2, args.frames, seed=2)]
    with torch.inference_mode():
        fp32 = denoiser(*den_inputs).float()
        with torch.autocast("cuda", dtype=torch.float16):
            fp16 = denoiser(*den_inputs).float()
            ref_s = _timed(lambda: reference(*ref_inputs), 5)
            step_s = _timed(lambda: denoiser(*den_inputs), 5)
        step32_s = _timed(lambda: denoiser(*den_inputs), 3)
    rel = float((fp16 - fp32).abs().mean() / fp32.abs().mean())
    params = sum(p.numel() for p in denoiser.parameters()) + sum(p.numel() for p in reference.parameters())
    lines = [
        f"# Hallo2 networks on GPU ({args.profile} profile)",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; device {torch.cuda.get_device_name(0)}; torch {torch.__version__}",
        f"- command: `python -m benchmarks.gpu_hallo2 --profile {args.profile} --frames {args.frames}`",
        f"- reference UNet + denoiser parameters: {params / 1e6:.1f} M; clip {args.frames} frames + motion frames, CFG batch 2",
        f"- fp16 (autocast) vs fp32 denoiser output: mean relative difference {rel:.2e}",
        "",
        "| pass | fp16 s | fp32 s |",
        "|---|---:|---:|",
        f"| reference UNet (6 images: reference + 2 motion frames, x2 branches) | {ref_s:.4f} | |",
        f"| one denoising step (CFG pair, {args.frames} frames) | {step_s:.4f} | {step32_s:.4f} |",
        "",
        f"Upstream's 40 steps per 16-frame clip: about {40 * step_s:.1f} s of denoiser time per {args.frames / 25:.2f} s of video in fp16.",
        "",
    ]
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
