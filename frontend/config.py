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
    # Hallo2 (tasks in a database; see frontend/hallo2_tasks.py)
    hallo2_database_url: str = Field("sqlite:///data/hallo2.db", description="any SQLAlchemy URL; a relative SQLite path is relative to the working dir")
    hallo2_data_dir: Path = Field(Path("data/hallo2"), description="one folder per task: inputs and the result video")
    max_concurrent_tasks: int = Field(1, ge=1, description="Hallo2 tasks run at once by this front end")
    max_hallo2_upload_bytes: int = Field(500 * 1024 * 1024, gt=0, description="image + audio of one Hallo2 task (413 above)")
    hallo2_guidance_scale: float = Field(3.5, ge=1.0, le=20.0, description="default until POST /api/v1/inference/hallo2/config")
    hallo2_inference_steps: int = Field(40, ge=1, le=100)
    hallo2_enable_cache: bool = True
    hallo2_max_attempts: int = Field(3, ge=1, description="a task interrupted by this many dead processes fails")
    hallo2_heartbeat_interval_s: float = Field(10.0, gt=0)
    hallo2_stale_after_s: float = Field(60.0, gt=0, description="a processing task without a heartbeat this long is re-queued")
    hallo2_recover_all_on_startup: bool = Field(True, description="one front end per database: every 'processing' task at startup is orphaned")
    hallo2_poll_interval_s: float = Field(1.0, gt=0, description="how often a worker looks for tasks queued by other replicas")
    hallo2_cancel_grace_s: float = Field(10.0, ge=0, description="a cancelled runner is cancelled outright after this")
    log_level: str = "info"


def load_settings(config_file: Path | None = None, **overrides) -> Settings:
    if config_file is not None:
        if not Path(config_file).is_file():
            raise FileNotFoundError(f"config file {config_file} does not exist")
        return Settings(_env_file=str(config_file), **overrides)
    return Settings(**overrides)
