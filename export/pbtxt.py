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


_ONNX_TO_TRITON = {1: "TYPE_FP32", 7: "TYPE_INT64", 6: "TYPE_INT32", 10: "TYPE_FP16", 9: "TYPE_BOOL", 11: "TYPE_FP64"}


def onnx_tensors(onnx_path, batched: bool = True, reshape_per_item_scalars: bool = False) -> tuple[list[str], list[str]]:
    """Input and output entries read off an exported graph: names, types, and dims with symbolic axes as -1
    (the leading batch axis left out when ``batched``), so a config can never disagree with its ONNX file.

    A ``[batch]`` input (e.g. a timestep) is ``dims: [ 1 ]`` to Triton; the native backends need
    ``reshape_per_item_scalars`` to hand it to the graph as ``[batch]`` (the python adapter reshapes itself)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph

    def entries(values) -> list[str]:
        out = []
        for value in values:
            kind = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim]
            if batched:
                dims = dims[1:]
            extra = "reshape: { shape: [ ] }" if not dims and reshape_per_item_scalars and values is inputs else ""
            out.append(tensor(value.name, _ONNX_TO_TRITON[kind.elem_type], ", ".join(str(d) for d in dims) or "1", extra))
        return out

    initializers = {init.name for init in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    return entries(inputs), entries(graph.output)
