"""Triton model configs as ``ModelConfig`` messages, and the committed ``config.pbtxt`` files they become.

Every model folder in ``model_repository/`` carries the ``config.pbtxt`` of the default build
(``BuildSettings()``), so the repository can be read without building it. A model's config is made of two parts
(a :class:`ConfigRecipe`, one per model in its family's file):

* ``base`` — what no build changes: the name, the python backend's tensors, sequence controls, decoupling;
* ``overlay`` — what a build does change: target (python adapter or native backend), tensor dims of the
  exported networks (from their specs), batching and tuning knobs, weights descriptions.

The committed file is ``overlay(base(), BuildSettings())``; a build is ``overlay(committed, settings)``. Every
overlay *sets* the fields it owns (never appends), so it can be laid over the committed file, over ``base()``
or over an earlier build's file with the same result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from google.protobuf import text_encoding, text_format
from google.protobuf.descriptor import FieldDescriptor
from tritonclient.grpc import model_config_pb2 as mc

from emoserve.model_catalog import WEIGHTS_PARAMETER

if TYPE_CHECKING:
    from export.base import BaseNetworkSpec
    from export.build_repository import BuildSettings

ModelConfig = mc.ModelConfig
ModelInput = mc.ModelInput
ModelOutput = mc.ModelOutput

FP32, FP16, FP64 = mc.TYPE_FP32, mc.TYPE_FP16, mc.TYPE_FP64
INT32, INT64, UINT64 = mc.TYPE_INT32, mc.TYPE_INT64, mc.TYPE_UINT64
BOOL, STRING = mc.TYPE_BOOL, mc.TYPE_STRING
KIND_CPU, KIND_GPU = mc.ModelInstanceGroup.KIND_CPU, mc.ModelInstanceGroup.KIND_GPU

# the exported networks' adapter (emoserve/triton/onnx_model.py) reads these; the native backends reject them
PYTHON_ADAPTER_PARAMETERS = ("onnx_file", "intra_op_threads")
CONFIG_FILE = "config.pbtxt"


@dataclass(frozen=True)
class ConfigRecipe:
    """How one model's config is made (see the module docstring). ``spec`` is set for exported networks, whose
    tensors come from it; tests compare it with the exported graph."""

    base: Callable[[], ModelConfig]
    overlay: Callable[[ModelConfig, BuildSettings], None]
    spec: Callable[[BuildSettings], BaseNetworkSpec] | None = None

    def from_structured_data(self, settings: BuildSettings) -> ModelConfig:
        config = self.base()
        self.overlay(config, settings)
        return config

    def over(self, config: ModelConfig, settings: BuildSettings) -> ModelConfig:
        out = ModelConfig()
        out.CopyFrom(config)
        self.overlay(out, settings)
        return out


# ------------------------------------------------------------------------------------------------ building blocks


def input_tensor(name: str, dtype: int, dims: Sequence[int], *, optional: bool = False, reshape: Sequence[int] | None = None,
                 allow_ragged_batch: bool = False) -> ModelInput:
    tensor = ModelInput(name=name, data_type=dtype, dims=list(dims), optional=optional, allow_ragged_batch=allow_ragged_batch)
    if reshape is not None:
        tensor.reshape.SetInParent()  # an empty reshape ([batch, 1] -> [batch]) must still be present
        tensor.reshape.shape.extend(reshape)
    return tensor


def output_tensor(name: str, dtype: int, dims: Sequence[int]) -> ModelOutput:
    return ModelOutput(name=name, data_type=dtype, dims=list(dims))


def optional_scalars(*names_and_types: tuple[str, int]) -> list[ModelInput]:
    return [input_tensor(name, dtype, [1], optional=True) for name, dtype in names_and_types]


def python_model(name: str, *, inputs: Iterable[ModelInput], outputs: Iterable[ModelOutput], decoupled: bool = False) -> ModelConfig:
    """A python-backend model; ``max_batch_size`` 0 until an overlay batches it."""
    config = ModelConfig(name=name, backend="python", max_batch_size=0)
    config.input.extend(inputs)
    config.output.extend(outputs)
    if decoupled:
        config.model_transaction_policy.decoupled = True
    return config


def set_parameters(config: ModelConfig, **values: object) -> None:
    """Triton parameters are strings: values are written with ``str()``."""
    for key, value in values.items():
        config.parameters[key].string_value = str(value)


def set_weights(config: ModelConfig, description: str) -> None:
    """What the model's weights are; the front end shows it beside every answer."""
    config.parameters[WEIGHTS_PARAMETER].string_value = description


