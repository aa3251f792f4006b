"""Build a Triton model repository for LAM-A2E: export the network, write every ``config.pbtxt``.

Targets:

* ``cpu`` — this machine's Triton (the ``nvidia-pytriton`` build) has only the python backend, so the
  network model is a python model running the ONNX graph with onnxruntime;
* ``gpu`` — the NGC ``tritonserver`` container: the network runs on the native ``onnxruntime_onnx``
  backend, or as a TensorRT plan (``--tensorrt``, built on the GPU host with optimisation profiles for
  batch and time from the same spec that drove the ONNX export).

This repository's ``model_repository/`` holds the python models' sources (``model.py``) and, beside every
model, the ``config.pbtxt`` of the default build (``BuildSettings()``); a build lays what its settings change over
those files (:mod:`export.model_config`). Everything else there (ONNX, plans, the LLM, ``weights.json``) is a build
output. Steps are cached: re-running with the same profile, seed and checkpoint re-uses the exported ONNX.

    python -m export.build_repository --target cpu --profile full --out model_repository
    python -m export.build_repository --write-committed-configs   # after changing a config recipe or a default
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from emoserve.emotion_llama.defaults import EMOTION_LLAMA
from emoserve.hallo2.defaults import HALLO2
from emoserve.lam_a2e.defaults import LAM_A2E
from emoserve.model_catalog import A2E_MODELS, EMOTION_LLAMA_MODELS, HALLO2_MODELS, SLICE_MODELS

if TYPE_CHECKING:
    from export.model_config import ConfigRecipe, ModelConfig

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SOURCE_REPOSITORY = PROJECT_ROOT / "model_repository"
SLICES = tuple(SLICE_MODELS)


@dataclass(frozen=True)
class BuildSettings:
    target: str = "cpu"
    profile: str = "full"
    seed: int = 0
    checkpoint: Path | None = None
    tensorrt: bool = False
    network_max_batch: int = 16
    # batching knobs: the values benchmarks/tuning.py kept (benchmarks/results/tuning*.md, CPU, full LAM-A2E).
    # 10 ms lets 4 concurrent windows meet in one batch (p99 ~0.59 s vs ~1.07 s at 2 ms, same throughput); on the
    # tiny test networks it costs up to 10 ms a call at low load
    network_queue_delay_us: int = 10000
    network_instances: int = 1
    onnx_threads: int = 0
    # requests waiting in one dynamically batched model's queue; beyond, Triton refuses at once (503 at the front end)
    max_queue_size: int = 256
    # 8 live streams as two batches of 4: the first half is answered sooner (p99 ~1.07 s vs ~1.29 s at 8); a GPU
    # host, where bigger batches are nearly free, should re-run the tuning experiments there
    stream_max_batch: int = 4
    stream_queue_delay_us: int = 2000
    # sequences the oldest-first batcher may hold slots for; more live streams than this wait in a backlog
    stream_candidate_sequences: int = 1024
    stream_idle_timeout_s: float = LAM_A2E.sequence_idle_timeout_s
    offline_instances: int = 2
    max_audio_seconds: float = LAM_A2E.max_audio_seconds
    # which slices go into the repository
    slices: tuple[str, ...] = ("lam_a2e", "emotion_llama", "hallo2")
    # Emotion-LLaMA
    llm: str = "smollm2"
    encoder_profile: str = "small"
    llama2_folder: Path | None = None
    emotion_llama_checkpoint: Path | None = None
    llm_max_batch: int = 8  # requests one execute may take; execute only queues them for the decode loop
    # the decode loop batches per step (continuous batching): holding requests back in Triton only delays them
    llm_queue_delay_us: int = 0
    llm_max_active_sequences: int = EMOTION_LLAMA.max_active_sequences
    llm_max_batch_tokens: int = EMOTION_LLAMA.max_batch_tokens
    max_new_tokens_limit: int = EMOTION_LLAMA.max_new_tokens_limit
    max_prompt_chars: int = EMOTION_LLAMA.max_prompt_chars
    pipeline_instances: int = 4
    max_video_bytes: int = EMOTION_LLAMA.max_video_bytes
    # Hallo2
    hallo2_profile: str = "tiny"
    hallo2_instances: int = 1
    hallo2_max_audio_seconds: float = HALLO2.max_audio_seconds
    # HuBERT attends over the whole track: longer audio is cut to this many seconds before encoding
    emotion_audio_seconds: float = EMOTION_LLAMA.max_audio_seconds

    def weights_description(self) -> str:
        if self.checkpoint is not None:
            return f"official LAM-A2E checkpoint {Path(self.checkpoint).name} ({self.profile} profile)"
        return f"demo: seeded-random weights (seed {self.seed}), {self.profile} profile - NOT a trained model"


def slice_models(slice_name: str) -> tuple[str, ...]:
    return {"lam_a2e": A2E_MODELS, "emotion_llama": EMOTION_LLAMA_MODELS, "hallo2": HALLO2_MODELS}[slice_name]


def _copy_python_sources(out: Path, models: tuple[str, ...]) -> None:
    if out.resolve() == SOURCE_REPOSITORY.resolve():
        return
    for model in models:
        source = SOURCE_REPOSITORY / model / "1" / "model.py"
        target = out / model / "1" / "model.py"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def config_recipes(slices: tuple[str, ...] = SLICES) -> dict[str, ConfigRecipe]:
    """Every model's config recipe (:mod:`export.model_config`), in the catalog's order."""
    recipes: dict[str, ConfigRecipe] = {}
    for slice_name in slices:
        if slice_name == "lam_a2e":
            from export.lam_a2e import CONFIGS
        elif slice_name == "emotion_llama":
            from export.emotion_llama import CONFIGS
        else:
            from export.hallo2 import CONFIGS
        if set(CONFIGS) != set(slice_models(slice_name)):
            raise RuntimeError(f"{slice_name}: config recipes for {sorted(CONFIGS)}, the catalog has {sorted(slice_models(slice_name))}")
        recipes.update((model, CONFIGS[model]) for model in slice_models(slice_name))
    return recipes


def model_configs(settings: BuildSettings) -> dict[str, ModelConfig]:
    """The configs of a build: the committed files with the build's overlay."""
    from export.model_config import read_committed

    return {model: recipe.over(read_committed(model), settings) for model, recipe in config_recipes(settings.slices).items()}


