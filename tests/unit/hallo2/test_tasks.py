"""Hallo2 task store (each test twice: SQLite in a temp folder, and a fresh database on a real PostgreSQL) and task
worker, with an INJECTED runner coroutine.

This tests the task manager — queueing, atomic claims, progress, cancellation, recovery, atomic result
files, the concurrency limit — not Triton: the runner here is a plain async function.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from frontend.hallo2 import storage as hallo2_storage
from frontend.hallo2.tasks import (
    CANCELLED,
    COMPLETED,
    FAILED,
    PROCESSING,
    QUEUED,
    TaskRow,
    TaskStore,
    utcnow,
)
from frontend.hallo2.worker import Hallo2Video, TaskInputs, TaskWorker, describe_video

pytestmark = pytest.mark.timeout(60)

IMAGE = b"\x89PNG\r\n\x1a\n" + b"image" * 10
AUDIO = b"RIFF....WAVE" + b"audio" * 10
VIDEO = b"\x00\x00\x00\x18ftypmp42" + b"video" * 1000
# what a runner returns: the MP4 and the pipeline's RESULT_METADATA
OUTPUT = Hallo2Video(VIDEO, {"frames": 30, "fps": 25, "width": 64, "height": 48, "steps": 40, "profile": "tiny"})


_DATABASES: dict[Path, tuple[str, list[TaskStore]]] = {}


@pytest.fixture(autouse=True, params=["sqlite", "postgresql"])
def database(request, tmp_path):
    """The test's database (one per test): every store :func:`make_store` opens for this test shares it."""
    url = f"sqlite:///{tmp_path}/db/tasks.db" if request.param == "sqlite" else request.getfixturevalue("postgres").create_database()
    stores: list[TaskStore] = []
    _DATABASES[tmp_path] = (url, stores)
    yield url
    del _DATABASES[tmp_path]
    for store in stores:
        store.close()


def make_store(tmp_path: Path, max_attempts: int = 3) -> TaskStore:
    url, stores = _DATABASES[tmp_path]
    stores.append(TaskStore(url, tmp_path / "data", max_attempts=max_attempts))
    return stores[-1]


async def create(store: TaskStore, n: int = 1) -> list[str]:
    return [(await store.create(IMAGE, "png", AUDIO, "wav")).task_id for _ in range(n)]


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


async def statuses(store: TaskStore, task_ids: list[str]) -> list[str]:
    return [(await store.get(t)).status for t in task_ids]


def fast_worker(store: TaskStore, runner, max_concurrent_tasks: int = 1, **kwargs) -> TaskWorker:
    # every progress message written (progress_interval_s=0): the tests read them back
    options = {"poll_interval_s": 0.05, "heartbeat_interval_s": 0.1, "stale_after_s": 30.0, "cancel_grace_s": 0.5,
               "progress_interval_s": 0.0}
    options.update(kwargs)
    return TaskWorker(store, runner, max_concurrent_tasks, **options)


# -- the store ------------------------------------------------------------------------------------------

def test_create_stores_inputs_and_claims_oldest_first(tmp_path):
    async def main():
        store = make_store(tmp_path)
        ids = await create(store, 3)
        task = await store.get(ids[0])
        assert task.status == QUEUED and task.progress == 0 and task.result is None
        assert Path(task.image_path).read_bytes() == IMAGE and Path(task.audio_path).read_bytes() == AUDIO
        assert Path(task.image_path).parent == store.task_dir(ids[0])
        assert task.public()["created_at"].endswith("Z") and set(task.public()) == {
            "task_id", "status", "progress", "status_message", "result", "error", "created_at", "updated_at"}
        claimed = [(await store.claim_next("w1")).task_id for _ in range(3)]
        assert claimed == ids
        assert await store.claim_next("w1") is None
        first = await store.get(ids[0])
        assert first.status == PROCESSING and first.claimed_by == "w1" and first.attempts == 1 and first.heartbeat_at is not None
        assert (await store.counts())[PROCESSING] == 3
        assert [t.task_id for t in await store.list()] == ids
    asyncio.run(main())


