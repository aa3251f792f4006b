"""The committed ``model_repository/*/config.pbtxt`` files, their recipes and the per-build overlays.

The committed files must be exactly what the recipes make for ``BuildSettings()``; a build only changes what its
settings change; exported networks' tensors come from their specs and agree with the exported graphs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import text_format

from emoserve.model_catalog import (
    A2E_MODELS,
    A2E_NETWORK_MODEL,
    EMOTION_AUDIO_MODEL,
    EMOTION_LLAMA_MODELS,
    EMOTION_LLM_MODEL,
    EMOTION_PIPELINE_MODEL,
    EMOTION_VISION_MODEL,
    HALLO2_DENOISING_UNET_MODEL,
    HALLO2_MODELS,
    HALLO2_NETWORK_MODELS,
    HALLO2_PIPELINE_MODEL,
    HALLO2_REFERENCE_UNET_MODEL,
    WEIGHTS_PARAMETER,
)
from export.build_repository import SOURCE_REPOSITORY, BuildSettings, committed_configs, config_recipes
from export.model_config import (
    KIND_CPU,
    KIND_GPU,
    PYTHON_ADAPTER_PARAMETERS,
    ModelConfig,
    onnx_tensors,
    parse,
    read_committed,
    spec_tensors,
    to_text,
)

ALL_MODELS = (*A2E_MODELS, *EMOTION_LLAMA_MODELS, *HALLO2_MODELS)
NETWORK_MODELS = (A2E_NETWORK_MODEL, EMOTION_VISION_MODEL, EMOTION_AUDIO_MODEL, *HALLO2_NETWORK_MODELS)
PYTHON_MODELS = tuple(m for m in ALL_MODELS if m not in NETWORK_MODELS)
# inputs the graphs take as [batch]: Triton's [batch, 1] must be reshaped for the native backends
PER_ITEM_SCALARS = {A2E_NETWORK_MODEL: {"id_idx"}, HALLO2_REFERENCE_UNET_MODEL: {"timestep"},
                    HALLO2_DENOISING_UNET_MODEL: {"timestep", "ref_mask"}}
REWRITE = "python -m export.build_repository --write-committed-configs"


@pytest.fixture(scope="module")
def committed() -> dict[str, ModelConfig]:
    return {model: read_committed(model) for model in ALL_MODELS}


def built(settings: BuildSettings) -> dict[str, ModelConfig]:
    """What a build with ``settings`` writes: the committed files with its overlay."""
    return {model: recipe.over(read_committed(model), settings) for model, recipe in config_recipes().items()}


def parameters(config: ModelConfig) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}


# ------------------------------------------------------------------------------------------------ committed files


def test_every_model_folder_has_a_committed_config():
    folders = {path.parent.parent.name for path in SOURCE_REPOSITORY.glob("*/1/model.py")}
    assert folders == set(ALL_MODELS)
    for model in folders:
        assert (SOURCE_REPOSITORY / model / "config.pbtxt").is_file(), f"{model}: no config.pbtxt ({REWRITE})"


def test_committed_configs_parse_as_model_configs():
    for model in ALL_MODELS:
        config = text_format.Parse((SOURCE_REPOSITORY / model / "config.pbtxt").read_text(), ModelConfig())
        assert config.name == model
        assert config.parameters[WEIGHTS_PARAMETER].string_value


def test_committed_configs_are_what_the_recipes_make_for_the_default_build():
    expected = committed_configs()
    assert set(expected) == set(ALL_MODELS)
    stale = [model for model, text in expected.items() if (SOURCE_REPOSITORY / model / "config.pbtxt").read_text() != text]
    assert not stale, f"committed configs out of date for {stale}: run `{REWRITE}`"


def test_the_default_overlay_leaves_the_committed_files_as_they_are(committed):
    for model, config in built(BuildSettings()).items():
        assert config == committed[model], model
        assert to_text(config) == (SOURCE_REPOSITORY / model / "config.pbtxt").read_text(), model


def test_text_round_trips_through_text_format(committed):
    for config in committed.values():
        assert parse(to_text(config)) == config


# ------------------------------------------------------------------------------------------------ overlays


def test_gpu_target_overlay(committed):
    for tensorrt in (False, True):
        configs = built(BuildSettings(target="gpu", tensorrt=tensorrt))
        for model in NETWORK_MODELS:
            config = configs[model]
            plan = tensorrt and model not in (EMOTION_VISION_MODEL, EMOTION_AUDIO_MODEL)  # plans: A2E and Hallo2 only
            assert config.platform == ("tensorrt_plan" if plan else "onnxruntime_onnx") and not config.backend, model
            assert [group.kind for group in config.instance_group] == [KIND_GPU], model
            assert not set(PYTHON_ADAPTER_PARAMETERS) & set(config.parameters), model
            reshaped = {i.name for i in config.input if i.HasField("reshape")}
            assert reshaped == PER_ITEM_SCALARS.get(model, set()), model
            for tensor in config.input:
                if tensor.name in reshaped:
                    assert list(tensor.dims) == [1] and list(tensor.reshape.shape) == []
            # only the target's fields move: the tensors' names, types and dims stay
            assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == \
                   [(i.name, i.data_type, list(i.dims)) for i in committed[model].input]
            assert config.output == committed[model].output
        assert configs[EMOTION_LLM_MODEL].instance_group[0].kind == KIND_GPU
        for model in PYTHON_MODELS:
            config = configs[model]
            assert config.backend == "python", model
            if model not in (EMOTION_LLM_MODEL, HALLO2_PIPELINE_MODEL):  # kind / the plans' max batches: below
                assert config == committed[model], model
        max_batches = json.loads(configs[HALLO2_PIPELINE_MODEL].parameters["network_max_batch"].string_value)
        assert max_batches == {model: configs[model].max_batch_size for model in HALLO2_NETWORK_MODELS}
        if tensorrt:  # a plan cannot batch past its profile
            assert configs[HALLO2_REFERENCE_UNET_MODEL].max_batch_size == 6


def test_overlays_compose_back_to_the_committed_files(committed):
    """An overlay sets what it owns, so a gpu build's files laid over with the defaults are the committed ones."""
    gpu = BuildSettings(target="gpu", tensorrt=True, hallo2_profile="full", llm="tiny", network_queue_delay_us=0)
    for model, recipe in config_recipes().items():
        assert recipe.over(recipe.over(committed[model], gpu), BuildSettings()) == committed[model], model


