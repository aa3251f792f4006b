"""The front end's one settings object (environment variables ``EMOSERVE_*`` or an ``.env``-style file).

Common settings are top-level (``EMOSERVE_TRITON_GRPC_URL``, ``EMOSERVE_API_KEY`` ...); each model's are nested
under its name, with ``__`` in the environment: ``EMOSERVE_LAM_A2E__MAX_UPLOAD_BYTES``,
``EMOSERVE_EMOTION_LLAMA__MEDIA_ROOTS`` (a JSON list), ``EMOSERVE_HALLO2__DATABASE_URL``. The defaults are the
models' own (``emoserve/<model>/defaults.py``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from emoserve.emotion_llama.defaults import EMOTION_LLAMA
from emoserve.hallo2.defaults import HALLO2
from emoserve.lam_a2e.defaults import LAM_A2E

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "EMOSERVE_"
MEDIA_ROOTS_ENV = f"{ENV_PREFIX}EMOTION_LLAMA__MEDIA_ROOTS"


class LamA2ESettings(BaseModel):
    max_upload_bytes: int = Field(LAM_A2E.max_upload_bytes, gt=0, description="whole-file audio upload limit (413 above)")
    max_chunk_bytes: int = Field(LAM_A2E.max_chunk_bytes, gt=0, description="one streaming chunk upload limit (413 above)")
    max_chunk_seconds: float = Field(LAM_A2E.max_chunk_seconds, gt=0)
    max_audio_seconds: float = Field(LAM_A2E.max_audio_seconds, gt=0)
    max_sessions: int = Field(LAM_A2E.max_sessions, gt=0, description="live streaming sessions; init answers 503 beyond")
    max_sessions_per_client: int = Field(LAM_A2E.max_sessions_per_client, gt=0,
                                         description="of those, one API key's or address's; init answers 429 beyond")
    session_idle_timeout_s: float = Field(LAM_A2E.session_idle_timeout_s, gt=0,
                                          description="a session with no chunk for this long is closed")
    session_sweep_interval_s: float = Field(LAM_A2E.session_sweep_interval_s, gt=0)
    triton_replicas: list[str] = Field(
        default_factory=list, description="gRPC addresses (host:port) of the Triton replicas serving LAM-A2E, one pooled "
        "client each (JSON list); a session's chunks go to the replica holding its sequence. Empty: triton_grpc_url only")
    session_key: SecretStr | None = Field(
        None, description="HMAC key that signs streaming session ids; the same on every front end so that any of them "
        "serves any session. Unset: a random key per process (sessions are then this front end's only)")

    def replica_urls(self, triton_grpc_url: str) -> list[str]:
        """The replicas' gRPC addresses, each once (none set: the one Triton)."""
        return list(dict.fromkeys(self.triton_replicas)) or [triton_grpc_url]


class EmotionLlamaSettings(BaseModel):
    media_roots: list[Path] = Field(
        default_factory=lambda: [PROJECT_ROOT / "examples"],
        description="server-side video paths are accepted only inside these folders (JSON list in the environment)",
    )
    max_video_bytes: int = Field(EMOTION_LLAMA.max_video_bytes, gt=0, description="video file / upload limit (413 above)")
    max_prompt_chars: int = Field(EMOTION_LLAMA.max_prompt_chars, gt=0)
    generation_timeout_s: float = Field(EMOTION_LLAMA.generation_timeout_s, gt=0, description="a whole Emotion-LLaMA answer")

    @field_validator("media_roots")
    @classmethod
    def _absolute_roots(cls, roots: list[Path]) -> list[Path]:
        # a relative root means the folder where the stack was started, not wherever a later lookup runs
        return [Path(os.path.abspath(root.expanduser())) for root in roots]


