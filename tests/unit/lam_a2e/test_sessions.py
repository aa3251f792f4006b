"""The REST session registry's bounds: all sessions of the front end, and each client's share of them."""

from __future__ import annotations

import asyncio

import pytest

from frontend.errors import ServiceUnavailable, TooManyRequests
from frontend.lam_a2e.sessions import SessionRegistry


async def _ended(session) -> None:
    return None


def test_one_client_cannot_take_every_session():
    async def main():
        registry = SessionRegistry(max_sessions=5, idle_timeout_s=60, end_sequence=_ended, max_per_client=2)
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
