"""Hallo2's model calls: :class:`Hallo2Engine` is what the task service needs (the worker's runner and the
health probes), :class:`TritonHallo2Engine` makes those calls to Triton (the decoupled ``hallo2`` pipeline:
progress responses, then the MP4 with its ``RESULT_METADATA``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Protocol

import numpy as np

from emoserve.hallo2.defaults import HALLO2
from emoserve.model_catalog import (
    AUDIO_BYTES,
    GUIDANCE_SCALE,
    HALLO2_IMAGE,
    HALLO2_MODELS,
    HALLO2_PIPELINE_MODEL,
    INFERENCE_STEPS,
    PROGRESS,
    RESULT_METADATA,
    SEED,
    STATUS_MESSAGE,
    USE_CACHE,
    VIDEO_MP4,
)
from frontend.errors import InferenceFailed
from frontend.hallo2.schemas import GpuDevice, GpuInfo
from frontend.hallo2.worker import Hallo2Video, ProgressCallback, TaskInputs
from frontend.triton import TritonEngine, bytes_tensor, first_text, tensor


class Hallo2Engine(Protocol):
    async def run(self, inputs: TaskInputs, progress: ProgressCallback, cancel: asyncio.Event) -> Hallo2Video:
        """One task (the worker's runner): ``await progress(percent, message)`` per step; stop when ``cancel`` is set."""
        ...

    async def models_loaded(self) -> list[str]:
        """The Hallo2 models ready to serve (health answers "degraded" without the pipeline)."""
        ...

    async def gpu_info(self) -> GpuInfo: ...


class TritonHallo2Engine:
    """The Triton runner of the Hallo2 task worker (:meth:`run`), and the health probes."""

    def __init__(self, triton: TritonEngine, *, task_timeout_s: float = HALLO2.task_timeout_s,
                 progress_timeout_s: float = HALLO2.progress_timeout_s):
        self.triton = triton
        self.task_timeout_s = task_timeout_s
        self.progress_timeout_s = progress_timeout_s
        self._gpu_info: GpuInfo | None = None

    async def run(self, inputs: TaskInputs, progress: ProgressCallback, cancel: asyncio.Event) -> Hallo2Video:
        return await self.generate(inputs.image, inputs.audio, steps=inputs.inference_steps, guidance_scale=inputs.guidance_scale,
                                   use_cache=inputs.use_cache, progress=progress, cancel=cancel)

    async def generate(
        self,
        image: bytes,
        audio: bytes,
        *,
        steps: int,
        guidance_scale: float,
        use_cache: bool,
        progress,
        cancel: asyncio.Event,
        seed: int | None = None,
    ) -> Hallo2Video:
        """Stream the ``hallo2`` pipeline: ``await progress(percent, message)`` per step; the MP4 and its metadata at the end.

        Setting ``cancel`` cancels the gRPC call, which Triton passes to the pipeline as a cancelled request
        (it stops between denoising steps); :class:`asyncio.CancelledError` is raised here then.
        """
        inputs = [
            bytes_tensor(HALLO2_IMAGE, image),
            bytes_tensor(AUDIO_BYTES, audio),
            tensor(INFERENCE_STEPS, np.array([steps], np.int32)),
            tensor(GUIDANCE_SCALE, np.array([guidance_scale], np.float32)),
            tensor(USE_CACHE, np.array([use_cache], np.bool_)),
        ]
        if seed is not None:
            inputs.append(tensor(SEED, np.array([seed], np.uint64)))

        stream = self.triton.stream("Hallo2", HALLO2_PIPELINE_MODEL, inputs, timeout_s=self.task_timeout_s,
                                    idle_timeout_s=self.progress_timeout_s)
        watcher = asyncio.create_task(cancel.wait())
        try:
            iterator = stream.__aiter__()
            while True:
                step = asyncio.ensure_future(iterator.__anext__())
                done, _ = await asyncio.wait({step, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if watcher in done:
                    step.cancel()
                    with contextlib.suppress(BaseException):
                        await step  # the stream is closed below only once nothing runs inside it
                    raise asyncio.CancelledError("Hallo2 task cancelled")
                try:
                    result = step.result()
                except StopAsyncIteration:
                    raise InferenceFailed("Hallo2: the stream ended without a video") from None
                video = result.as_numpy(VIDEO_MP4)
                if video is not None:
                    return Hallo2Video(bytes(video.reshape(-1)[0]), json.loads(result.as_numpy(RESULT_METADATA).reshape(-1)[0]))
                await progress(float(result.as_numpy(PROGRESS).reshape(-1)[0]), first_text(result, STATUS_MESSAGE))
        finally:
            watcher.cancel()
            await stream.aclose()

    async def models_loaded(self) -> list[str]:
        return [HALLO2_PIPELINE_MODEL] if await self.triton.models_ready(HALLO2_MODELS) else []

    async def gpu_info(self) -> GpuInfo:
        """GPU facts from the pipeline's Triton config (``KIND_GPU`` instance groups and their ``gpus`` list;
        names and memory are not in a model config, so they stay null)."""
        if self._gpu_info is not None:
            return self._gpu_info
        try:
            config = (await asyncio.wait_for(self.triton.client.get_model_config(HALLO2_PIPELINE_MODEL, as_json=True),
                                             self.triton.probe_timeout_s))["config"]
        except Exception:
            return GpuInfo()  # not loaded yet: ask again next time
        groups = [g for g in config.get("instance_group", []) if g.get("kind", "KIND_CPU") in ("KIND_GPU", "KIND_AUTO")]
        gpus = sorted({int(i) for g in groups for i in g.get("gpus", [])}) or ([0] if groups else [])
        self._gpu_info = GpuInfo(available=bool(groups), count=len(gpus), devices=[GpuDevice(index=i) for i in gpus])
        return self._gpu_info