def test_claims_are_atomic_across_two_stores_and_threads(tmp_path):
    """Two stores on one database file (two replicas), four threads claiming at once: each task is taken once."""
    store_a, store_b = make_store(tmp_path), make_store(tmp_path)
    ids = asyncio.run(create(store_a, 24))
    barrier = threading.Barrier(4)

    def claim_all(store: TaskStore, worker: str) -> list[str]:
        barrier.wait()
        taken = []
        while (task := store._claim_next(worker)) is not None:
            taken.append(task.task_id)
        return taken

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(claim_all, [store_a, store_b, store_a, store_b], ["a1", "b1", "a2", "b2"]))
    taken = [t for r in results for t in r]
    assert sorted(taken) == sorted(ids)  # every task once, none twice
    for worker, mine in zip(["a1", "b1", "a2", "b2"], results):
        for task_id in mine:
            assert store_b._get(task_id).claimed_by == worker


def test_progress_and_logs_only_by_the_owner(tmp_path):
    async def main():
        store = make_store(tmp_path)
        [task_id] = await create(store)
        await store.claim_next("owner")
        assert await store.update_progress(task_id, "owner", 45, "Running inference...")
        assert not await store.update_progress(task_id, "intruder", 90, "nope")
        assert await store.update_progress(task_id, "owner", 250, "clamped")
        await store.append_log(task_id, "a warning", "WARNING")
        task = await store.get(task_id)
        assert task.progress == 100 and task.status_message == "clamped"
        lines = task.logs.splitlines()
        assert "[INFO] Task queued" in lines[0] and "Processing started by worker owner" in lines[1]
        assert "[INFO] Running inference..." in lines[2] and "[WARNING] a warning" in lines[-1]
        assert "nope" not in task.logs
        assert not await store.fail(task_id, "intruder", "x")
        assert await store.fail(task_id, "owner", "boom")
        task = await store.get(task_id)
        assert task.status == FAILED and task.error == "boom" and "[ERROR] Task failed: boom" in task.logs
    asyncio.run(main())


def test_cancel_queued_and_finished(tmp_path):
    async def main():
        store = make_store(tmp_path)
        first, second = await create(store, 2)
        cancelled, task = await store.cancel(first)
        assert cancelled and task.status == CANCELLED and "Task cancelled on request" in task.logs
        assert (await store.claim_next("w")).task_id == second  # a cancelled task is never claimed
        assert await store.claim_next("w") is None
        assert await store.cancel(first) == (False, await store.get(first))  # already cancelled
        assert await store.cancel("00000000-0000-0000-0000-000000000000") == (False, None)
        assert await store.complete(second, "w", VIDEO, {"frames": 3})
        cancelled, task = await store.cancel(second)
        assert not cancelled and task.status == COMPLETED
    asyncio.run(main())


def test_cancel_processing_refuses_the_workers_later_writes(tmp_path):
    async def main():
        store = make_store(tmp_path)
        [task_id] = await create(store)
        await store.claim_next("w")
        cancelled, task = await store.cancel(task_id)
        assert cancelled and task.status == CANCELLED and task.status_message == "Task cancelled while processing"
        assert not await store.update_progress(task_id, "w", 50, "late")
        assert not await store.complete(task_id, "w", VIDEO)
        assert not (store.task_dir(task_id) / "output.mp4").exists()  # its video is not kept
        assert (await store.get(task_id)).status == CANCELLED
    asyncio.run(main())


def test_recover_on_startup_requeues_then_fails_after_max_attempts(tmp_path):
    async def main():
        store = make_store(tmp_path, max_attempts=2)
        [task_id] = await create(store)
        await store.claim_next("dead-process")  # attempt 1 ... and the process dies

        restarted = make_store(tmp_path, max_attempts=2)
        report = await restarted.recover_on_startup()
        assert report.requeued == [task_id] and not report.failed
        task = await restarted.get(task_id)
        assert task.status == QUEUED and task.claimed_by is None and task.progress == 0
        assert "[WARNING] Task re-queued: worker dead-process stopped while processing it" in task.logs

        await restarted.claim_next("dead-again")  # attempt 2 ... dies again
        report = await make_store(tmp_path, max_attempts=2).recover_on_startup()
        assert report.failed == [task_id]
        task = await store.get(task_id)
        assert task.status == FAILED and "stopped 2 times" in task.error and "giving up after 2 attempts" in task.error
    asyncio.run(main())