def test_cpu_target_networks_run_in_the_python_adapter(committed):
    for model in NETWORK_MODELS:
        config = committed[model]
        assert config.backend == "python" and not config.platform
        assert [group.kind for group in config.instance_group] == [KIND_CPU]
        assert parameters(config)["onnx_file"] == "model.onnx"
        assert not any(i.HasField("reshape") for i in config.input)


def test_profile_overlays_change_the_networks_dims(committed):
    full = built(BuildSettings(hallo2_profile="full", llm="tiny"))
    # Hallo2 full: 16 reference features (tiny: 4), 512 px images (tiny: 64)
    ref_outputs = [o.name for o in full[HALLO2_REFERENCE_UNET_MODEL].output]
    assert len(ref_outputs) == 16 and len(committed[HALLO2_REFERENCE_UNET_MODEL].output) == 4
    assert parameters(full[HALLO2_PIPELINE_MODEL])["reference_features"] == "16"
    assert parameters(full[HALLO2_PIPELINE_MODEL])["profile"] == "full"
    assert list(full["hallo2_vae_encoder"].input[0].dims) == [3, 512, 512]
    assert list(committed["hallo2_vae_encoder"].input[0].dims) == [3, 64, 64]
    denoising_inputs = {i.name for i in full[HALLO2_DENOISING_UNET_MODEL].input}
    assert set(ref_outputs) <= denoising_inputs
    # the encoders project to the LLM's hidden size: SmolLM2 576 committed, the tiny LLM 64
    assert [list(o.dims) for o in committed[EMOTION_VISION_MODEL].output] == [[256, 576], [1, 576]]
    assert [list(o.dims) for o in full[EMOTION_VISION_MODEL].output] == [[256, 64], [1, 64]]
    assert [list(o.dims) for o in full[EMOTION_AUDIO_MODEL].output] == [[3, 64]]
    # LAM-A2E's profiles share their tensors: only the weights' description says which one
    tiny_a2e = built(BuildSettings(profile="tiny"))[A2E_NETWORK_MODEL]
    assert tiny_a2e.input == committed[A2E_NETWORK_MODEL].input and tiny_a2e.output == committed[A2E_NETWORK_MODEL].output
    assert "tiny profile" in parameters(tiny_a2e)[WEIGHTS_PARAMETER]


