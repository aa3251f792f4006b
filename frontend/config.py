"""The front end's one settings object (environment variables ``EMOSERVE_*`` or an ``.env``-style file)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMOSERVE_", extra="ignore")

    triton_grpc_url: str = "127.0.0.1:8001"
    triton_timeout_s: float = Field(120.0, gt=0, description="per Triton call")
    max_upload_bytes: int = Field(50 * 1024 * 1024, gt=0, description="whole-file audio upload limit (413 above)")
    max_chunk_bytes: int = Field(8 * 1024 * 1024, gt=0, description="one streaming chunk upload limit (413 above)")
    max_chunk_seconds: float = Field(30.0, gt=0)
    max_audio_seconds: float = Field(600.0, gt=0)
    max_sessions: int = Field(256, gt=0, description="live streaming sessions; init answers 503 beyond")
    session_idle_timeout_s: float = Field(300.0, gt=0, description="a session with no chunk for this long is closed")
    session_sweep_interval_s: float = Field(5.0, gt=0)
    api_key: str | None = Field(None, description="when set, /api routes need header X-API-Key or Bearer token")
    # Emotion-LLaMA
    media_roots: list[Path] = Field(
        default_factory=lambda: [PROJECT_ROOT / "examples"],
        description="server-side video paths are accepted only inside these folders (JSON list in the environment)",
    )
    max_video_bytes: int = Field(200 * 1024 * 1024, gt=0, description="video file / upload limit (413 above)")
    max_prompt_chars: int = Field(2000, gt=0)
    generation_timeout_s: float = Field(600.0, gt=0, description="a whole Emotion-LLaMA answer")
    log_level: str = "info"


def load_settings(config_file: Path | None = None, **overrides) -> Settings:
    if config_file is not None:
        if not Path(config_file).is_file():
            raise FileNotFoundError(f"config file {config_file} does not exist")
        return Settings(_env_file=str(config_file), **overrides)
    return Settings(**overrides)
