"""ONNX export of the (tiny) Emotion-LLaMA encoders: I/O contract, dynamic axes, parity, caching."""

from __future__ import annotations

import onnx
import pytest

from emoserve.emotion_llama.encoders import build_encoders
from emoserve.model_catalog import (
    AUDIO_INPUT_VALUES,
    CLS_TOKEN,
    EMOTION_AUDIO_MODEL,
    EMOTION_VISION_MODEL,
    FEATURE_TOKENS,
    IMAGE_TOKENS,
    PIXEL_VALUES,
)
from export.emotion_llama import AudioEncoderSpec, VisionEncoderSpec
from export.onnx_export import export_onnx, validate_onnx

D = 64
VISION_PARITY_SHAPES = [(1,), (3,)]
AUDIO_PARITY_SHAPES = [(1, 16000), (2, 16000), (1, 40000), (2, 40000), (1, 400)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    vision, audio = build_encoders("tiny", llm_hidden=D, seed=0)
    out = tmp_path_factory.mktemp("emotion_onnx")
    vspec, aspec = VisionEncoderSpec(llm_hidden=D), AudioEncoderSpec(llm_hidden=D)
    vpath = export_onnx(vision, vspec, out / "vision.onnx")
    apath = export_onnx(audio, aspec, out / "audio.onnx")
    return (vision, vspec, vpath), (audio, aspec, apath)


def _dims(value) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_io_contract(exported) -> None:
    (_, vspec, vpath), (_, aspec, apath) = exported
    assert vspec.name == EMOTION_VISION_MODEL and aspec.name == EMOTION_AUDIO_MODEL
    vm, am = onnx.load(str(vpath)), onnx.load(str(apath))
    vin, vout = {i.name: i for i in vm.graph.input}, {o.name: o for o in vm.graph.output}
    ain, aout = {i.name: i for i in am.graph.input}, {o.name: o for o in am.graph.output}
    assert list(vin) == [PIXEL_VALUES] and list(vout) == [IMAGE_TOKENS, CLS_TOKEN]
    assert list(ain) == [AUDIO_INPUT_VALUES] and list(aout) == [FEATURE_TOKENS]
    for v in [*vin.values(), *vout.values(), *ain.values(), *aout.values()]:
        assert v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert _dims(vin[PIXEL_VALUES]) == ["batch", 3, 448, 448]
    assert _dims(vout[IMAGE_TOKENS]) == ["batch", 256, D]
    assert _dims(vout[CLS_TOKEN]) == ["batch", 1, D]
    assert _dims(ain[AUDIO_INPUT_VALUES]) == ["batch", "samples"]
    assert _dims(aout[FEATURE_TOKENS]) == ["batch", 3, D]


def test_vision_parity_at_other_batches(exported) -> None:
    (vision, vspec, vpath), _ = exported
    assert vspec.get_export_sample_shape() not in VISION_PARITY_SHAPES
    assert validate_onnx(vision, vpath, vspec, VISION_PARITY_SHAPES, atol=1e-4) <= 1e-4


def test_audio_parity_at_other_shapes(exported) -> None:
    _, (audio, aspec, apath) = exported
    assert aspec.get_export_sample_shape() not in AUDIO_PARITY_SHAPES
    assert validate_onnx(audio, apath, aspec, AUDIO_PARITY_SHAPES, atol=1e-4) <= 1e-4


def test_export_is_cached(exported) -> None:
    (vision, vspec, vpath), _ = exported
    side = vpath.with_suffix(".json").read_text()
    assert '"component": "vision"' in side and '"llm_hidden": 64' in side
    mtime = vpath.stat().st_mtime_ns
    assert export_onnx(vision, vspec, vpath) == vpath
    assert vpath.stat().st_mtime_ns == mtime


def test_spec_profiles_and_shapes() -> None:
    vspec, aspec = VisionEncoderSpec(llm_hidden=D), AudioEncoderSpec(llm_hidden=D)
    assert vspec.get_input_profile() == {PIXEL_VALUES: [(1, 3, 448, 448), (1, 3, 448, 448), (8, 3, 448, 448)]}
    assert vspec.get_shape_dict(2) == {PIXEL_VALUES: (2, 3, 448, 448), IMAGE_TOKENS: (2, 256, D), CLS_TOKEN: (2, 1, D)}
    assert aspec.get_input_profile(batch_max=4) == {AUDIO_INPUT_VALUES: [(1, 400), (1, 80000), (4, 480000)]}
    assert aspec.get_shape_dict(2, 16000) == {AUDIO_INPUT_VALUES: (2, 16000), FEATURE_TOKENS: (2, 3, D)}
    with pytest.raises(ValueError):
        aspec.get_input_profile(samples_min=399)
    with pytest.raises(ValueError):
        aspec.get_sample_input(1, 399)
    (pixels,) = vspec.get_sample_input(2, seed=1)
    assert pixels.shape == (2, 3, 448, 448)