def set_instances(config: ModelConfig, count: int, kind: int = KIND_CPU) -> None:
    del config.instance_group[:]
    config.instance_group.add(count=count, kind=kind)


def set_dynamic_batching(config: ModelConfig, max_batch: int, queue_delay_us: int, max_queue_size: int) -> None:
    """Dynamic batching with a bounded queue: a request beyond ``max_queue_size`` waiting ones is refused at once
    (UNAVAILABLE, which the front end answers 503 with Retry-After) instead of waiting behind an unbounded backlog."""
    config.max_batch_size = max_batch
    config.dynamic_batching.SetInParent()  # a delay of 0 is still dynamic batching
    config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    config.dynamic_batching.default_queue_policy.max_queue_size = max_queue_size


def add_sequence_controls(config: ModelConfig) -> None:
    """START / END / CORRID control inputs: the stream model keys its per-sequence state on them."""
    batching = config.sequence_batching
    for name, kind in (("START", mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_START),
                       ("END", mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_END)):
        batching.control_input.add(name=name).control.add(kind=kind, int32_false_true=[0, 1])
    batching.control_input.add(name="CORRID").control.add(kind=mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_CORRID,
                                                          data_type=UINT64)


def set_oldest_sequence_batching(config: ModelConfig, *, max_batch: int, idle_us: int, candidate_sequences: int,
                                 queue_delay_us: int) -> None:
    config.max_batch_size = max_batch
    batching = config.sequence_batching
    batching.max_sequence_idle_microseconds = idle_us
    oldest = batching.oldest
    oldest.SetInParent()
    oldest.max_candidate_sequences = candidate_sequences
    oldest.preferred_batch_size[:] = [max_batch]
    oldest.max_queue_delay_microseconds = queue_delay_us


# ------------------------------------------------------------------------------------------------ exported networks

_TORCH_TO_TRITON = {torch.float32: FP32, torch.float16: FP16, torch.float64: FP64, torch.int64: INT64, torch.int32: INT32,
                    torch.bool: BOOL}
_ONNX_TO_TRITON = {1: FP32, 7: INT64, 6: INT32, 10: FP16, 9: BOOL, 11: FP64}


def _triton_dims(shape: Sequence[int], dynamic: dict[int, str], what: str) -> list[int]:
    if dynamic.get(0) != "batch":
        raise ValueError(f"{what}: Triton batches on axis 0, which the spec does not name 'batch' ({dynamic})")
    return [-1 if axis in dynamic else int(size) for axis, size in enumerate(shape)][1:]


def _io(inputs: list[tuple[str, int, list[int]]], outputs: list[tuple[str, int, list[int]]],
        reshape_per_item_scalars: bool) -> tuple[list[ModelInput], list[ModelOutput]]:
    """A ``[batch]`` tensor (e.g. a timestep) is ``dims: [ 1 ]`` to Triton; the native backends need
    ``reshape_per_item_scalars`` to hand it to the graph as ``[batch]`` (the python adapter reshapes itself)."""
    return (
        [input_tensor(name, dtype, dims or [1], reshape=[] if not dims and reshape_per_item_scalars else None)
         for name, dtype, dims in inputs],
        [output_tensor(name, dtype, dims or [1]) for name, dtype, dims in outputs],
    )


def spec_tensors(spec: BaseNetworkSpec, *, reshape_per_item_scalars: bool = False) -> tuple[list[ModelInput], list[ModelOutput]]:
    """A network's Triton tensors from its export spec — the shapes and dtypes the ONNX export traces with, the
    spec's dynamic axes as -1, the batch axis left out — so a config needs no exported file."""
    shape = spec.get_export_sample_shape()
    sample = spec.get_sample_input(*shape)
    output_shapes = spec.get_output_shapes(*shape)
    if output_shapes is None:
        raise ValueError(f"{spec.name}: the spec does not know its output shapes")
    axes = spec.get_dynamic_axes()
    inputs = [(name, _TORCH_TO_TRITON[t.dtype], _triton_dims(t.shape, axes.get(name, {}), name))
              for name, t in zip(spec.get_input_names(), sample, strict=True)]
    outputs = [(name, _TORCH_TO_TRITON[dtype], _triton_dims(s, axes.get(name, {}), name))
               for name, dtype, s in zip(spec.get_output_names(), spec.get_output_dtypes(), output_shapes, strict=True)]
    return _io(inputs, outputs, reshape_per_item_scalars)