class Hallo2Settings(BaseModel):
    """The task service (tasks in a database; see frontend/hallo2/tasks.py)."""

    database_url: str = Field("sqlite:///data/hallo2.db",
                              description="any SQLAlchemy URL; a relative SQLite path is relative to the working dir")
    data_dir: Path = Field(Path("data/hallo2"), description="one folder per task: inputs and the result video")
    max_concurrent_tasks: int = Field(HALLO2.max_concurrent_tasks, ge=1, description="Hallo2 tasks run at once by this front end")
    max_queued_tasks: int = Field(HALLO2.max_queued_tasks, ge=1, description="waiting tasks; a submission beyond is a 503")
    retention_s: float = Field(HALLO2.retention_s, gt=0, description="finished tasks (row and files) are deleted this long after")
    max_storage_bytes: int = Field(HALLO2.max_storage_bytes, gt=0, description="task files; the oldest finished tasks go first beyond")
    retention_sweep_interval_s: float = Field(HALLO2.retention_sweep_interval_s, gt=0)
    progress_interval_s: float = Field(HALLO2.progress_interval_s, ge=0,
                                       description="a running task's progress is written at most this often")
    max_upload_bytes: int = Field(HALLO2.max_upload_bytes, gt=0, description="image + audio of one Hallo2 task (413 above)")
    guidance_scale: float = Field(HALLO2.guidance_scale, ge=HALLO2.min_guidance_scale, le=HALLO2.max_guidance_scale,
                                  description="default until POST /api/v1/inference/hallo2/config")
    inference_steps: int = Field(HALLO2.inference_steps, ge=1, le=HALLO2.max_inference_steps)
    enable_cache: bool = HALLO2.enable_cache
    max_attempts: int = Field(HALLO2.max_attempts, ge=1, description="a task interrupted by this many dead processes fails")
    heartbeat_interval_s: float = Field(HALLO2.heartbeat_interval_s, gt=0)
    stale_after_s: float = Field(HALLO2.stale_after_s, gt=0, description="a processing task without a heartbeat this long is re-queued")
    embedded_worker: bool = Field(True, description="run a task worker inside the front end; false: tasks run in separate "
                                  "workers (python -m frontend.hallo2 worker) sharing the database and the task folder")
    recover_all_on_startup: bool | None = Field(
        None, description="every 'processing' task at startup is orphaned (only true for one worker per database); "
        "unset: true for an SQLite database whose one worker is the front end's embedded one, else tasks come back when "
        "their lease (stale_after_s) expires")
    poll_interval_s: float = Field(HALLO2.poll_interval_s, gt=0, description="how often a worker looks for tasks queued by other replicas")
    events_recheck_s: float = Field(HALLO2.events_recheck_s, gt=0, description="a task event stream reads changes made by "
                                    "other replicas this often (this front end's own are sent at once)")
    events_keepalive_s: float = Field(HALLO2.events_keepalive_s, gt=0, description="a quiet task event stream gets a "
                                      "comment line this often")
    cancel_grace_s: float = Field(HALLO2.cancel_grace_s, ge=0, description="a cancelled runner is cancelled outright after this")
    task_timeout_s: float = Field(HALLO2.task_timeout_s, gt=0, description="one task's whole Triton call")
    progress_timeout_s: float = Field(HALLO2.progress_timeout_s, gt=0, description="the longest wait for the next progress response")
    unavailable_retries: int = Field(HALLO2.unavailable_retries, ge=0, description="re-runs of a task that found Triton unavailable")
    retry_backoff_s: float = Field(HALLO2.retry_backoff_s, gt=0, description="first wait before such a re-run (doubles each time)")
    max_retry_backoff_s: float = Field(HALLO2.max_retry_backoff_s, gt=0)

    @model_validator(mode="after")
    def _one_worker_to_recover_all(self) -> Hallo2Settings:
        if self.recover_all_on_startup and not self.single_worker:
            # it would take running tasks away from the other workers, which then run twice
            raise ValueError("recover_all_on_startup must not be true with several workers (a PostgreSQL database, or "
                             "embedded_worker false): leave it unset, tasks of a dead worker come back after stale_after_s")
        return self

    @property
    def single_worker(self) -> bool:
        """One worker per database: the front end's embedded worker on an SQLite file (make run, docker compose)."""
        return self.embedded_worker and self.database_url.startswith("sqlite")

    def recovers_all(self, standalone: bool = False) -> bool:
        """Whether a worker starting now may treat every 'processing' task as orphaned; a standalone worker never
        does (others may run beside it)."""
        if standalone:
            return False
        return self.single_worker if self.recover_all_on_startup is None else self.recover_all_on_startup


