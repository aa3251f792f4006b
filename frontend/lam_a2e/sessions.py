"""Streaming sessions: a REST session id ↔ one Triton sequence (correlation id).

The Triton sequence starts with the session's first chunk (START) and ends on close or idle expiry
(END with an empty chunk), which frees the model's per-sequence context. Chunks of one session are
serialised by its own lock, so they reach Triton in order.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from frontend.errors import NotFound, ServiceUnavailable, TooManyRequests

log = logging.getLogger(__name__)


@dataclass
class StreamSession:
    session_id: str
    correlation_id: int
    id_idx: int
    seed: int
    movement_smooth: bool = True
    brow_movement: bool = False
    started: bool = False
    chunks: int = 0
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False
    client: str = ""  # frontend.deps.client_key of who opened it


EndSequence = Callable[[StreamSession], Awaitable[None]]


class SessionRegistry:
    def __init__(self, max_sessions: int, idle_timeout_s: float, end_sequence: EndSequence, max_per_client: int | None = None):
        self.max_sessions = max_sessions
        self.max_per_client = max_per_client or max_sessions
        self.idle_timeout_s = idle_timeout_s
        self._end_sequence = end_sequence
        self._sessions: dict[str, StreamSession] = {}
        self._lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    async def create(self, id_idx: int, movement_smooth: bool = True, brow_movement: bool = False, client: str = "") -> StreamSession:
        async with self._lock:
            if len(self._sessions) >= self.max_sessions:
                raise ServiceUnavailable(f"too many streaming sessions ({self.max_sessions}); close one or retry later")
            if sum(1 for s in self._sessions.values() if s.client == client) >= self.max_per_client:
                raise TooManyRequests(f"this client already has {self.max_per_client} streaming sessions open; close one first")
            # 63-bit random ids: no collision with another front-end replica or an earlier run's sequences
            correlation_id = secrets.randbits(63) or 1
            session = StreamSession(str(uuid.uuid4()), correlation_id, id_idx, correlation_id, movement_smooth, brow_movement,
                                    client=client)
            self._sessions[session.session_id] = session
            return session

    def get(self, session_id: str) -> StreamSession:
        session = self._sessions.get(session_id)
        if session is None or session.closed:
            raise NotFound(f"session {session_id} does not exist (never created, closed, or expired)")
        return session

    async def close(self, session_id: str) -> StreamSession:
        session = self.get(session_id)
        async with session.lock:  # let an in-flight chunk finish first
            if session.closed:
                raise NotFound(f"session {session_id} does not exist (never created, closed, or expired)")
            session.closed = True
            async with self._lock:
                self._sessions.pop(session_id, None)
            if session.started:
                try:
                    await self._end_sequence(session)
                except Exception as exc:  # Triton's idle timeout still frees it; the REST session is gone either way
                    log.warning("ending Triton sequence of session %s failed: %s", session_id, exc)
        return session

    async def forget(self, session: StreamSession) -> None:
        """Drop a session whose Triton sequence is already gone (e.g. Triton's idle timeout ended it)."""
        session.closed = True
        async with self._lock:
            self._sessions.pop(session.session_id, None)

    async def expire_idle(self) -> list[str]:
        now = time.monotonic()
        idle = [s.session_id for s in list(self._sessions.values()) if not s.lock.locked() and now - s.last_used > self.idle_timeout_s]
        expired = []
        for session_id in idle:
            try:
                await self.close(session_id)
                expired.append(session_id)
            except NotFound:
                pass
        if expired:
            log.info("expired %d idle streaming sessions", len(expired))
        return expired

    async def close_all(self) -> None:
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