def test_recovery_leaves_live_tasks_alone(tmp_path):
    """With a heartbeat timeout (several replicas), only silent tasks are re-queued."""
    async def main():
        store = make_store(tmp_path)
        live, silent = await create(store, 2)
        await store.claim_next("alive")
        await store.claim_next("dead")
        with Session(store.engine) as session, session.begin():
            session.execute(update(TaskRow).where(TaskRow.task_id == silent).values(heartbeat_at=utcnow() - timedelta(seconds=120)))
        report = await store.recover_on_startup(stale_after_s=60)
        assert report.requeued == [silent]
        assert (await store.get(live)).status == PROCESSING
    asyncio.run(main())


def test_results_are_never_half_written(tmp_path, monkeypatch):
    async def main():
        store = make_store(tmp_path)
        [task_id] = await create(store)
        await store.claim_next("w")
        output = store.task_dir(task_id) / "output.mp4"

        # a crash in the middle of writing the result (after the bytes went to disk, before the rename)
        def crash(_fd):
            raise KeyboardInterrupt("power cut")
        monkeypatch.setattr(hallo2_storage.os, "fsync", crash)
        with pytest.raises(KeyboardInterrupt):
            await store.complete(task_id, "w", VIDEO)
        monkeypatch.undo()
        assert not output.exists() and not list(output.parent.glob("*.part"))
        assert (await store.get(task_id)).status == PROCESSING  # not completed without its file

        # a process killed mid-write leaves only a temporary file, removed at the next start
        (output.parent / "output.mp4.deadbeef.part").write_bytes(VIDEO[:100])
        report = await make_store(tmp_path).recover_on_startup()
        assert report.partial_files_removed == 1 and not list(output.parent.glob("*.part"))
        assert not output.exists()

        again = (await store.claim_next("w2")).task_id  # the interrupted task, re-queued by the recovery
        assert again == task_id
        assert await store.complete(again, "w2", VIDEO, {"frames": 5})
        task = await store.get(again)
        assert task.status == COMPLETED and task.progress == 100 and task.result["frames"] == 5
        assert (store.data_dir / task.result["video_path"]).read_bytes() == VIDEO and task.result["size_bytes"] == len(VIDEO)
    asyncio.run(main())


def test_config_is_stored_in_the_database(tmp_path):
    async def main():
        store = make_store(tmp_path)
        assert (await store.get_config()).guidance_scale == 3.5
        await store.set_config(guidance_scale=7.5)
        await store.set_config(inference_steps=12, enable_cache=False)
        config = await make_store(tmp_path).get_config()  # another replica / a restart sees it
        assert (config.guidance_scale, config.inference_steps, config.enable_cache) == (7.5, 12, False)
    asyncio.run(main())


# -- the worker -----------------------------------------------------------------------------------------

def test_worker_respects_the_concurrency_limit(tmp_path):
    async def main():
        store = make_store(tmp_path)
        ids = await create(store, 5)
        now, peak, seen = 0, 0, []

        async def runner(inputs: TaskInputs, progress, cancel) -> Hallo2Video:
            nonlocal now, peak
            assert inputs.image == IMAGE and inputs.audio == AUDIO and inputs.inference_steps == 40
            now += 1
            peak = max(peak, now)
            seen.append(inputs.task_id)
            try:
                for step in range(3):
                    await progress(30 * step, f"step {step}")
                    await asyncio.sleep(0.05)
            finally:
                now -= 1
            return OUTPUT

        worker = fast_worker(store, runner, max_concurrent_tasks=2)
        await worker.start()
        try:
            await wait_for(lambda: _all(store, ids, COMPLETED))
        finally:
            await worker.stop()
        assert peak == 2 and worker.peak_running == 2
        # oldest first: the two oldest are claimed first (which of the two runners starts first is the event loop's)
        assert set(seen[:2]) == set(ids[:2])
        task = await store.get(ids[-1])
        assert task.progress == 100 and "step 2" in task.logs and task.result["size_bytes"] == len(VIDEO)
        # the video's description comes from the pipeline's metadata, not from reopening the MP4
        assert {k: task.result[k] for k in ("frames", "fps", "duration", "width", "height")} == {
            "frames": 30, "fps": 25.0, "duration": 1.2, "width": 64, "height": 48}
    asyncio.run(main())


