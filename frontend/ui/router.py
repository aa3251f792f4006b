"""The browser UI: ``GET /ui`` (the page), ``/ui/static/*`` (its scripts and styles, all served from here: the page
never asks another host for anything) and ``GET /ui/config.json`` (what the page would otherwise hard-code: identities,
prompt presets, labels, limits, the sample videos, whether an API key is needed).

The page talks to the documented REST APIs only, through ``static/emoserve-client.js``; nothing here is an API of
its own, so none of it is in the OpenAPI document.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from emoserve.constants import NUM_IDENTITIES
from emoserve.emotion_llama.defaults import EMOTION_LLAMA
from emoserve.emotion_llama.prompts import EMOTION_INSTRUCTION, EMOTION_LABELS, REASON_INSTRUCTIONS, TASK_TOKENS
from emoserve.hallo2.defaults import HALLO2
from frontend.config import PROJECT_ROOT
from frontend.emotion_llama.router import resolve_media_path
from frontend.errors import ApiError
from frontend.lam_a2e.schemas import StreamInitRequest

STATIC = Path(__file__).parent / "static"
UI_PATH = "/ui"

# upstream's own instructions behind the two task tokens the Emotion-LLaMA model was trained on
PROMPT_PRESETS = {
    "emotion": f"{TASK_TOKENS['emotion']} {EMOTION_INSTRUCTION}",
    "reason": f"{TASK_TOKENS['reason']} {REASON_INSTRUCTIONS[0]}",
}
_VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")

router = APIRouter(include_in_schema=False)


def sample_videos(media_roots: list[Path]) -> list[str]:
    """The project's example videos that the Emotion-LLaMA path routes accept. Only the examples folder: listing the
    operator's media roots would tell a browser what the API itself never names."""
    samples = []
    for path in sorted((PROJECT_ROOT / "examples").glob("*")):
        if path.suffix.lower() not in _VIDEO_SUFFIXES:
            continue
        try:
            samples.append(str(resolve_media_path(str(path), media_roots)))
        except ApiError:  # outside the configured media roots: the SSE route would refuse it
            continue
    return samples


@router.get(UI_PATH)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get(f"{UI_PATH}/config.json")
async def config(request: Request) -> dict:
    settings = request.app.state.settings
    stream_defaults = StreamInitRequest()
    return {
        "api_key_required": bool(settings.api_key),
        "lam_a2e": {"identities": NUM_IDENTITIES, "movement_smooth": stream_defaults.movement_smooth,
                    "brow_movement": stream_defaults.brow_movement},
        "emotion_llama": {"labels": list(EMOTION_LABELS), "presets": PROMPT_PRESETS,
                          "samples": sample_videos(settings.emotion_llama.media_roots),
                          "max_new_tokens": EMOTION_LLAMA.max_new_tokens, "max_new_tokens_limit": EMOTION_LLAMA.max_new_tokens_limit},
        "hallo2": {"min_guidance_scale": HALLO2.min_guidance_scale, "max_guidance_scale": HALLO2.max_guidance_scale,
                   "max_inference_steps": HALLO2.max_inference_steps},
    }


def install_ui(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(f"{UI_PATH}/static", StaticFiles(directory=STATIC), name="ui-static")
