"""Reading official checkpoints and strict state-dict loading whose errors name the keys.

Shared by every network's loader: LAM-A2E, the Emotion-LLaMA encoders and the Hallo2 networks.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["read_state_dict", "check_and_load", "sha256_file", "preview", "record_checkpoint"]

_LOG = logging.getLogger(__name__)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return "sha256:" + h.hexdigest()


def preview(items: list[str], limit: int = 20) -> str:
    if len(items) <= limit:
        return str(items)
    return str(items[:limit])[:-1] + f", ... (+{len(items) - limit} more)]"


def torch_load(path: Path, weights_only: bool | None) -> Any:
    if weights_only is not None:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickled extras in training checkpoints
        _LOG.warning(
            "weights_only load of %s failed (%s); retrying with weights_only=False "
            "(only do this for trusted checkpoints)",
            path,
            type(exc).__name__,
        )
        return torch.load(path, map_location="cpu", weights_only=False)


def read_state_dict(
    src: str | Path, file_names: Sequence[str], *, weights_only: bool | None = None
) -> tuple[dict[str, Tensor], Path]:
    """A state dict from a file or from the first of ``file_names`` present in a folder.

    ``.safetensors`` files are read with safetensors, anything else with ``torch.load`` (the safe
    ``weights_only=True`` unpickler first).  A ``{"state_dict": ...}`` / ``{"module": ...}`` wrapper is
    unwrapped.  Returns the tensors and the file actually read.
    """
    path = Path(src)
    if path.is_dir():
        for name in file_names:
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise ValueError(f"{src}: none of {list(file_names)} found in the folder")
    if not path.is_file():
        raise ValueError(f"{src}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path), device="cpu")), path
    obj = torch_load(path, weights_only)
    for wrapper in ("state_dict", "module"):
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}, path


def state_dict_source(
    src, file_names: Sequence[str], *, weights_only: bool | None = None, check_folder=None
) -> tuple[dict[str, Tensor], str | None, str]:
    """``(tensors, sha256 digest or None, where)`` for a state dict handed over in memory, or a checkpoint
    file / model folder (read with :func:`read_state_dict`; ``check_folder(folder)`` runs first on a folder)."""
    if isinstance(src, Mapping):
        return dict(src), None, "<state_dict>"
    path = Path(src)
    if path.is_dir() and check_folder is not None:
        check_folder(path)
    raw, file = read_state_dict(path, file_names, weights_only=weights_only)
    return raw, sha256_file(file), str(file)


def check_and_load(
    target: nn.Module, sd: Mapping[str, Tensor], what: str, *, optional: tuple[str, ...] = ()
) -> None:
    """Strict load; ``ValueError`` names missing / unexpected keys and shape mismatches.

    Keys listed in ``optional`` may be absent (they keep their current values).
    """
    expected_sd = target.state_dict()
    expected = set(expected_sd)
    missing = sorted(k for k in expected - set(sd) if k not in optional)
    unexpected = sorted(set(sd) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{what}: {len(missing)} missing key(s) {preview(missing)}; "
            f"{len(unexpected)} unexpected key(s) {preview(unexpected)}"
        )
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected_sd[k].shape)}"
        for k, v in sd.items()
        if tuple(v.shape) != tuple(expected_sd[k].shape)
    ]
    if mismatched:
        raise ValueError(f"{what}: shape mismatch for {len(mismatched)} key(s): {preview(mismatched)}")
    full = dict(expected_sd)
    for k, v in sd.items():
        full[k] = v.detach().to(dtype=expected_sd[k].dtype)
    target.load_state_dict(full, strict=True)


def record_checkpoint(module: nn.Module, digest: str | None) -> None:
    """Update ``module.provenance`` (the ONNX export cache fingerprint) after loading weights."""
    prov = getattr(module, "provenance", None)
    if prov is None:
        return
    # digest None = weights handed over in memory: the export fingerprint then hashes the weights.
    prov.update(seed=None, checkpoint=digest)
