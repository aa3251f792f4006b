"""Request and response bodies of the Hallo2 task API (``emo-hallo-api.zh.md``), field for field."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from emoserve.hallo2.defaults import HALLO2
from frontend.hallo2.tasks import CANCELLED, QUEUED, Task
from frontend.json_types import json_int


class TaskCreated(BaseModel):
    task_id: str
    status: str = QUEUED
    message: str = "Inference task queued successfully"


class TaskStatus(BaseModel):
    task_id: str
    status: str = Field(description="queued | processing | completed | failed | cancelled")
    progress: int = Field(ge=0, le=100)
    status_message: str | None
    result: dict | None = Field(
        description="when completed: video_url, video_path (inside the task storage), frames, fps, duration, width, height, "
                    "size_bytes, processing_time")
    error: str | None
    created_at: str
    updated_at: str


class TaskList(BaseModel):
    tasks: dict[str, TaskStatus]
    count: int  # the tasks in this answer
    total: int  # all tasks with the requested status (addition: the answer is one page, ?limit= and ?offset=)


class TaskLogs(BaseModel):
    task_id: str
    logs: str


class TaskCancelled(BaseModel):
    status: str = CANCELLED
    task_id: str
    message: str = "Task cancelled successfully"


class Hallo2ConfigUpdate(BaseModel):
    """Applies to tasks created afterwards; stored in the database (shared by replicas, kept across restarts)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    # each optional, none nullable: a key that is sent carries a value (the schema says so too)
    guidance_scale: float = Field(None, ge=HALLO2.min_guidance_scale, le=HALLO2.max_guidance_scale,
                                  description=f"classifier-free guidance (upstream {HALLO2.guidance_scale:g})")
    inference_steps: json_int(ge=1, le=HALLO2.max_inference_steps) = Field(None,
                                 description=f"denoising steps per clip (upstream {HALLO2.inference_steps})")
    enable_cache: bool = Field(None, description="false: no task uses cached preprocessing, whatever its use_cache")


class Hallo2Config(BaseModel):
    guidance_scale: float
    inference_steps: int
    enable_cache: bool


class ConfigUpdated(BaseModel):
    status: str = "success"
    message: str = "Configuration updated successfully"
    config: Hallo2Config


class GpuDevice(BaseModel):
    index: int
    name: str | None = None
    memory_allocated: str | None = None
    memory_total: str | None = None


class GpuInfo(BaseModel):
    available: bool = False
    count: int = 0
    devices: list[GpuDevice] = Field(default_factory=list)


class SimpleHealth(BaseModel):
    status: str
    gpu_available: bool
    gpu_count: int
    gpu_name: str | None


class DetailedHealth(BaseModel):
    status: str = Field(description="healthy | degraded (the hallo2 model is not loaded) | unhealthy (database unreachable)")
    timestamp: str
    uptime: float
    models_loaded: list[str]
    gpu: GpuInfo
    tasks: dict[str, int] | None = Field(description="queued, running (processing), completed, failed, cancelled")


def task_status(task: Task) -> TaskStatus:
    return TaskStatus(**task.public())
