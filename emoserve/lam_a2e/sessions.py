"""Per-sequence streaming state for many concurrent sessions, and cross-session batching.

The Triton streaming model is a thin adapter over :class:`StreamSessionStore`: the sequence batcher
hands it chunks of several sessions at once, and :meth:`StreamSessionStore.process` runs every
session's next window through the network in ONE batched call per round (a round per 2 s sub-chunk, so
long chunks stay sequential within their own session). State is keyed by Triton's correlation id,
created on START, deleted on END, and evicted after ``idle_timeout_s`` without a chunk.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from emoserve.constants import NUM_BLENDSHAPES, NUM_IDENTITIES
from emoserve.lam_a2e.postprocess import PostprocessOptions
from emoserve.lam_a2e.streaming import StreamContext, finish_subchunk, new_stream_context, prepare_window, split_chunk

RunNetwork = Callable[[np.ndarray, np.ndarray], np.ndarray]


class StreamRequestError(ValueError):
    """A chunk that cannot be processed; the message names the problem."""


class UnknownSequenceError(StreamRequestError):
    """A chunk for a sequence that was never started, already ended, or expired."""


@dataclass
class ChunkRequest:
    correlation_id: int
    audio: np.ndarray
    start: bool = False
    end: bool = False
    id_idx: int = 0
    options: PostprocessOptions = field(default_factory=PostprocessOptions)
    seed: int | None = None


@dataclass
class ChunkResult:
    frames: np.ndarray
    first_frame_index: int
    chunk_index: int


def validate_id_idx(id_idx: int) -> int:
    if not 0 <= int(id_idx) < NUM_IDENTITIES:
        raise StreamRequestError(f"id_idx must be in 0..{NUM_IDENTITIES - 1}, got {id_idx}")
    return int(id_idx)


class StreamSessionStore:
    def __init__(self, idle_timeout_s: float = 300.0, clock: Callable[[], float] = time.monotonic):
        self.idle_timeout_s = idle_timeout_s
        self._clock = clock
        self._contexts: dict[int, StreamContext] = {}
        self._last_seen: dict[int, float] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._contexts)

    def __contains__(self, correlation_id: int) -> bool:
        with self._lock:
            return correlation_id in self._contexts

    def evict_idle(self) -> list[int]:
        now = self._clock()
        with self._lock:
            expired = [cid for cid, seen in self._last_seen.items() if now - seen > self.idle_timeout_s]
            for cid in expired:
                self._drop(cid)
        return expired

    def close(self, correlation_id: int) -> bool:
        with self._lock:
            return self._drop(correlation_id)

    def _drop(self, correlation_id: int) -> bool:
        self._last_seen.pop(correlation_id, None)
        return self._contexts.pop(correlation_id, None) is not None

    def _context_for(self, request: ChunkRequest) -> StreamContext:
        cid = request.correlation_id
        if request.start:
            seed = request.seed if request.seed is not None else cid
            context = new_stream_context(validate_id_idx(request.id_idx), request.options, int(seed) % (2**63))
            self._contexts[cid] = context  # a new START on a live id restarts that sequence
        elif cid not in self._contexts:
            raise UnknownSequenceError(f"sequence {cid} is not active (never started, already ended, or idle-expired)")
        self._last_seen[cid] = self._clock()
        return self._contexts[cid]

    def process(self, requests: list[ChunkRequest], run_network: RunNetwork) -> list[ChunkResult | StreamRequestError]:
        """One result per request, in order; a bad request gets its own error and harms no other."""
        self.evict_idle()
        results: list[ChunkResult | StreamRequestError | None] = [None] * len(requests)
        pending: list[tuple[int, StreamContext, list[np.ndarray], list[np.ndarray], int]] = []
        with self._lock:
            for i, request in enumerate(requests):
                try:
                    audio = np.asarray(request.audio, dtype=np.float32).reshape(-1)
                    if not np.all(np.isfinite(audio)):
                        raise StreamRequestError("audio chunk holds NaN or infinite samples")
                    context = self._context_for(request)
                except StreamRequestError as exc:
                    results[i] = exc
                    continue
                pending.append((i, context, split_chunk(audio), [], context.frames_emitted))

        # Round r runs sub-chunk r of every request that has one: one network call for all sessions.
        # Two requests of the same sequence in one batch cannot happen (the batcher sends a sequence's
        # next request only after the previous one's response), so contexts are independent here.
        round_index = 0
        while True:
            active = [item for item in pending if round_index < len(item[2])]
            if not active:
                break
            windows, counts = [], []
            for _, context, subchunks, _, _ in active:
                window, count = prepare_window(context, subchunks[round_index])
                windows.append(window)
                counts.append(count)
            ids = np.array([item[1].id_idx for item in active], dtype=np.int64)
            expressions = run_network(np.stack(windows), ids)
            for (_, context, subchunks, outputs, _), expression, count in zip(active, expressions, counts):
                outputs.append(finish_subchunk(context, subchunks[round_index], expression, count))
            round_index += 1

        with self._lock:
            for i, context, _, outputs, first_frame in pending:
                frames = np.concatenate(outputs) if outputs else np.zeros((0, NUM_BLENDSHAPES), np.float32)
                if len(np.asarray(requests[i].audio).reshape(-1)) > 0:
                    context.chunks_seen += 1
                results[i] = ChunkResult(frames.astype(np.float32), first_frame, context.chunks_seen)
                if requests[i].end:
                    self._drop(requests[i].correlation_id)
        return results  # type: ignore[return-value]