async def _all(store, ids, status):
    return all(s == status for s in await statuses(store, ids))


def test_cancelling_a_running_task_stops_its_runner(tmp_path):
    async def main():
        store = make_store(tmp_path)
        cooperative, stubborn, after = await create(store, 3)
        started, stopped = asyncio.Event(), []

        async def runner(inputs, progress, cancel: asyncio.Event) -> Hallo2Video:
            started.set()
            if inputs.task_id == cooperative:
                await cancel.wait()  # a runner that watches its event stops its Triton work
                stopped.append("cooperative")
                raise asyncio.CancelledError
            if inputs.task_id == stubborn:
                try:
                    await asyncio.sleep(30)  # ignores the event: cancelled after the grace period
                except asyncio.CancelledError:
                    stopped.append("stubborn")
                    raise
            return OUTPUT

        worker = fast_worker(store, runner, cancel_grace_s=0.2)
        await worker.start()
        try:
            for task_id in (cooperative, stubborn):
                started.clear()
                await asyncio.wait_for(started.wait(), 10)
                assert (await store.cancel(task_id))[0]
                assert worker.notify_cancelled(task_id)
            await wait_for(lambda: _all(store, [after], COMPLETED))
        finally:
            await worker.stop()
        assert stopped == ["cooperative", "stubborn"]
        assert await statuses(store, [cooperative, stubborn]) == [CANCELLED, CANCELLED]
        assert "Processing stopped (task cancelled)" in (await store.get(stubborn)).logs
        assert not (store.task_dir(cooperative) / "output.mp4").exists()
    asyncio.run(main())


def test_a_cancel_from_another_replica_reaches_the_runner(tmp_path):
    async def main():
        store = make_store(tmp_path)
        [task_id] = await create(store)
        started, saw_cancel = asyncio.Event(), asyncio.Event()

        async def runner(inputs, progress, cancel) -> Hallo2Video:
            started.set()
            await cancel.wait()
            saw_cancel.set()
            return OUTPUT  # returned after the cancel: discarded

        worker = fast_worker(store, runner)
        await worker.start()
        try:
            await asyncio.wait_for(started.wait(), 10)
            other_replica = make_store(tmp_path)
            assert (await other_replica.cancel(task_id))[0]  # no notify_cancelled: only the database knows
            await asyncio.wait_for(saw_cancel.wait(), 10)  # the heartbeat noticed
            await wait_for(lambda: asyncio.sleep(0, result=not worker.running))
        finally:
            await worker.stop()
        task = await store.get(task_id)
        assert task.status == CANCELLED and task.result is None
    asyncio.run(main())


def test_runner_errors_fail_the_task(tmp_path):
    async def main():
        store = make_store(tmp_path)
        broken, empty = await create(store, 2)

        async def runner(inputs, progress, cancel) -> Hallo2Video:
            if inputs.task_id == broken:
                raise RuntimeError("Triton said no")
            return Hallo2Video(b"", {"frames": 0})

        worker = fast_worker(store, runner)
        await worker.start()
        try:
            await wait_for(lambda: _all(store, [broken, empty], FAILED))
        finally:
            await worker.stop()
        assert (await store.get(broken)).error == "inference failed: Triton said no"
        assert "no video" in (await store.get(empty)).error
    asyncio.run(main())


def test_describe_video_reads_the_result_metadata():
    assert describe_video({"frames": 25, "fps": 25, "width": 64, "height": 64, "seconds": 1.5}) == {
        "frames": 25, "fps": 25.0, "duration": 1.0, "width": 64, "height": 64}
    assert describe_video({"fps": 25}) == {}  # the video is still served; its description is a courtesy


