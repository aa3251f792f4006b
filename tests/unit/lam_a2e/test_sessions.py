"""The REST session registry: its bounds (all sessions of the front end, each client's share), signed session ids,
sessions adopted by another front end, the least-loaded replica, and a replica that is gone."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from frontend.errors import NotFound, ServiceUnavailable, TooManyRequests
from frontend.lam_a2e.engine import Replica, StreamChunkOutput
from frontend.lam_a2e.sessions import SessionRegistry
from frontend.lam_a2e.tokens import SessionTokens


class FakeReplica:
    """A Triton replica's sequences: correlation id -> chunks seen."""

    def __init__(self):
        self.sequences: dict[int, int] = {}
        self.up = True

    async def ready(self) -> bool:
        return self.up

    async def live(self) -> bool:
        return self.up

    async def start_sequence(self, correlation_id, id_idx, movement_smooth, brow_movement, seed) -> None:
        if not self.up:
            raise ServiceUnavailable("the inference server is unavailable")
        self.sequences[correlation_id] = 0

    async def stream_chunk(self, correlation_id, audio, *, start, end=False, **_) -> StreamChunkOutput:
        if not self.up:
            raise ServiceUnavailable("the inference server is unavailable")
        if correlation_id not in self.sequences:
            raise NotFound(f"sequence {correlation_id} is not active")
        self.sequences[correlation_id] += int(audio.size > 0)
        chunks = self.sequences[correlation_id]
        if end:
            del self.sequences[correlation_id]
        return StreamChunkOutput(np.zeros((0, 52), np.float32), 0, chunks)

    async def end_sequence(self, correlation_id) -> None:
        await self.stream_chunk(correlation_id, np.zeros(0, np.float32), start=False, end=True)


def _registry(tokens: SessionTokens, engines, **limits) -> SessionRegistry:
    replicas = [Replica(tokens.replica_tag(f"triton-{i}:8001"), engine) for i, engine in enumerate(engines)]
    return SessionRegistry(replicas, tokens, limits.get("max_sessions", 100), limits.get("idle_timeout_s", 60),
                           limits.get("max_per_client"))


AUDIO = np.ones(16000, np.float32)


def test_one_client_cannot_take_every_session():
    async def main():
        registry = _registry(SessionTokens(), [FakeReplica()], max_sessions=5, max_per_client=2)
        mine = [await registry.create(0, client="key:a") for _ in range(2)]
        with pytest.raises(TooManyRequests, match="already has 2 streaming sessions"):
            await registry.create(0, client="key:a")
        others = [await registry.create(0, client=f"address:10.0.0.{i}") for i in range(3)]
        with pytest.raises(ServiceUnavailable, match="too many streaming sessions"):
            await registry.create(0, client="key:b")
        await registry.close(mine[0].session_id)  # a closed session frees its client's share and the total
        assert (await registry.create(0, client="key:a")).client == "key:a"
        assert len(registry) == 5 and len(others) == 3
    asyncio.run(main())


def test_a_forged_or_altered_session_id_is_404():
    async def main():
        tokens = SessionTokens(b"k" * 32)
        registry = _registry(tokens, [FakeReplica()])
        session = await registry.create(0)
        sid = session.session_id
        flipped = sid[:10] + ("A" if sid[10] != "A" else "B") + sid[11:]
        other_key = SessionTokens(b"x" * 32).issue(session.replica.tag, session.correlation_id)
        for bad in (flipped, other_key, sid[:-2], sid + "AA", "nope", "00000000-0000-0000-0000-000000000000", "é" * 40):
            with pytest.raises(NotFound, match="does not exist"):
                await registry.chunk(bad, AUDIO)
        assert (await registry.chunk(sid, AUDIO))[1].chunk_index == 1
        # ids name no address; every id is unique
        assert b"triton" not in sid.encode() and tokens.issue(session.replica.tag, 1) != tokens.issue(session.replica.tag, 1)
    asyncio.run(main())


def test_another_front_end_continues_a_session_and_idle_expiry_leaves_it_alone():
    async def main():
        key, replicas = b"shared" * 6, [FakeReplica(), FakeReplica()]
        first, second = _registry(SessionTokens(key), replicas, idle_timeout_s=0.0), _registry(SessionTokens(key), replicas)
        session = await first.create(0)
        assert (await first.chunk(session.session_id, AUDIO))[1].chunk_index == 1
        assert (await second.chunk(session.session_id, AUDIO))[1].chunk_index == 2  # adopted from its id
        assert len(second) == 1
        # idle in the first front end's view, but fed through the second: forgotten there, not ended
        assert await first.expire_idle() == 0 and len(first) == 0
        assert (await second.chunk(session.session_id, AUDIO))[1].chunk_index == 3
        await second.close(session.session_id)
        with pytest.raises(NotFound):
            await first.close(session.session_id)
        # a session nobody fed since: ended by its front end's sweep
        idle = await first.create(0)
        assert await first.expire_idle() == 1
        with pytest.raises(NotFound, match="expired on the inference server"):
            await second.chunk(idle.session_id, AUDIO)
    asyncio.run(main())


def test_new_sessions_go_to_the_least_loaded_live_replica_and_a_gone_replica_loses_its_sessions():
    async def main():
        a, b = FakeReplica(), FakeReplica()
        registry = _registry(SessionTokens(), [a, b])
        sessions = [await registry.create(0) for _ in range(4)]
        assert len(a.sequences) == len(b.sequences) == 2
        on_a = next(s for s in sessions if s.replica.engine is a)
        a.up = False  # killed: its sequences are gone with it
        with pytest.raises(NotFound, match="start a new session"):
            await registry.chunk(on_a.session_id, AUDIO)
        fresh = [await registry.create(0) for _ in range(3)]
        assert all(s.replica.engine is b for s in fresh)
        b.up = False
        with pytest.raises(ServiceUnavailable):
            await registry.create(0)
    asyncio.run(main())


def test_front_ends_that_each_see_no_load_spread_their_sessions_over_the_replicas():
    """Each front end counts only its own sessions; with every count equal the session's random id picks the place
    to start from, so independent front ends do not all open on the first replica."""
    async def main():
        key, replicas = b"shared" * 6, [FakeReplica(), FakeReplica(), FakeReplica()]
        for _ in range(60):  # 60 front ends, one session each
            await _registry(SessionTokens(key), replicas).create(0)
        counts = [len(replica.sequences) for replica in replicas]
        assert sum(counts) == 60 and min(counts) >= 5, counts  # ~20 each; fewer than 5 about 3 times in 10^5 runs
    asyncio.run(main())


def test_a_session_closed_through_another_front_end_leaves_the_opener_on_its_next_recheck():
    async def main():
        key, replicas = b"shared" * 6, [FakeReplica(), FakeReplica()]
        first = _registry(SessionTokens(key), replicas, idle_timeout_s=300)
        first.recheck_after_s = 0.0
        second = _registry(SessionTokens(key), replicas)
        session = await first.create(0)
        await first.chunk(session.session_id, AUDIO)
        await second.close(session.session_id)
        assert len(first) == 1 and first.load(session.replica) == 1  # the opener cannot know yet
        assert await first.expire_idle() == 0  # rechecked: gone on its replica
        assert len(first) == 0 and first.load(session.replica) == 0
        kept = await first.create(0)
        await first.chunk(kept.session_id, AUDIO)
        assert await first.expire_idle() == 0 and len(first) == 1  # quiet, unchanged, not idle yet: kept
    asyncio.run(main())
