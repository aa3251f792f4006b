"""Response and request bodies of the LAM-A2E API, field for field as its document gives them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from emoserve.constants import NUM_IDENTITIES
from frontend.json_types import json_int


class ServiceInfo(BaseModel):
    service: str
    version: str
    endpoints: dict[str, str]


class Health(BaseModel):
    status: str = Field(description="healthy or not_ready")
    model_loaded: bool
    gpu_available: bool
    sessions: int


class Frame(BaseModel):
    weights: list[float]
    time: float
    rotation: list[float] = Field(default_factory=list, description="head rotation: always empty, as documented")


class InferMetadata(BaseModel):
    fps: float
    frame_count: int
    blendshape_count: int
    inference_time: float
    weights: str = Field(description="which network weights produced these frames")


class StreamMetadata(InferMetadata):
    session_id: str
    chunk_index: int
    start_time: float = Field(description="session time (s) of this chunk's first frame; frames[].time is relative to it")


class InferResponse(BaseModel):
    names: list[str]
    metadata: InferMetadata
    frames: list[Frame]


class StreamChunkResponse(BaseModel):
    names: list[str]
    metadata: StreamMetadata
    frames: list[Frame]


class StreamInitRequest(BaseModel):
    model_config = ConfigDict(strict=True)  # a JSON body: 0 is not a boolean

    id_idx: json_int(ge=0, le=NUM_IDENTITIES - 1) = Field(0, description="identity / style index")
    # Extensions of the documented body; the defaults are upstream's streaming behaviour.
    movement_smooth: bool = Field(True, description="damp mouth movement during silence (upstream streaming always does)")
    brow_movement: bool = Field(False, description="add brow movement on loud passages")


class StreamInitResponse(BaseModel):
    session_id: str
    message: str
    id_idx: int


class StreamCloseResponse(BaseModel):
    message: str
    session_id: str