def test_shutdown_requeues_and_a_restart_runs_the_rest(tmp_path):
    async def main():
        store = make_store(tmp_path)
        ids = await create(store, 3)
        first_started = asyncio.Event()

        async def slow(inputs, progress, cancel) -> Hallo2Video:
            first_started.set()
            await asyncio.sleep(30)
            return OUTPUT

        worker = fast_worker(store, slow)
        await worker.start()
        await asyncio.wait_for(first_started.wait(), 10)
        await worker.stop()  # graceful: the running task goes back to the queue
        assert await statuses(store, ids) == [QUEUED] * 3
        first = await store.get(ids[0])
        assert first.attempts == 0 and "Task re-queued: the server shut down while processing it" in first.logs
        store.close()

        done = []

        async def quick(inputs, progress, cancel) -> Hallo2Video:
            done.append(inputs.task_id)
            return OUTPUT

        restarted = make_store(tmp_path)
        await restarted.recover_on_startup()
        worker = fast_worker(restarted, quick)
        await worker.start()
        try:
            await wait_for(lambda: _all(restarted, ids, COMPLETED))
        finally:
            await worker.stop()
        assert done == ids
    asyncio.run(main())


def test_a_crashed_worker_task_runs_again_after_restart(tmp_path):
    async def main():
        store = make_store(tmp_path)
        [task_id] = await create(store)
        await store.claim_next("crashed-pid")  # the process died without stopping its worker
        restarted = make_store(tmp_path)
        await restarted.recover_on_startup()

        async def quick(inputs, progress, cancel) -> Hallo2Video:
            return OUTPUT

        worker = fast_worker(restarted, quick)
        await worker.start()
        try:
            await wait_for(lambda: _all(restarted, [task_id], COMPLETED))
        finally:
            await worker.stop()
        task = await restarted.get(task_id)
        assert task.attempts == 2 and "re-queued" in task.logs
    asyncio.run(main())


# -- bounded storage and logs ----------------------------------------------------------------------------

def _finish(store: TaskStore, task_id: str, status: str, ago_s: float) -> None:
    with Session(store.engine) as session, session.begin():
        session.execute(update(TaskRow).where(TaskRow.task_id == task_id)
                        .values(status=status, updated_at=utcnow() - timedelta(seconds=ago_s)))


def test_finished_tasks_expire_after_their_retention_and_under_the_storage_budget(tmp_path):
    async def main():
        store = make_store(tmp_path)
        old, recent, big_old, big_new, waiting = await create(store, 5)
        _finish(store, old, COMPLETED, ago_s=3600)
        _finish(store, recent, FAILED, ago_s=10)
        _finish(store, big_old, CANCELLED, ago_s=600)
        _finish(store, big_new, COMPLETED, ago_s=300)
        for task_id in (big_old, big_new):
            (store.task_dir(task_id) / "output.mp4").write_bytes(b"\0" * 10_000)
        assert await store.expire(older_than_s=1800) == [old]
        assert not store.task_dir(old).exists() and await store.get(old) is None
        # over a 15 kB budget the oldest finished task goes first, then the next, until the rest fits
        assert await store.expire(older_than_s=1800, max_bytes=15_000) == [big_old]
        assert await store.expire(older_than_s=1800, max_bytes=100) == [big_new, recent]  # the queued task alone is over 100 B
        # a queued task is never removed, whatever the budget
        assert await store.expire(older_than_s=0, max_bytes=0) == []
        assert (await store.get(waiting)).status == QUEUED and store.task_dir(waiting).is_dir()
    asyncio.run(main())


async def logs_of_one_task(tmp_path: Path, runner) -> str:
    """The logs of one task run to its end by ``runner``, progress written at most once a minute per kind."""
    store = make_store(tmp_path)
    worker = fast_worker(store, runner, progress_interval_s=60.0)
    await worker.start()
    try:
        (task_id,) = await create(store)
        worker.wake()
        await wait_for(lambda: _completed(store, task_id))
    finally:
        await worker.stop()
    return (await store.get(task_id)).logs


async def _completed(store: TaskStore, task_id: str) -> bool:
    return (await store.get(task_id)).status == COMPLETED


def test_progress_is_coalesced_per_phase(tmp_path):
    async def runner(inputs, progress, cancel):
        await progress(1, "Preprocessing image...")
        for step in range(50):
            await progress(2 + step, f"clip 1/1 step {step + 1}/50")
        await progress(99, "clip 1/1 decoded")
        return OUTPUT

    logs = asyncio.run(logs_of_one_task(tmp_path, runner))
    assert "Preprocessing image..." in logs and "clip 1/1 step 1/50" in logs and "clip 1/1 decoded" in logs
    assert logs.count("step ") == 1  # 49 steps of the same phase coalesced