def test_weights_parameter_follows_the_build(committed):
    checkpoint = built(BuildSettings(checkpoint=Path("/ckpt/lam_audio2exp_streaming.tar")))
    for model in A2E_MODELS:
        assert parameters(checkpoint[model])[WEIGHTS_PARAMETER].startswith("official LAM-A2E checkpoint lam_audio2exp_streaming.tar")
        assert "seeded-random" in parameters(committed[model])[WEIGHTS_PARAMETER]
    seeded = built(BuildSettings(seed=7, llm="tiny"))
    for model in ALL_MODELS:
        assert "seed 7" in parameters(seeded[model])[WEIGHTS_PARAMETER], model
        assert "seed 0" in parameters(committed[model])[WEIGHTS_PARAMETER] or model == EMOTION_LLM_MODEL, model
    assert "tiny LLaMA" in parameters(seeded[EMOTION_LLM_MODEL])[WEIGHTS_PARAMETER]
    assert "SmolLM2" in parameters(committed[EMOTION_PIPELINE_MODEL])[WEIGHTS_PARAMETER]


def test_tuning_knobs_reach_the_configs(committed):
    knobs = BuildSettings(network_max_batch=4, network_queue_delay_us=0, network_instances=2, onnx_threads=3, stream_max_batch=8,
                          stream_queue_delay_us=0, stream_candidate_sequences=16, llm_queue_delay_us=500, pipeline_instances=2,
                          max_queue_size=7)
    configs = built(knobs)
    network = configs[A2E_NETWORK_MODEL]
    assert network.max_batch_size == 4 and network.instance_group[0].count == 2
    assert network.HasField("dynamic_batching")  # a delay of 0 still batches
    assert "dynamic_batching { max_queue_delay_microseconds: 0 default_queue_policy { max_queue_size: 7 } }" in to_text(network)
    assert parameters(network)["intra_op_threads"] == "3"
    oldest = configs["lam_a2e_stream"].sequence_batching.oldest
    assert (oldest.max_candidate_sequences, list(oldest.preferred_batch_size), oldest.max_queue_delay_microseconds) == (16, [8], 0)
    assert configs["lam_a2e_stream"].max_batch_size == 8
    assert configs[EMOTION_LLM_MODEL].dynamic_batching.max_queue_delay_microseconds == 500
    assert configs[EMOTION_LLM_MODEL].dynamic_batching.default_queue_policy.max_queue_size == 7
    assert configs[EMOTION_PIPELINE_MODEL].instance_group[0].count == 2
    # knobs move batching only, never a model's tensors
    for model in ALL_MODELS:
        assert configs[model].input == committed[model].input and configs[model].output == committed[model].output, model


# ------------------------------------------------------------------------------------------------ specs vs graphs


def test_spec_tensors_equal_the_exported_graphs(tiny_repository):
    """The configs take tensors from the specs, so no export is needed to write one; the graphs must agree."""
    settings = BuildSettings(profile="tiny", seed=0, llm="tiny", encoder_profile="tiny")
    recipes = config_recipes()
    for model in NETWORK_MODELS:
        onnx_path = tiny_repository / model / "1" / "model.onnx"
        spec = recipes[model].spec(settings)
        for reshape in (False, True):
            assert spec_tensors(spec, reshape_per_item_scalars=reshape) == onnx_tensors(onnx_path, reshape_per_item_scalars=reshape), model
        config = parse((tiny_repository / model / "config.pbtxt").read_text())
        inputs, outputs = onnx_tensors(onnx_path)
        assert list(config.input) == inputs and list(config.output) == outputs, model


def test_the_tiny_llm_has_the_hidden_size_the_configs_assume(tiny_repository):
    from export.emotion_llama import LLM_HIDDEN

    llm_config = json.loads((tiny_repository / EMOTION_LLM_MODEL / "1" / "llm" / "config.json").read_text())
    assert llm_config["hidden_size"] == LLM_HIDDEN["tiny"]