def committed_configs() -> dict[str, str]:
    """What ``model_repository/*/config.pbtxt`` must hold: every config rebuilt from its recipe for ``BuildSettings()``."""
    from export.model_config import to_text

    return {model: to_text(recipe.from_structured_data(BuildSettings())) for model, recipe in config_recipes().items()}


def write_committed_configs(repository: Path = SOURCE_REPOSITORY) -> list[Path]:
    from export.model_config import committed_path

    written = []
    for model, text in committed_configs().items():
        path = committed_path(model, repository)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def build_repository(out: Path, settings: BuildSettings) -> Path:
    from export.model_config import committed_path, to_text

    out = Path(out)
    unknown = set(settings.slices) - set(SLICES)
    if unknown or not settings.slices:
        raise ValueError(f"slices must be a non-empty subset of {SLICES}, got {settings.slices}")
    out.mkdir(parents=True, exist_ok=True)
    # before any export: a missing or unreadable committed config fails in seconds, not after minutes of exporting
    configs = {model: to_text(config) for model, config in model_configs(settings).items()}
    for slice_name in settings.slices:
        _copy_python_sources(out, slice_models(slice_name))
        if slice_name == "lam_a2e":
            from export.lam_a2e import build_lam_a2e

            build_lam_a2e(out, settings)
        elif slice_name == "emotion_llama":
            from export.emotion_llama import build_emotion_llama

            build_emotion_llama(out, settings)
        else:
            from export.hallo2 import build_hallo2

            build_hallo2(out, settings)
    changed_committed = []
    for model, text in configs.items():
        path = committed_path(model, out)
        if out.resolve() == SOURCE_REPOSITORY.resolve() and path.is_file() and path.read_text() != text:
            changed_committed.append(model)
        path.write_text(text)
    if changed_committed:
        log.warning("this build's settings differ from BuildSettings(): it rewrote the committed config.pbtxt of %s "
                    "(`git diff model_repository` shows how; `python -m export.build_repository --write-committed-configs` "
                    "restores them)", ", ".join(changed_committed))
    manifest = {
        "target": settings.target,
        "slices": list(settings.slices),
        "models": sorted(configs),
        "lam_a2e": {"profile": settings.profile, "seed": settings.seed,
                    "checkpoint": str(settings.checkpoint) if settings.checkpoint else None,
                    "weights": settings.weights_description(), "tensorrt": settings.tensorrt},
    }
    if "emotion_llama" in settings.slices:
        from export.emotion_llama import describe_weights

        manifest["emotion_llama"] = {"llm": settings.llm, "encoder_profile": settings.encoder_profile,
                                     "weights": describe_weights(settings)["all"]}
    if "hallo2" in settings.slices:
        from export.hallo2 import describe_weights as describe_hallo2

        manifest["hallo2"] = {"profile": settings.hallo2_profile, "weights": describe_hallo2(settings)}
    (out / "weights.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("model repository ready at %s (%s)", out, ", ".join(sorted(configs)))
    return out


def repository_is_built(out: Path, slices: tuple[str, ...] = SLICES) -> bool:
    out = Path(out)
    if not (out / "weights.json").is_file():
        return False
    models = [model for slice_name in slices for model in slice_models(slice_name)]
    return all((out / model / "config.pbtxt").is_file() for model in models)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=SOURCE_REPOSITORY)
    parser.add_argument("--target", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--slices", default=",".join(SLICES), help=f"comma-separated subset of {','.join(SLICES)}")
    parser.add_argument("--profile", choices=("full", "tiny"), default="full", help="LAM-A2E network size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weight", type=Path, default=None, help="official LAM-A2E checkpoint (.tar/.pth with state_dict)")
    parser.add_argument("--tensorrt", action="store_true", help="gpu target: also build a TensorRT plan (needs a GPU)")
    parser.add_argument("--llm", choices=("smollm2", "tiny", "llama2"), default="smollm2", help="Emotion-LLaMA's language model")
    parser.add_argument("--encoder-profile", choices=("full", "small", "tiny"), default="small", help="Emotion-LLaMA encoder size")
    parser.add_argument("--llama2", type=Path, default=None, help="HF Llama-2-7b-chat folder (with --llm llama2)")
    parser.add_argument("--emotion-llama-checkpoint", type=Path, default=None, help="Emotion-LLaMA checkpoint (ckpt['model'])")
    parser.add_argument("--hallo2-profile", choices=("full", "tiny"), default="tiny", help="Hallo2 network size (full needs a GPU)")
    parser.add_argument("--write-committed-configs", action="store_true",
                        help="only rewrite model_repository/*/config.pbtxt from the config recipes for BuildSettings() (no export)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.write_committed_configs:
        for path in write_committed_configs():
            log.info("wrote %s", path.relative_to(PROJECT_ROOT))
        return 0
    if args.tensorrt and args.target != "gpu":
        parser.error("--tensorrt needs --target gpu")
    settings = BuildSettings(
        target=args.target, profile=args.profile, seed=args.seed, checkpoint=args.weight, tensorrt=args.tensorrt,
        slices=tuple(s for s in args.slices.split(",") if s), llm=args.llm, encoder_profile=args.encoder_profile,
        llama2_folder=args.llama2, emotion_llama_checkpoint=args.emotion_llama_checkpoint, hallo2_profile=args.hallo2_profile,
    )
    build_repository(args.out, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
