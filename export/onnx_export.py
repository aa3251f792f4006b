"""ONNX export (legacy TorchScript tracer) with a cache sidecar, and ORT-vs-PyTorch validation."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from export.base import BaseNetworkSpec

__all__ = ["export_onnx", "validate_onnx", "export_fingerprint"]

_LOG = logging.getLogger(__name__)

# A2E trace shape (kept under its historical name): batch 2 (so batch is never specialised to 1)
# and a sample count whose frame count (ceil(20000 * 30 / 16000) = 38) is not an exact division,
# exercising the ceil in the graph.  Each spec names its own trace shape
# (``spec.get_export_sample_shape()``); validation should use other shapes.
# 2: graph outputs carry the static dims the spec knows (the tracer left some symbolic), so a graph, its spec and the
# Triton config built from the spec agree
_EXPORTER_VERSION = 2


def _state_dict_digest(network: nn.Module) -> str:
    h = hashlib.sha256()
    for key, value in sorted(network.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return "sha256:" + h.hexdigest()


def export_fingerprint(network: nn.Module, spec: BaseNetworkSpec, opset: int) -> dict[str, Any]:
    """What identifies an export: weights provenance (profile/seed/checkpoint), spec, opset."""
    prov = dict(getattr(network, "provenance", None) or {})
    if prov.get("seed") is None and prov.get("checkpoint") is None:
        # Unknown origin (weights edited in memory): fall back to hashing the weights.
        prov["weights"] = _state_dict_digest(network)
    return {
        "exporter_version": _EXPORTER_VERSION,
        "provenance": prov,
        "spec": spec.describe(),
        "opset": int(opset),
        "sample_shape": list(spec.get_export_sample_shape()),
    }


def _sidecar(out_path: Path) -> Path:
    return out_path.with_suffix(".json")


def _is_cached(out_path: Path, fingerprint: dict[str, Any]) -> bool:
    side = _sidecar(out_path)
    if not (out_path.is_file() and side.is_file()):
        return False
    try:
        recorded = json.loads(side.read_text())
    except (OSError, ValueError):
        return False
    return recorded.get("fingerprint") == fingerprint


def export_onnx(
    network: nn.Module,
    spec: BaseNetworkSpec,
    out_path: Path,
    opset: int = 17,
    *,
    force: bool = False,
) -> Path:
    """Export ``network`` to ONNX with dynamic batch/time axes; returns ``out_path``.

    Re-runnable: if ``out_path`` exists and its sidecar ``out_path.with_suffix('.json')``
    records the same fingerprint (profile / seed / checkpoint hash, spec, opset) the export
    is skipped.  The file is written to a temporary name and renamed when complete, then
    checked with ``onnx.checker``.
    """
    import onnx

    out_path = Path(out_path)
    fingerprint = export_fingerprint(network, spec, opset)
    if not force and _is_cached(out_path, fingerprint):
        _LOG.info("ONNX export cached: %s", out_path)
        return out_path

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = out_path.with_name(out_path.name + ".tmp")
    was_training = network.training
    network.eval()
    sample = spec.get_sample_input(*spec.get_export_sample_shape())
    t0 = time.perf_counter()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer / deprecation chatter
            torch.onnx.export(
                network,
                sample,
                str(tmp_path),
                input_names=spec.get_input_names(),
                output_names=spec.get_output_names(),
                dynamic_axes=spec.get_dynamic_axes(),
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        model = onnx.load(str(tmp_path), load_external_data=False)
        if _stamp_static_output_dims(model, spec):
            onnx.save(model, str(tmp_path))
        onnx.checker.check_model(str(tmp_path))
        _check_io(model, spec)
        os.replace(tmp_path, out_path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
        network.train(was_training)
    elapsed = time.perf_counter() - t0
    _sidecar(out_path).write_text(
        json.dumps(
            {
                "fingerprint": fingerprint,
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "export_seconds": round(elapsed, 3),
                "bytes": out_path.stat().st_size,
            },
            indent=2,
            sort_keys=True,
        )
    )
    _LOG.info("exported %s in %.1f s", out_path, elapsed)
    return out_path


def _stamp_static_output_dims(model: Any, spec: BaseNetworkSpec) -> bool:
    """Give graph outputs the sizes of the axes the spec does not call dynamic. Shape inference behind dynamic
    inputs leaves some of them symbolic (even named after another axis); the spec knows them. Returns whether
    anything changed; raises if the graph contradicts the spec."""
    shape = spec.get_export_sample_shape()
    expected = spec.get_output_shapes(*shape)
    if expected is None:
        return False
    dynamic = spec.get_dynamic_axes()
    changed = False
    for value, sizes in zip(model.graph.output, expected, strict=True):
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(sizes):
            raise RuntimeError(f"{value.name}: exported rank {len(dims)}, the spec says {len(sizes)} for sample {shape}")
        for axis, (dim, size) in enumerate(zip(dims, sizes)):
            if axis in dynamic.get(value.name, {}):
                continue
            if dim.HasField("dim_value"):
                if dim.dim_value != size:
                    raise RuntimeError(f"{value.name} axis {axis}: exported {dim.dim_value}, the spec says {size}")
            else:
                dim.dim_value = size  # replaces the oneof's dim_param
                changed = True
    return changed


def _check_io(model: Any, spec: BaseNetworkSpec) -> None:
    """The graph's I/O names match the spec and the dynamic axes stayed symbolic."""
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != spec.get_input_names() or outputs != spec.get_output_names():
        raise RuntimeError(f"exported I/O {inputs} -> {outputs} does not match spec")
    dyn = spec.get_dynamic_axes()
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        for axis in dyn.get(value.name, {}):
            if dims[axis].HasField("dim_value"):
                raise RuntimeError(f"{value.name} axis {axis} was exported as static {dims[axis].dim_value}")