DocumentedServer = Literal["lam_a2e", "hallo2", "emotion_llama_gradio", "emotion_llama_fastapi"]
DOCUMENTED_PORT_NUMBERS: dict[str, int] = {
    "lam_a2e": LAM_A2E.documented_port,
    "hallo2": HALLO2.documented_port,
    "emotion_llama_gradio": EMOTION_LLAMA.gradio_port,
    "emotion_llama_fastapi": EMOTION_LLAMA.fastapi_port,
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore")

    triton_grpc_url: str = "127.0.0.1:8001"
    triton_timeout_s: float = Field(120.0, gt=0, description="per Triton call")
    triton_probe_timeout_s: float = Field(2.0, gt=0, description="health and readiness probes of Triton")
    shutdown_grace_s: float = Field(30.0, ge=0, description="on SIGTERM: how long in-flight requests may take to finish")
    api_key: str | None = Field(None, description="when set, /api routes need header X-API-Key or Bearer token")
    max_requests_per_client: int = Field(32, gt=0, description="requests of one client in flight at once, streams included "
                                         "(429 beyond)")
    rate_limit: str = Field("", description="requests per client (API key, or address), e.g. '600/minute'; empty: no limit "
                            "(429 with Retry-After beyond; health, metrics and docs are not counted)")
    cors_origins: list[str] = Field(default_factory=list, description="browser origins allowed to call the API (JSON list); "
                                    "a state-changing request from any other origin is refused with 403")
    documented_ports: bool = Field(False, description="also serve each API on the port its document names, that API only "
                                   "(LAM-A2E 8000, Hallo2 8001, Emotion-LLaMA Gradio 7889 and FastAPI 7887); see README")
    documented_port_numbers: dict[DocumentedServer, int] = Field(
        default_factory=lambda: dict(DOCUMENTED_PORT_NUMBERS),
        description="the port of each documented server in that mode (the documents' own by default)")
    log_level: str = "info"
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object a line, with the request id")
    lam_a2e: LamA2ESettings = Field(default_factory=LamA2ESettings)
    emotion_llama: EmotionLlamaSettings = Field(default_factory=EmotionLlamaSettings)
    hallo2: Hallo2Settings = Field(default_factory=Hallo2Settings)


# Names used before the settings were nested by model: no longer read (a warning says so).
_FLAT_NAMES = {
    **{name: f"lam_a2e__{name}" for name in LamA2ESettings.model_fields},
    **{name: f"emotion_llama__{name}" for name in EmotionLlamaSettings.model_fields},
    **{f"hallo2_{name}": f"hallo2__{name}" for name in Hallo2Settings.model_fields},
    "max_concurrent_tasks": "hallo2__max_concurrent_tasks",
    "max_hallo2_upload_bytes": "hallo2__max_upload_bytes",
}


def _warn_flat_names(names) -> None:
    for name in sorted({n.upper() for n in names}):
        key = name.removeprefix(ENV_PREFIX).lower()
        if name.startswith(ENV_PREFIX) and key in _FLAT_NAMES:
            log.warning("%s is no longer read: use %s%s", name, ENV_PREFIX, _FLAT_NAMES[key].upper())


def load_settings(config_file: Path | None = None, **overrides) -> Settings:
    names = list(os.environ)
    if config_file is not None:
        if not Path(config_file).is_file():
            raise FileNotFoundError(f"config file {config_file} does not exist")
        from dotenv import dotenv_values

        names += list(dotenv_values(config_file))
        settings = Settings(_env_file=str(config_file), **overrides)
    else:
        settings = Settings(**overrides)
    _warn_flat_names(names)
    return settings