def test_progress_of_alternating_kinds_is_coalesced_too(tmp_path):
    """The pipeline's messages alternate between two kinds per clip: within the interval each kind is written once."""
    async def runner(inputs, progress, cancel):
        for clip in range(7):
            for step in range(2):
                await progress(10 + 12 * clip + 5 * step, f"clip {clip + 1}/7 step {step + 1}/2")
            await progress(20 + 12 * clip, f"clip {clip + 1}/7 decoded")
        await progress(100, "done")
        return OUTPUT

    logs = asyncio.run(logs_of_one_task(tmp_path, runner))
    assert logs.count(" step ") == 1 and logs.count(" decoded") == 1 and "clip 1/7 decoded" in logs
    assert "[INFO] done" in logs  # the end is always written


# -- following a task ---------------------------------------------------------------------------------------

def test_a_watch_sends_each_change_and_ends_with_the_finished_task(tmp_path):
    async def main():
        store = make_store(tmp_path)
        [task_id] = await create(store)
        seen: list[tuple[str, int]] = []
        quiet = 0

        async def follow():
            nonlocal quiet
            # a recheck long past the test's timeout: only this store's own changes can wake the watcher in time
            async for task in store.watch(task_id, recheck_s=600):
                if task is None:
                    quiet += 1
                else:
                    seen.append((task.status, task.progress))

        watcher = asyncio.create_task(follow())
        await wait_for(lambda: asyncio.sleep(0, result=seen == [(QUEUED, 0)]))
        assert store.watching() == 1
        await store.claim_next("owner")
        await wait_for(lambda: asyncio.sleep(0, result=len(seen) == 2))
        await store.update_progress(task_id, "owner", 40, "step 1/2")
        await wait_for(lambda: asyncio.sleep(0, result=len(seen) == 3))
        assert not await store.update_progress(task_id, "intruder", 90, "refused")  # no change, no event
        await store.complete(task_id, "owner", VIDEO, {})
        await asyncio.wait_for(watcher, 10)
        assert seen == [(QUEUED, 0), (PROCESSING, 0), (PROCESSING, 40), (COMPLETED, 100)] and quiet == 0
        assert store.watching() == 0

        # a finished task: its status once, then the end
        assert [task.status async for task in store.watch(task_id, recheck_s=600)] == [COMPLETED]
        assert [task async for task in store.watch("00000000-0000-0000-0000-000000000000", recheck_s=600)] == []
    asyncio.run(main())


def test_a_watch_reads_changes_made_by_another_replica_at_its_recheck(tmp_path):
    async def main():
        store, other_replica = make_store(tmp_path), make_store(tmp_path)
        [task_id] = await create(store)
        updates: list[str | None] = []

        async def follow():
            async for task in store.watch(task_id, recheck_s=0.05):
                updates.append(None if task is None else task.status)

        watcher = asyncio.create_task(follow())
        await wait_for(lambda: asyncio.sleep(0, result=None in updates))  # quiet rechecks say so
        assert (await other_replica.cancel(task_id))[0]  # no wake-up in this process: the recheck finds it
        await asyncio.wait_for(watcher, 10)
        assert updates[0] == QUEUED and updates[-1] == CANCELLED and set(updates[1:-1]) == {None}
        assert store.watching() == 0
    asyncio.run(main())


def test_a_closed_watch_leaves_no_watcher(tmp_path):
    async def main():
        store = make_store(tmp_path)
        [task_id] = await create(store)
        watch = store.watch(task_id, recheck_s=600)
        assert (await anext(watch)).status == QUEUED
        follower = asyncio.create_task(anext(watch))  # waiting for a change, as a stream to a client does
        await asyncio.sleep(0.05)
        assert store.watching() == 1
        follower.cancel()  # the client went away
        with pytest.raises(asyncio.CancelledError):
            await follower
        await watch.aclose()
        assert store.watching() == 0
    asyncio.run(main())
