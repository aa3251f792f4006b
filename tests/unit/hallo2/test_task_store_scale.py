"""The task store across processes and databases: exact claims by concurrent processes on PostgreSQL, the SQL each
claim sends, the migrations (the schema they build is the models', a database from before them keeps its tasks),
a dead worker's lease taken over by another worker, and leases on the database's clock (not the workers')."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from frontend.hallo2 import migrations
from frontend.hallo2 import tasks as hallo2_tasks
from frontend.hallo2.tasks import COMPLETED, PROCESSING, QUEUED, Base, TaskRow, TaskStore, utcnow
from tests.unit.hallo2.test_tasks import _DATABASES, OUTPUT, create, database, fast_worker, make_store, wait_for  # noqa: F401  (database: the fixture, SQLite and PostgreSQL)

pytestmark = pytest.mark.timeout(120)


def _claim_all(url: str, data_dir: str, worker: str, start, results) -> None:
    store = TaskStore(url, data_dir)
    start.wait()
    taken = []
    while (task := store._claim_next(worker)) is not None:
        taken.append(task.task_id)
    results.put((worker, taken))
    store.close()


def test_concurrent_processes_claim_each_task_exactly_once(tmp_path):
    store = make_store(tmp_path)
    ids = asyncio.run(create(store, 60))
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    workers = [context.Process(target=_claim_all, args=(_DATABASES[tmp_path][0], str(tmp_path / "data"), f"p{i}", start, results))
               for i in range(4)]
    for process in workers:
        process.start()
    start.set()
    taken = dict(results.get(timeout=90) for _ in workers)
    for process in workers:
        process.join(timeout=30)
    claimed = [task_id for mine in taken.values() for task_id in mine]
    assert sorted(claimed) == sorted(ids)  # each once, none twice
    for worker, mine in taken.items():
        for task_id in mine:
            task = store._get(task_id)
            assert task.claimed_by == worker and task.attempts == 1 and task.logs.count("Processing started") == 1


def test_a_claim_skips_rows_other_claimers_hold_on_postgresql():
    oldest = select(TaskRow.id).where(TaskRow.status == QUEUED).limit(1).with_for_update(skip_locked=True)
    assert "FOR UPDATE SKIP LOCKED" in str(oldest.compile(dialect=postgresql.dialect()))


def test_the_migrations_build_exactly_the_models_schema(tmp_path):
    store = make_store(tmp_path)
    assert migrations.current(store.engine) == migrations.head()
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": migrations.VERSION_TABLE})
        assert compare_metadata(context, Base.metadata) == []
    assert migrations.upgrade(store.engine) == migrations.head()  # again: nothing to do


def test_a_database_from_before_migrations_keeps_working(tmp_path):
    path = tmp_path / "old.db"
    engine = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)  # how every store made its tables before
    engine.dispose()
    old = TaskStore(f"sqlite:///{path}", tmp_path / "data")
    with old.engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE hallo2_alembic_version")
    [task_id] = asyncio.run(create(old, 1))
    old.close()
    store = TaskStore(f"sqlite:///{path}", tmp_path / "data")  # stamped at 0001, upgraded to the head
    try:
        assert migrations.current(store.engine) == migrations.head()
        assert asyncio.run(store.get(task_id)).status == QUEUED
    finally:
        store.close()
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT count(*) FROM hallo2_tasks").fetchone() == (1,)


def test_a_dead_workers_task_runs_on_another_worker_after_its_lease(tmp_path):
    async def main():
        store = make_store(tmp_path)
        [task_id] = await create(store)
        await store.claim_next("killed-worker")  # it never heartbeats again

        async def quick(inputs, progress, cancel):
            return OUTPUT

        survivor = fast_worker(make_store(tmp_path), quick, heartbeat_interval_s=0.1, stale_after_s=0.5)
        await survivor.start()
        try:
            await wait_for(lambda: _status_is(store, task_id, COMPLETED), timeout=20)
        finally:
            await survivor.stop()
        task = await store.get(task_id)
        assert task.attempts == 2 and "worker killed-worker stopped while processing it" in task.logs
        assert f"Processing started by worker {survivor.worker_id}" in task.logs
        assert Path(store.data_dir / task.result["video_path"]).is_file()
    asyncio.run(main())


async def _status_is(store, task_id, status):
    return (await store.get(task_id)).status == status


@pytest.mark.parametrize("claimer_skew_h, sweeper_skew_h", [(-24, 24), (24, -24)])
def test_leases_follow_the_databases_clock_not_the_workers(tmp_path, monkeypatch, claimer_skew_h, sweeper_skew_h):
    """A worker whose clock is a day off claims and renews; another, a day off the other way, sweeps: the live
    task stays with its worker and the really silent one is re-claimed. Before, with each worker's clock deciding,
    the sweeper ahead took over the live task, and the one behind left the dead worker's task alone."""
    real_now = utcnow()

    def clock(skew_h):
        monkeypatch.setattr(hallo2_tasks, "utcnow", lambda: utcnow() + timedelta(hours=skew_h))

    async def main():
        claimer, sweeper = make_store(tmp_path), make_store(tmp_path)
        live, dead = await create(claimer, 2)
        clock(claimer_skew_h)
        assert (await claimer.claim_next("alive")).task_id == live
        assert (await claimer.claim_next("killed")).task_id == dead
        assert await claimer.heartbeat([live], "alive") == []
        assert await claimer.update_progress(live, "alive", 10, "working")
        with Session(claimer.engine) as session, session.begin():  # the dead worker's last heartbeat, 2 minutes ago
            session.execute(update(TaskRow).where(TaskRow.task_id == dead).values(heartbeat_at=real_now - timedelta(seconds=120)))
        for task_id in (live, dead):  # stored on the database's clock, whatever the claimer's says
            assert abs((await sweeper.get(task_id)).updated_at - real_now) < timedelta(minutes=5)
        clock(sweeper_skew_h)
        report = await sweeper.requeue_stale(stale_after_s=60, exclude_worker="sweeper")
        assert report.requeued == [dead] and report.failed == []
        task = await sweeper.get(live)
        assert task.status == PROCESSING and task.claimed_by == "alive"
        assert abs(task.heartbeat_at - real_now) < timedelta(minutes=5)
        assert (await sweeper.get(dead)).status == QUEUED
        assert (await sweeper.claim_next("sweeper")).task_id == dead  # re-claimed
        assert await claimer.heartbeat([live], "alive") == []  # and the live worker still holds its own
    asyncio.run(main())
