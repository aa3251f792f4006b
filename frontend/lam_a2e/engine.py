"""LAM-A2E's model calls: :class:`LamA2EEngine` is what the router needs, :class:`TritonLamA2EEngine` makes
those calls to one Triton (``lam_a2e_offline`` for whole files, the ``lam_a2e_stream`` sequence per session), and
:class:`ReplicaSet` spreads them over several Triton replicas (a session's chunks go to the replica of its sequence:
``frontend/lam_a2e/sessions.py``)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Annotated, Protocol

import numpy as np
from fastapi import Depends, Request

from emoserve.model_catalog import (
    A2E_MODELS,
    A2E_NETWORK_MODEL,
    A2E_OFFLINE_MODEL,
    A2E_STREAM_MODEL,
    AUDIO,
    BLENDSHAPES,
    BROW_MOVEMENT,
    CHUNK_INDEX,
    FIRST_FRAME_INDEX,
    ID_IDX,
    MOVEMENT_SMOOTH,
    SEED,
)
from frontend.deps import engine_from_state
from frontend.errors import ApiError
from frontend.triton import TritonEngine, requested, tensor


@dataclass
class StreamChunkOutput:
    frames: np.ndarray
    first_frame_index: int
    chunk_index: int


class LamA2EEngine(Protocol):
    async def ready(self) -> bool: ...

    async def gpu_available(self) -> bool: ...

    async def weights(self) -> str:
        """Which network weights produce the frames."""
        ...

    async def infer_whole_audio(self, audio: np.ndarray, id_idx: int, movement_smooth: bool, brow_movement: bool,
                                seed: int = 0) -> np.ndarray: ...

    async def stream_chunk(self, correlation_id: int, audio: np.ndarray, *, start: bool, end: bool = False, id_idx: int = 0,
                           movement_smooth: bool = False, brow_movement: bool = False, seed: int | None = None) -> StreamChunkOutput: ...

    async def start_sequence(self, correlation_id: int, id_idx: int, movement_smooth: bool, brow_movement: bool, seed: int) -> None:
        """Start a session's sequence with no audio: the replica keeps its options from then on."""
        ...

    async def end_sequence(self, correlation_id: int) -> None:
        """End a session's sequence (frees the model's per-sequence context)."""
        ...

    async def live(self) -> bool:
        """Whether the inference server answers at all (False: it is gone, and the sequences it held with it)."""
        ...


def _a2e_inputs(audio: np.ndarray, id_idx: int, movement_smooth: bool, brow_movement: bool, seed: int | None, batched: bool):
    inputs = [
        tensor(AUDIO, np.ascontiguousarray(audio, dtype=np.float32).reshape(-1), batched),
        tensor(ID_IDX, np.array([id_idx], np.int32), batched),
        tensor(MOVEMENT_SMOOTH, np.array([movement_smooth], np.bool_), batched),
        tensor(BROW_MOVEMENT, np.array([brow_movement], np.bool_), batched),
    ]
    if seed is not None:
        inputs.append(tensor(SEED, np.array([seed], np.uint64), batched))
    return inputs


class TritonLamA2EEngine:
    def __init__(self, triton: TritonEngine):
        self.triton = triton

    async def ready(self) -> bool:
        return await self.triton.models_ready(A2E_MODELS)

    async def gpu_available(self) -> bool:
        try:
            return bool((await self.triton.model_facts(A2E_NETWORK_MODEL))["gpu"])
        except ApiError:
            return False

    async def weights(self) -> str:
        return (await self.triton.model_facts(A2E_NETWORK_MODEL))["weights"]

    async def infer_whole_audio(self, audio: np.ndarray, id_idx: int, movement_smooth: bool, brow_movement: bool,
                                seed: int = 0) -> np.ndarray:
        result = await self.triton.infer(
            "whole-audio inference",
            model_name=A2E_OFFLINE_MODEL,
            inputs=_a2e_inputs(audio, id_idx, movement_smooth, brow_movement, seed, batched=False),
            outputs=requested(BLENDSHAPES),
        )
        return result.as_numpy(BLENDSHAPES)

    async def stream_chunk(
        self,
        correlation_id: int,
        audio: np.ndarray,
        *,
        start: bool,
        end: bool = False,
        id_idx: int = 0,
        movement_smooth: bool = False,
        brow_movement: bool = False,
        seed: int | None = None,
    ) -> StreamChunkOutput:
        result = await self.triton.infer(
            "streaming inference",
            model_name=A2E_STREAM_MODEL,
            inputs=_a2e_inputs(audio, id_idx, movement_smooth, brow_movement, seed, batched=True),
            outputs=requested(BLENDSHAPES, FIRST_FRAME_INDEX, CHUNK_INDEX),
            sequence_id=correlation_id,
            sequence_start=start,
            sequence_end=end,
        )
        return StreamChunkOutput(
            frames=result.as_numpy(BLENDSHAPES)[0],
            first_frame_index=int(result.as_numpy(FIRST_FRAME_INDEX).reshape(-1)[0]),
            chunk_index=int(result.as_numpy(CHUNK_INDEX).reshape(-1)[0]),
        )

    async def start_sequence(self, correlation_id: int, id_idx: int, movement_smooth: bool, brow_movement: bool, seed: int) -> None:
        await self.stream_chunk(correlation_id, np.zeros(0, np.float32), start=True, id_idx=id_idx,
                                movement_smooth=movement_smooth, brow_movement=brow_movement, seed=seed)

    async def end_sequence(self, correlation_id: int) -> None:
        await self.stream_chunk(correlation_id, np.zeros(0, np.float32), start=False, end=True)

    async def live(self) -> bool:
        return await self.triton.server_live()


@dataclass(eq=False)
class Replica:
    """One Triton replica serving LAM-A2E: its pooled client's engine, and the tag session ids name it by."""

    tag: bytes
    engine: LamA2EEngine


class ReplicaSet:
    """The router's engine over every replica: ready when one is; whole files go round the ready ones."""

    def __init__(self, replicas: list[Replica]):
        if not replicas:
            raise ValueError("LAM-A2E needs at least one Triton replica")
        self.replicas = replicas
        self._turn = itertools.count()

    async def ready_replicas(self) -> list[Replica]:
        return [replica for replica in self.replicas if await replica.engine.ready()]

    async def _one(self) -> Replica:
        ready = await self.ready_replicas()
        return ready[next(self._turn) % len(ready)] if ready else self.replicas[0]

    async def ready(self) -> bool:
        return bool(await self.ready_replicas())

    async def gpu_available(self) -> bool:
        return await (await self._one()).engine.gpu_available()

    async def weights(self) -> str:
        return await (await self._one()).engine.weights()

    async def infer_whole_audio(self, audio: np.ndarray, id_idx: int, movement_smooth: bool, brow_movement: bool,
                                seed: int = 0) -> np.ndarray:
        return await (await self._one()).engine.infer_whole_audio(audio, id_idx, movement_smooth, brow_movement, seed)


async def get_engine(request: Request) -> ReplicaSet:
    return engine_from_state(request, "lam_a2e_engine")


EngineDep = Annotated[ReplicaSet, Depends(get_engine)]
