"""The task store across processes and databases: exact claims by concurrent processes on PostgreSQL, the SQL each
claim sends, the migrations (the schema they build is the models', a database from before them keeps its tasks),
and a dead worker's lease taken over by another worker."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, select
from sqlalchemy.dialects import postgresql

from frontend.hallo2 import migrations
from frontend.hallo2.tasks import COMPLETED, QUEUED, Base, TaskRow, TaskStore
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