def validate_onnx(
    network: nn.Module,
    onnx_path: Path,
    spec: BaseNetworkSpec,
    shapes: Sequence[tuple[int, ...]],
    atol: float = 1e-4,
    *,
    seed: int = 0,
) -> float:
    """Compare onnxruntime (CPU) with PyTorch on random inputs of each shape.

    A shape is the positional arguments of ``spec.get_sample_input`` (``(batch, samples)`` for
    audio networks, ``(batch,)`` for the vision encoder).  Every output is compared.  Returns the
    max abs difference over all shapes and outputs; raises ``AssertionError`` if any output shape
    differs (from PyTorch, or from ``spec.get_output_shapes`` where the spec knows them) or the
    difference exceeds ``atol``.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    names = spec.get_input_names()
    out_names = spec.get_output_names()
    was_training = network.training
    network.eval()
    worst = 0.0
    try:
        for i, shape in enumerate(shapes):
            shape = tuple(shape)
            inputs = spec.get_sample_input(*shape, seed=seed + i)
            with torch.no_grad():
                out = network(*inputs)
            refs = [t.cpu().numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]
            gots = sess.run(out_names, {n: t.cpu().numpy() for n, t in zip(names, inputs)})
            assert len(refs) == len(gots) == len(out_names), f"shape {shape}: output count mismatch"
            expected_shapes = spec.get_output_shapes(*shape)
            for j, (name, ref, got) in enumerate(zip(out_names, refs, gots)):
                if expected_shapes is not None:
                    assert ref.shape == tuple(expected_shapes[j]), (
                        f"{name}: torch output {ref.shape} != {tuple(expected_shapes[j])}"
                    )
                assert got.shape == ref.shape, f"shape {shape} {name}: onnx {got.shape} != torch {ref.shape}"
                diff = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
                _LOG.info("onnx parity %s %s: max abs diff %.3g", shape, name, diff)
                assert diff <= atol, f"shape {shape} {name}: max abs diff {diff:.3g} > atol {atol:g}"
                worst = max(worst, diff)
    finally:
        network.train(was_training)
    return worst
