"""TensorRT plan for the A2E network (GPU target), built from the same spec as the ONNX export.

The optimisation profile (min/opt/max for batch and samples) comes from
:meth:`export.lam_a2e.A2ENetworkSpec.get_input_profile`, so the exported graph, the plan and the Triton
config's ``max_batch_size`` agree. Building needs the ``tensorrt`` package and a GPU, i.e. the NGC
container or a GPU host; :func:`validate_plan` compares the plan with onnxruntime at shapes other
than the profile's ``opt`` (as Polygraphy's ``run --onnxrt --trt`` does).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from export.lam_a2e import A2ENetworkSpec

log = logging.getLogger(__name__)


class TensorRTUnavailable(RuntimeError):
    pass


def _tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(
            "the tensorrt package is not installed: build plans inside the NGC tritonserver container or on a GPU host"
        ) from exc
    return trt


def build_plan(onnx_path: Path, plan_path: Path, profile_shapes: dict, fp16: bool = False, workspace_bytes: int = 2 << 30) -> Path:
    """Build (or reuse, when the sidecar matches) a serialized TensorRT engine with ONE optimisation
    profile, ``{input name: [min, opt, max] shapes}`` — what every spec's ``get_input_profile`` returns."""
    trt = _tensorrt()
    fingerprint = {
        "onnx_bytes": Path(onnx_path).stat().st_size,
        "onnx_mtime_ns": Path(onnx_path).stat().st_mtime_ns,
        "profile": {name: [list(s) for s in shapes] for name, shapes in profile_shapes.items()},
        "fp16": fp16,
        "tensorrt": trt.__version__,
    }
    sidecar = Path(plan_path).with_suffix(".plan.json")
    if Path(plan_path).is_file() and sidecar.is_file() and json.loads(sidecar.read_text()) == fingerprint:
        log.info("TensorRT plan cached: %s", plan_path)
        return Path(plan_path)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, (smallest, optimal, largest) in profile_shapes.items():
        profile.set_shape(name, smallest, optimal, largest)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path} (see the TensorRT log above)")
    tmp = Path(plan_path).with_suffix(".plan.tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(plan_path)
    sidecar.write_text(json.dumps(fingerprint, indent=2))
    log.info("built TensorRT plan %s", plan_path)
    return Path(plan_path)


def build_a2e_plan(onnx_path: Path, plan_path: Path, max_batch: int = 16, max_samples: int = 160_000, fp16: bool = False) -> Path:
    spec = A2ENetworkSpec(max_batch=max_batch, max_samples=max_samples)
    return build_plan(onnx_path, plan_path, spec.get_input_profile(), fp16=fp16)


def validate_plan(plan_path: Path, onnx_path: Path, shapes: list[tuple[int, int]], atol: float = 1e-3) -> float:
    """Max abs difference between the plan (via torch CUDA tensors) and onnxruntime at ``shapes``."""
    trt = _tensorrt()
    import torch

    from emoserve.lam_a2e.onnx_runner import A2EOnnxRunner

    spec = A2ENetworkSpec()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
    context = engine.create_execution_context()
    reference = A2EOnnxRunner(onnx_path)
    worst = 0.0
    for batch, samples in shapes:
        audio, ids = spec.get_sample_input(batch, samples, seed=batch * 7 + samples)
        inputs = dict(zip(spec.get_input_names(), (audio.cuda(), ids.cuda())))
        output = torch.empty(spec.get_output_shape(batch, samples), device="cuda", dtype=torch.float32)
        for name, tensor in inputs.items():
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        context.set_tensor_address(spec.get_output_names()[0], output.data_ptr())
        if not context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError(f"TensorRT execution failed at shape {(batch, samples)}")
        torch.cuda.synchronize()
        expected = reference(audio.numpy(), ids.numpy())
        worst = max(worst, float(np.abs(output.cpu().numpy() - expected).max()))
    if worst > atol:
        raise AssertionError(f"TensorRT vs onnxruntime max abs diff {worst:.2e} > {atol:.0e}")
    return worst