def onnx_tensors(onnx_path: Path, *, reshape_per_item_scalars: bool = False) -> tuple[list[ModelInput], list[ModelOutput]]:
    """The same tensors read off an exported graph (symbolic axes as -1): what :func:`spec_tensors` must agree with."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph

    def entries(values) -> list[tuple[str, int, list[int]]]:
        out = []
        for value in values:
            kind = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim][1:]
            out.append((value.name, _ONNX_TO_TRITON[kind.elem_type], dims))
        return out

    initializers = {init.name for init in graph.initializer}
    return _io(entries(v for v in graph.input if v.name not in initializers), entries(graph.output), reshape_per_item_scalars)


def network_overlay(config: ModelConfig, settings: BuildSettings, spec: BaseNetworkSpec, *, max_batch: int,
                    queue_delay_us: int, weights: str, instances: int = 1, tensorrt: bool = False) -> None:
    """An exported network: a python model running the ONNX file with onnxruntime on the ``cpu`` target (this
    machine's Triton has only the python backend), Triton's native ``onnxruntime_onnx`` (or ``tensorrt_plan``)
    backend on the ``gpu`` target."""
    gpu = settings.target == "gpu"
    if gpu:
        config.ClearField("backend")
        config.platform = "tensorrt_plan" if tensorrt else "onnxruntime_onnx"
        for key in PYTHON_ADAPTER_PARAMETERS:
            config.parameters.pop(key, None)
    else:
        config.ClearField("platform")
        config.backend = "python"
        set_parameters(config, onnx_file="model.onnx", intra_op_threads=settings.onnx_threads)
    set_dynamic_batching(config, max_batch, queue_delay_us, settings.max_queue_size)
    set_instances(config, instances, KIND_GPU if gpu else KIND_CPU)
    inputs, outputs = spec_tensors(spec, reshape_per_item_scalars=gpu)
    del config.input[:]
    config.input.extend(inputs)
    del config.output[:]
    config.output.extend(outputs)
    set_weights(config, weights)


def network_recipe(name: str, spec: Callable[[BuildSettings], BaseNetworkSpec],
                   overlay: Callable[[ModelConfig, BuildSettings, BaseNetworkSpec], None]) -> ConfigRecipe:
    """An exported network's recipe: nothing but its name is shared by every build."""
    return ConfigRecipe(base=lambda: ModelConfig(name=name), overlay=lambda config, settings: overlay(config, settings, spec(settings)),
                        spec=spec)


# ------------------------------------------------------------------------------------------------ text

# proto3 leaves zero values out of the text; these are knobs a reader (and benchmarks/tuning.py's variants) should
# see even at 0 — "no batching", "no queue delay", "reshape to a scalar" are choices, not omissions — and the
# START control, whose kind happens to be the enum's 0
_ALWAYS_SHOWN = {
    "inference.ModelConfig.max_batch_size",
    "inference.ModelSequenceBatching.Control.kind",
    "inference.ModelDynamicBatching.max_queue_delay_microseconds",
    "inference.ModelSequenceBatching.StrategyOldest.max_queue_delay_microseconds",
    "inference.ModelTensorReshape.shape",
}
# the top of a config reads as: what it is, how it batches, its tensors, where it runs, its parameters
_TOP_LEVEL_ORDER = ("name", "platform", "backend", "max_batch_size", "model_transaction_policy", "dynamic_batching",
                    "sequence_batching", "input", "output", "instance_group", "parameters")
_WIDTH = 120


def _fields(message) -> list[tuple[FieldDescriptor, object]]:
    fields = dict((fd.name, (fd, value)) for fd, value in message.ListFields())
    for fd in message.DESCRIPTOR.fields:
        if fd.full_name in _ALWAYS_SHOWN and fd.name not in fields:
            fields[fd.name] = (fd, getattr(message, fd.name))
    rank = {name: i for i, name in enumerate(_TOP_LEVEL_ORDER)} if message.DESCRIPTOR is ModelConfig.DESCRIPTOR else {}
    return sorted(fields.values(), key=lambda item: (rank.get(item[0].name, len(rank)), item[0].number))


def _scalar(fd: FieldDescriptor, value) -> str:
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return fd.enum_type.values_by_number[value].name
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return "true" if value else "false"
    if fd.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        text = value if isinstance(value, str) else value.decode("utf-8")
        if '"' in text and "'" not in text and "\\" not in text and text.isprintable():
            return f"'{text}'"  # JSON-valued parameters read better unescaped
        return '"' + text_encoding.CEscape(text, as_utf8=True) + '"'
    return str(value)


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry


def _map_entries(fd: FieldDescriptor, value) -> list:
    """A map's entries as messages, sorted by key: map order is not kept by protobuf, the file's must be stable."""
    entries = []
    for key in sorted(value):
        entry = fd.message_type._concrete_class(key=key)
        if fd.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE:
            entry.value.CopyFrom(value[key])
        else:
            entry.value = value[key]
        entries.append(entry)
    return entries


def _is_message_list(fd: FieldDescriptor) -> bool:
    return fd.label == FieldDescriptor.LABEL_REPEATED and fd.type == FieldDescriptor.TYPE_MESSAGE


def _one_line(fd: FieldDescriptor, value) -> str:
    """One (non-map) field on one line; a list as ``[ a, b ]``."""
    if _is_message_list(fd):
        return f"{fd.name} [ " + ", ".join(f"{{ {_inline(item)} }}" for item in value) + " ]"
    if fd.label == FieldDescriptor.LABEL_REPEATED:
        items = ", ".join(_scalar(fd, item) for item in value)
        return f"{fd.name}: [ {items} ]" if items else f"{fd.name}: [ ]"
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        body = _inline(value)
        return f"{fd.name} {{ {body} }}" if body else f"{fd.name} {{ }}"
    return f"{fd.name}: {_scalar(fd, value)}"


def _lines(message, render, indent: str = "") -> list[str]:
    out = []
    for fd, value in _fields(message):
        if _is_map(fd):
            out.extend(f"{indent}{fd.name} {{ {_inline(entry)} }}" for entry in _map_entries(fd, value))
        else:
            out.extend(render(fd, value))
    return out


def _inline(message) -> str:
    return " ".join(_lines(message, lambda fd, value: [_one_line(fd, value)]))


def _block(message, indent: str) -> list[str]:
    """One line per field; a list of several messages, or a field that does not fit on its line, opens a block."""

    def render(fd: FieldDescriptor, value) -> list[str]:
        line = indent + _one_line(fd, value)
        if _is_message_list(fd) and (len(value) > 1 or len(line) > _WIDTH):
            lines = [f"{indent}{fd.name} ["]
            for i, item in enumerate(value):
                comma = "," if i < len(value) - 1 else ""
                entry = f"{indent}  {{ {_inline(item)} }}{comma}"
                lines += [entry] if len(entry) <= _WIDTH else [f"{indent}  {{", *_block(item, indent + "    "), f"{indent}  }}{comma}"]
            return [*lines, f"{indent}]"]
        if fd.type == FieldDescriptor.TYPE_MESSAGE and not _is_message_list(fd) and len(line) > _WIDTH:
            return [f"{indent}{fd.name} {{", *_block(value, indent + "  "), f"{indent}}}"]
        return [line]

    return _lines(message, render, indent)


def to_text(config: ModelConfig) -> str:
    """``config.pbtxt`` text: one line per tensor and parameter, blocks where a line would not fit."""
    return "\n".join(_block(config, "")) + "\n"


def parse(text: str) -> ModelConfig:
    return text_format.Parse(text, ModelConfig())


# ------------------------------------------------------------------------------------------------ committed files


def committed_path(model: str, repository: Path | None = None) -> Path:
    from export.build_repository import SOURCE_REPOSITORY

    return Path(repository or SOURCE_REPOSITORY) / model / CONFIG_FILE


def read_committed(model: str, repository: Path | None = None) -> ModelConfig:
    path = committed_path(model, repository)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: write the committed configs with "
                                "`python -m export.build_repository --write-committed-configs`")
    return parse(path.read_text())
