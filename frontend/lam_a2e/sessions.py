"""Streaming sessions: a signed REST session id ↔ one Triton sequence (correlation id) on one Triton replica.

Init picks the least-loaded live replica and starts the sequence there with no audio (START), so from then on the
replica holds everything a chunk needs (identity, options, seed, the audio carried over between chunks, the chunk
count) and the session id (``frontend/lam_a2e/tokens.py``) names the replica and the correlation id. Any front end
with the same key serves any chunk: a session it does not know yet is adopted from its id. What each front end
keeps here is only its own view: the sessions opened or fed through it (its limits and ``/api/health`` count), a
lock per session (one front end's concurrent chunks of a session reach Triton in order), and when it last saw a
chunk. A session quiet here for a few sweeps is rechecked with its replica (an empty chunk): closed or fed through
another front end meanwhile, it is forgotten here; idle for ``idle_timeout_s``, it is ended.
Close or idle expiry ends the sequence (END), which frees the model's per-sequence context; Triton's own sequence
idle timeout frees sessions whose clients and front ends are gone.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field

import numpy as np

from frontend.errors import ApiError, NotFound, ServiceUnavailable, TooManyRequests
from frontend.lam_a2e.engine import Replica, StreamChunkOutput
from frontend.lam_a2e.tokens import SessionTokens

log = logging.getLogger(__name__)

# a replica that failed to start a sequence is tried last for this long
REPLICA_DOWN_HOLD_S = 5.0


@dataclass(eq=False)
class StreamSession:
    session_id: str
    correlation_id: int
    replica: Replica
    id_idx: int | None = None  # None: adopted from its id (opened through another front end)
    chunks: int = 0
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False
    client: str = ""  # frontend.deps.client_key of who opened (or here first fed) it


def _unknown(session_id: str) -> NotFound:
    return NotFound(f"session {session_id} does not exist (never created, closed, or expired)")


def _lost(session_id: str) -> NotFound:
    return NotFound(f"session {session_id} was lost: the inference server that held its stream is gone; "
                    f"start a new session with /api/infer_stream_init")


class SessionRegistry:
    def __init__(self, replicas: list[Replica], tokens: SessionTokens, max_sessions: int, idle_timeout_s: float,
                 max_per_client: int | None = None, recheck_after_s: float = 10.0):
        self.replicas = {replica.tag: replica for replica in replicas}
        self.tokens = tokens
        self.max_sessions = max_sessions
        self.max_per_client = max_per_client or max_sessions
        self.idle_timeout_s = idle_timeout_s
        # a session without a chunk here for this long is rechecked with its replica (closed or fed elsewhere?)
        self.recheck_after_s = min(recheck_after_s, idle_timeout_s)
        self._sessions: dict[str, StreamSession] = {}
        self._lock = asyncio.Lock()
        self._down_until: dict[bytes, float] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def load(self, replica: Replica) -> int:
        return sum(1 for session in self._sessions.values() if session.replica is replica and session.session_id)

    async def create(self, id_idx: int, movement_smooth: bool = True, brow_movement: bool = False, client: str = "") -> StreamSession:
        async with self._lock:
            if len(self._sessions) >= self.max_sessions:
                raise ServiceUnavailable(f"too many streaming sessions ({self.max_sessions}); close one or retry later")
            if sum(1 for s in self._sessions.values() if s.client == client) >= self.max_per_client:
                raise TooManyRequests(f"this client already has {self.max_per_client} streaming sessions open; close one first")
            # 63-bit random ids: no collision with another front end's or an earlier run's sequences
            correlation_id = secrets.randbits(63) or 1
            placeholder = f"starting:{correlation_id}"
            session = StreamSession("", correlation_id, next(iter(self.replicas.values())), id_idx, client=client)
            self._sessions[placeholder] = session  # holds its place under the limits while its sequence starts
        failure: ApiError | None = None
        try:
            now = time.monotonic()
            ready = {replica.tag: await replica.engine.ready() for replica in self.replicas.values()}
            # ready before not ready, then replicas that did not just fail, then the least loaded in this front end's
            # view; ties go round from a place set by the session's random id, so front ends that each see few
            # sessions spread theirs instead of all picking the first replica
            order = list(self.replicas.values())
            start = correlation_id % len(order)
            candidates = sorted(order[start:] + order[:start],  # a stable sort: ties keep this order
                                key=lambda r: (not ready[r.tag], self._down_until.get(r.tag, 0) > now, self.load(r)))
            for replica in candidates:
                try:
                    await replica.engine.start_sequence(correlation_id, id_idx, movement_smooth, brow_movement, seed=correlation_id)
                except ServiceUnavailable as exc:  # that replica is down or busy: the next one
                    self._down_until[replica.tag] = time.monotonic() + REPLICA_DOWN_HOLD_S
                    failure = exc
                    continue
                session.replica = replica
                session.session_id = self.tokens.issue(replica.tag, correlation_id)
                self._down_until.pop(replica.tag, None)
                break
        finally:
            async with self._lock:
                self._sessions.pop(placeholder, None)
                if session.session_id:
                    self._sessions[session.session_id] = session
        if not session.session_id:
            raise failure or ServiceUnavailable("no inference server can take a streaming session; retry shortly")
        return session

    def get(self, session_id: str, client: str = "", adopt: bool = True) -> StreamSession:
        """This front end's session, or one adopted from a valid id (``adopt`` False: only checked); 404 otherwise."""
        session = self._sessions.get(session_id)
        if session is not None:
            if session.closed:
                raise _unknown(session_id)
            return session
        ref = self.tokens.read(session_id)
        if ref is None:
            raise _unknown(session_id)
        replica = self.replicas.get(ref.replica_tag)
        if replica is None:  # a replica this front end is no longer configured with
            raise _lost(session_id)
        session = StreamSession(session_id, ref.correlation_id, replica, client=client)
        return self._sessions.setdefault(session_id, session) if adopt else session

    async def chunk(self, session_id: str, audio: np.ndarray, client: str = "") -> tuple[StreamSession, StreamChunkOutput, float]:
        """The frames of one chunk from the session's replica, and how long the replica took."""
        session = self.get(session_id, client)
        async with session.lock:
            if session.closed:  # closed while this chunk waited
                raise _unknown(session_id)
            started = time.perf_counter()
            try:
                output = await session.replica.engine.stream_chunk(session.correlation_id, audio, start=False)
            except NotFound:
                await self.forget(session)
                raise NotFound(f"session {session_id} expired on the inference server (or was closed); start a new session") from None
            except ServiceUnavailable:
                if await session.replica.engine.live():
                    raise  # busy or restarting a model: the session is still there, retry
                await self.forget(session)
                raise _lost(session_id) from None
            session.chunks = output.chunk_index
            session.last_used = time.monotonic()
            return session, output, time.perf_counter() - started

    async def close(self, session_id: str) -> StreamSession:
        session = self.get(session_id)
        async with session.lock:  # let an in-flight chunk finish first
            if session.closed:
                raise _unknown(session_id)
            await self.forget(session)
            try:
                await session.replica.engine.end_sequence(session.correlation_id)
            except NotFound:  # closed through another front end, or expired on its replica
                raise _unknown(session_id) from None
            except Exception as exc:  # Triton's idle timeout still frees it; the REST session is gone either way
                log.warning("ending a Triton sequence of a closed session failed: %s", exc)
        return session

    async def forget(self, session: StreamSession) -> None:
        """Drop a session from this front end's view (its sequence is gone, or another front end serves it)."""
        session.closed = True
        async with self._lock:
            if self._sessions.get(session.session_id) is session:
                del self._sessions[session.session_id]

    async def _recheck(self, session: StreamSession, now: float) -> bool:
        """Ask the session's replica (an empty chunk) whether the session is still this front end's: forgotten here
        when it is gone, or when another front end fed it meanwhile (that one holds it now); ended when it has been
        idle for ``idle_timeout_s``. True when it was ended."""
        async with session.lock:
            if session.closed:
                return False
            try:
                probe = await session.replica.engine.stream_chunk(session.correlation_id, np.zeros(0, np.float32), start=False)
            except (NotFound, ServiceUnavailable):  # gone already, or its replica is
                await self.forget(session)
                return False
            if probe.chunk_index != session.chunks:
                await self.forget(session)
                return False
            if now - session.last_used <= self.idle_timeout_s:
                return False
            await self.forget(session)
            try:
                await session.replica.engine.end_sequence(session.correlation_id)
            except Exception as exc:
                log.warning("ending the Triton sequence of an idle session failed: %s", exc)
            return True

    async def expire_idle(self) -> int:
        """Recheck the sessions without a chunk here for ``recheck_after_s``; end those idle for ``idle_timeout_s``."""
        now = time.monotonic()
        quiet = [s for s in list(self._sessions.values()) if not s.lock.locked() and now - s.last_used > self.recheck_after_s]
        expired = sum([await self._recheck(session, now) for session in quiet])
        if expired:
            log.info("expired %d idle streaming sessions", expired)
        return expired

    async def close_all(self) -> None:
        """At shutdown: end every session, unless other front ends can continue them (a shared signing key)."""
        if not self.tokens.ephemeral:
            return
        for session_id in list(self._sessions):
            try:
                await self.close(session_id)
            except NotFound:
                pass

    async def sweep_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.expire_idle()
            except Exception:  # never let the sweeper die
                log.exception("session sweep failed")
