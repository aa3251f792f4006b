"""Hallo2's defaults and limits, in one place: the front end's settings, schemas and task store, the export's
``BuildSettings`` and the ``hallo2`` model's fallbacks all read :data:`HALLO2`.

Generation values are upstream's (``guidance_scale`` 3.5, 40 denoising steps per clip).
"""

from __future__ import annotations

from dataclasses import dataclass

_MiB = 1024 * 1024


@dataclass(frozen=True)
class Hallo2Defaults:
    documented_port: int = 8001  # the Hallo2 document's server (documented-ports mode)
    guidance_scale: float = 3.5
    min_guidance_scale: float = 1.0  # the range POST /api/v1/inference/hallo2/config accepts
    max_guidance_scale: float = 20.0
    inference_steps: int = 40
    max_inference_steps: int = 100  # the most POST /api/v1/inference/hallo2/config accepts
    enable_cache: bool = True
    max_audio_seconds: float = 60.0  # the driving audio of one task (the hallo2 model refuses longer)
    max_upload_bytes: int = 500 * _MiB  # image + audio of one task
    # the front end's task queue
    max_concurrent_tasks: int = 1
    # finished tasks (row, inputs and video) are deleted this long after they finished, and the oldest finished
    # ones sooner while all task files together are over the storage budget
    retention_s: float = 7 * 24 * 3600.0
    max_storage_bytes: int = 20 * 1024**3
    retention_sweep_interval_s: float = 300.0
    # a running task's progress is written at most this often (a log line per denoising step otherwise)
    progress_interval_s: float = 1.0
    max_queued_tasks: int = 100  # a submission beyond this many waiting tasks is a 503 with Retry-After
    task_list_page: int = 100  # GET /api/v1/tasks answers at most this many tasks unless ?limit= asks for more
    max_task_list_page: int = 1000
    max_attempts: int = 3  # a task interrupted by this many dead processes fails
    heartbeat_interval_s: float = 10.0
    stale_after_s: float = 60.0  # a processing task without a heartbeat this long is re-queued
    poll_interval_s: float = 1.0  # how often a worker looks for tasks queued by other replicas
    # GET /api/v1/tasks/{id}/events: a change made by another replica's worker is read this often (this process's
    # own changes are sent at once), and a quiet stream gets a comment line this often (proxies drop silent ones)
    events_recheck_s: float = 0.5
    events_keepalive_s: float = 15.0
    cancel_grace_s: float = 10.0  # a cancelled runner is cancelled outright after this
    # the task's Triton stream: all of it, and between two progress responses (a hung server is not waited on forever)
    task_timeout_s: float = 3600.0
    progress_timeout_s: float = 300.0
    # a task whose Triton call finds the server unavailable (restarting, reloading a model) is run again after
    # 2, 4, 8 ... s (at most max_retry_backoff_s), this many times, before it fails
    unavailable_retries: int = 6
    retry_backoff_s: float = 2.0
    max_retry_backoff_s: float = 30.0


HALLO2 = Hallo2Defaults()
