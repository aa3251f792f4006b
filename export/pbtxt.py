"""Pieces of Triton ``config.pbtxt`` text shared by every generated model config."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from export.build_repository import BuildSettings


def parameter(key: str, value) -> str:
    return f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}'


def tensor(name: str, data_type: str, dims: str, extra: str = "") -> str:
    """One input/output entry; ``dims`` as pbtxt, e.g. ``"-1, 52"``."""
    return f'{{ name: "{name}" data_type: {data_type} dims: [ {dims} ]{" " + extra if extra else ""} }}'


def optional_scalars(*names_and_types: tuple[str, str]) -> list[str]:
    return [tensor(name, data_type, "1", "optional: true") for name, data_type in names_and_types]


def tensor_block(kind: str, entries: list[str]) -> list[str]:
    """``input [ ... ]`` / ``output [ ... ]`` with one entry per line."""
    return [f"{kind} [", *[f"  {entry}{',' if i < len(entries) - 1 else ''}" for i, entry in enumerate(entries)], "]"]


def onnx_network_header(name: str, settings: "BuildSettings", *, max_batch: int, queue_delay_us: int, instances: int = 1,
                        tensorrt: bool = False) -> list[str]:
    """An exported network: a python model running the ONNX file with onnxruntime on the ``cpu`` target,
    Triton's native ``onnxruntime_onnx`` (or ``tensorrt_plan``) backend on the ``gpu`` target."""
    if settings.target == "cpu":
        backend, kind = 'backend: "python"', "KIND_CPU"
        extra = [parameter("onnx_file", "model.onnx"), parameter("intra_op_threads", settings.onnx_threads)]
    else:
        backend, kind, extra = ('platform: "tensorrt_plan"' if tensorrt else 'platform: "onnxruntime_onnx"'), "KIND_GPU", []
    return [
        f'name: "{name}"',
        backend,
        f"max_batch_size: {max_batch}",
        f"dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}",
        f"instance_group [ {{ count: {instances} kind: {kind} }} ]",
        *extra,
    ]
