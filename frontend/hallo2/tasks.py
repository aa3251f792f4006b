"""Hallo2 tasks in a real database (SQLAlchemy 2.x), and their files in one folder per task.

Storage
    * one row per task in ``hallo2_tasks`` (any SQLAlchemy URL: the default is an SQLite file; PostgreSQL
      serves several front ends and workers sharing one queue), plus one row in ``hallo2_config`` for the
      inference parameters set by ``POST /api/v1/inference/hallo2/config`` (shared by replicas, kept across
      restarts). The schema is Alembic's (``frontend/hallo2/migrations``), migrated when a store opens;
    * files through :class:`frontend.hallo2.storage.TaskFiles` (a local or shared folder,
      ``<data_dir>/<task_id>/``): ``image.<ext>``, ``audio.<ext>`` (inputs) and ``output.mp4`` (the result),
      each written whole or not at all; a crash leaves at most a ``*.part`` file, which
      :meth:`TaskStore.recover_on_startup` removes.

Concurrency
    The store is synchronous SQLAlchemy run in worker threads (``anyio.to_thread``), so the event loop never
    blocks on the database. Every state change is ONE guarded ``UPDATE ... WHERE status = ...`` (and, for a
    worker's own writes, ``AND claimed_by = <worker>``), so a worker whose task was cancelled or re-queued
    behind its back sees its write refused instead of overwriting the new state.

Claims and leases
    :meth:`TaskStore.claim_next` is one statement, ``UPDATE ... WHERE id = (SELECT id ... WHERE status = 'queued'
    ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) AND status = 'queued' RETURNING ...``: on PostgreSQL
    concurrent claimers skip the rows another transaction holds and each takes a different task; SQLite has no
    row locks, but the statement runs under its single write lock, so the subquery and the update are one atomic
    step there too. Either way a task is claimed exactly once. A claim is a lease: its holder renews
    ``heartbeat_at`` every ``heartbeat_interval_s``, and a task whose heartbeat is older than ``stale_after_s``
    (its worker died) is taken back by any other worker's sweep (:meth:`TaskStore.requeue_stale`) and runs again.

Clocks
    The rows' timestamps (``created_at``, ``updated_at``, ``heartbeat_at``) are the database's clock, computed in SQL
    by :class:`db_now`, and every comparison against them ("heartbeat older than ``stale_after_s``", "finished more
    than ``older_than_s`` ago") is computed in SQL too, by :class:`db_ago`: a worker's own clock decides no lease, so
    workers on machines whose clocks disagree neither take over live tasks nor keep dead ones. Only the text of the
    log lines carries the writing process's clock (:func:`utcnow`).

Watching
    :meth:`TaskStore.watch` follows one task (``GET /api/v1/tasks/{id}/events``): a change written through this
    store wakes its watchers at once; a change written by another process (a worker on another replica) is read
    at the next recheck.

Statuses: ``queued`` → ``processing`` → ``completed`` | ``failed`` | ``cancelled`` (``cancelled`` is the
fifth value, answered by ``DELETE /api/v1/tasks/{id}``; the document lists the other four).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    Integer,
    String,
    Text,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import CompileError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.expression import FunctionElement

from emoserve.hallo2.defaults import HALLO2
from frontend.errors import ServiceUnavailable
from frontend.hallo2 import migrations
from frontend.hallo2.storage import LocalTaskFiles, TaskFiles, write_atomically  # noqa: F401  (write_atomically: re-exported)

log = logging.getLogger(__name__)

QUEUED, PROCESSING, COMPLETED, FAILED, CANCELLED = "queued", "processing", "completed", "failed", "cancelled"
STATUSES = (QUEUED, PROCESSING, COMPLETED, FAILED, CANCELLED)
FINISHED = (COMPLETED, FAILED, CANCELLED)
OUTPUT_NAME = "output.mp4"

T = TypeVar("T")


def utcnow() -> datetime:
    """Naive UTC (what every backend stores the same way); rendered with a ``Z`` by :func:`iso_utc`."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def iso_utc(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.isoformat(timespec="seconds") + "Z"


class db_now(FunctionElement):
    """The database's clock as naive UTC (how the ``DateTime`` columns hold it), in SQL: PostgreSQL's ``now()`` (the
    transaction's start) at UTC; on SQLite ``strftime('%Y-%m-%d %H:%M:%f', 'now')``, UTC text to the millisecond
    (``CURRENT_TIMESTAMP`` has whole seconds only), the same text form as the values SQLAlchemy writes there."""

    type = DateTime()
    inherit_cache = True


class db_ago(FunctionElement):
    """The database's clock ``seconds`` ago, in SQL (compared against a column, the comparison is the database's)."""

    type = DateTime()
    inherit_cache = True

    def __init__(self, seconds: float):
        super().__init__(bindparam(None, float(seconds), type_=Float()))


@compiles(db_now)
def _db_now_default(element, compiler, **kw) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(db_now, "postgresql")
def _db_now_postgresql(element, compiler, **kw) -> str:
    return "timezone('UTC', now())"


@compiles(db_now, "sqlite")
def _db_now_sqlite(element, compiler, **kw) -> str:
    return "strftime('%Y-%m-%d %H:%M:%f', 'now')"


@compiles(db_ago)
def _db_ago_default(element, compiler, **kw) -> str:
    raise CompileError(f"db_ago has no SQL for the {compiler.dialect.name} dialect (SQLite and PostgreSQL only)")


@compiles(db_ago, "postgresql")
def _db_ago_postgresql(element, compiler, **kw) -> str:
    return f"(timezone('UTC', now()) - make_interval(secs => CAST({compiler.process(element.clauses, **kw)} AS DOUBLE PRECISION)))"


@compiles(db_ago, "sqlite")
def _db_ago_sqlite(element, compiler, **kw) -> str:
    # julian days, as SQLite counts them internally (milliseconds); the text compares with the stored values'
    return f"strftime('%Y-%m-%d %H:%M:%f', julianday('now') - ({compiler.process(element.clauses, **kw)}) / 86400.0)"


def log_line(message: str, level: str = "INFO") -> str:
    return f"{iso_utc(utcnow())} [{level}] {message}\n"


class Base(DeclarativeBase):
    pass


class TaskRow(Base):
    __tablename__ = "hallo2_tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)  # ties in created_at break by insertion order
    task_id: Mapped[str] = mapped_column(String(36), unique=True, index=True)
    status: Mapped[str] = mapped_column(String(16), index=True, default=QUEUED)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    status_message: Mapped[str | None] = mapped_column(String(500), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    logs: Mapped[str] = mapped_column(Text, default="")
    use_cache: Mapped[bool] = mapped_column(Boolean, default=True)
    guidance_scale: Mapped[float] = mapped_column(Float)
    inference_steps: Mapped[int] = mapped_column(Integer)
    image_path: Mapped[str] = mapped_column(String(1000))
    audio_path: Mapped[str] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # claims interrupted by a dead process count here


class ConfigRow(Base):
    __tablename__ = "hallo2_config"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    values: Mapped[dict] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


@dataclass(frozen=True)
class InferenceConfig:
    """Parameters applied to tasks created after they are set (each task keeps the values it was created with)."""

    guidance_scale: float = HALLO2.guidance_scale
    inference_steps: int = HALLO2.inference_steps
    enable_cache: bool = HALLO2.enable_cache


@dataclass
class Task:
    """A snapshot of one row."""

    task_id: str
    status: str
    progress: int
    status_message: str | None
    error: str | None
    result: dict | None
    logs: str
    use_cache: bool
    guidance_scale: float
    inference_steps: int
    image_path: str
    audio_path: str
    created_at: datetime
    updated_at: datetime
    claimed_by: str | None = None
    heartbeat_at: datetime | None = None
    attempts: int = 0

    @classmethod
    def of(cls, row: TaskRow) -> Task:
        return cls(**{name: getattr(row, name) for name in cls.__dataclass_fields__})

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def public(self) -> dict[str, Any]:
        """The fields ``GET /api/v1/tasks/{id}`` documents, in its order."""
        return {
            "task_id": self.task_id,
            "status": self.status,
            "progress": self.progress,
            "status_message": self.status_message,
            "result": self.result,
            "error": self.error,
            "created_at": iso_utc(self.created_at),
            "updated_at": iso_utc(self.updated_at),
        }


@dataclass
class RecoveryReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    partial_files_removed: int = 0


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer (several workers/processes)
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(database_url: str) -> Engine:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        database = url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        in_memory = not database or database == ":memory:"
        extra = {"poolclass": StaticPool} if in_memory else {}  # one shared connection: every thread sees the same tables
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **extra)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.get_backend_name() == "postgresql" and url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")  # the driver installed with the front end (psycopg 3)
    return create_engine(url, pool_pre_ping=True)


class TaskNotFound(LookupError):
    pass


class TaskStoreUnavailable(ServiceUnavailable):
    """The task database does not answer (down, unreachable, out of connections): a 503 with Retry-After in the
    route's format. The message names no server and no SQL; the log has the driver's text."""

    default_error_code = "TASK_STORE_UNAVAILABLE"


class TaskStore:
    """Tasks, their logs and files. Every public method is async (the database work runs in a thread)."""

    def __init__(self, database_url: str, data_dir: str | Path, max_attempts: int = HALLO2.max_attempts,
                 defaults: InferenceConfig | None = None, files: TaskFiles | None = None):
        self.database_url = database_url
        self.files = files or LocalTaskFiles(data_dir)
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.max_attempts = max_attempts
        self.defaults = defaults or InferenceConfig()
        self.engine = make_engine(database_url)
        try:
            migrations.upgrade(self.engine)
        except (OperationalError, DBAPIError) as exc:
            self.engine.dispose()
            log.error("the hallo2 task database cannot be opened: %s", exc)
            raise TaskStoreUnavailable("the task database does not answer") from None
        self._watchers: dict[str, set[asyncio.Event]] = {}  # task id -> one event per watcher (event-loop thread only)

    def close(self) -> None:
        self.engine.dispose()

    async def _run(self, function: Callable[..., T], *args, **kwargs) -> T:
        try:
            return await anyio.to_thread.run_sync(partial(function, *args, **kwargs))
        except OperationalError as exc:  # connection-level: the database is down or unreachable, not a bug here
            log.warning("the hallo2 task database does not answer: %s", exc)
            raise TaskStoreUnavailable("the task database does not answer") from None

    async def _change(self, task_id: str, function: Callable[..., bool], *args) -> bool:
        """One guarded state change of ``task_id``; its watchers in this process wake when it was made."""
        changed = await self._run(function, *args)
        if changed:
            self._wake_watchers(task_id)
        return changed

    # -- watching ---------------------------------------------------------------------------------------

    def _wake_watchers(self, task_id: str) -> None:
        for woken in self._watchers.get(task_id, ()):
            woken.set()

    async def watch(self, task_id: str, recheck_s: float) -> AsyncIterator[Task | None]:
        """``task_id`` as it is, then again after each change, until it is finished or gone; ``None`` for a recheck
        that found no change (a caller's chance to keep its connection alive).

        A change written through this store (the embedded worker's progress, a ``DELETE`` here) wakes the watcher at
        once; one written by another process is read at the next recheck, ``recheck_s`` after the last read.
        """
        woken = asyncio.Event()
        self._watchers.setdefault(task_id, set()).add(woken)
        try:
            seen = None
            while True:
                woken.clear()  # before the read: a change during it wakes the wait below
                task = await self.get(task_id)
                if task is None:
                    return
                snapshot = task.public()
                yield task if snapshot != seen else None
                seen = snapshot
                if task.finished:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), recheck_s)
        finally:
            watchers = self._watchers.get(task_id, set())
            watchers.discard(woken)
            if not watchers:
                self._watchers.pop(task_id, None)

    def watching(self) -> int:
        """Watchers following a task now (``GET /api/v1/tasks/{id}/events`` streams of this process)."""
        return sum(len(watchers) for watchers in self._watchers.values())

    def task_dir(self, task_id: str) -> Path:
        return self.data_dir / str(uuid.UUID(task_id))  # a task id is a UUID: nothing else reaches the file system

    def read_input(self, task: Task, which: str) -> bytes:
        """The task's ``image`` or ``audio``, by its file name: a row written on another machine names the same file
        under that machine's mount of the shared folder."""
        return self.files.read(task.task_id, Path(task.image_path if which == "image" else task.audio_path).name)

    # -- creation and reads ---------------------------------------------------------------------------

    def _create(self, image: bytes, image_ext: str, audio: bytes, audio_ext: str, use_cache: bool,
                guidance_scale: float, inference_steps: int, task_id: str | None) -> Task:
        task_id = task_id or str(uuid.uuid4())
        try:  # inputs first: a queued row always has its files
            image_path = self.files.write(task_id, f"image.{image_ext}", image)
            audio_path = self.files.write(task_id, f"audio.{audio_ext}", audio)
            now = db_now()
            row = TaskRow(
                task_id=task_id, status=QUEUED, progress=0, status_message="Task queued", error=None, result=None,
                logs=log_line(f"Task queued (image {len(image)} bytes, audio {len(audio)} bytes, use_cache={use_cache}, "
                              f"guidance_scale={guidance_scale}, inference_steps={inference_steps})"),
                use_cache=use_cache, guidance_scale=guidance_scale, inference_steps=inference_steps,
                image_path=image_path, audio_path=audio_path, created_at=now, updated_at=now, attempts=0,
            )
            with Session(self.engine) as session, session.begin():
                session.add(row)
                session.flush()
                return Task.of(row)
        except BaseException:
            self.files.delete_task(task_id)
            raise

    async def create(self, image: bytes, image_ext: str, audio: bytes, audio_ext: str, *, use_cache: bool = True,
                     guidance_scale: float | None = None, inference_steps: int | None = None, task_id: str | None = None) -> Task:
        guidance_scale = self.defaults.guidance_scale if guidance_scale is None else guidance_scale
        inference_steps = self.defaults.inference_steps if inference_steps is None else inference_steps
        return await self._run(self._create, image, image_ext, audio, audio_ext, use_cache, guidance_scale, inference_steps, task_id)

    def _get(self, task_id: str) -> Task | None:
        with Session(self.engine) as session:
            row = session.scalar(select(TaskRow).where(TaskRow.task_id == task_id))
            return Task.of(row) if row is not None else None

    async def get(self, task_id: str) -> Task | None:
        return await self._run(self._get, task_id)

    def _list(self, status: str | None, limit: int | None, offset: int) -> list[Task]:
        query = select(TaskRow).order_by(TaskRow.created_at, TaskRow.id)
        if status is not None:
            query = query.where(TaskRow.status == status)
        if limit is not None:
            query = query.limit(limit)
        if offset:
            query = query.offset(offset)
        with Session(self.engine) as session:
            return [Task.of(row) for row in session.scalars(query)]

    async def list(self, status: str | None = None, limit: int | None = None, offset: int = 0) -> list[Task]:
        return await self._run(self._list, status, limit, offset)

    def _counts(self) -> dict[str, int]:
        with Session(self.engine) as session:
            found = dict(session.execute(select(TaskRow.status, func.count()).group_by(TaskRow.status)).all())
        return {status: int(found.get(status, 0)) for status in STATUSES}

    async def counts(self) -> dict[str, int]:
        return await self._run(self._counts)

    # -- retention ------------------------------------------------------------------------------------------

    def _expire(self, older_than_s: float, max_bytes: int | None, orphan_after_s: float) -> list[str]:
        """Delete finished tasks (row and files): those finished more than ``older_than_s`` ago, then the oldest
        finished ones while all task folders together exceed ``max_bytes``. Queued and running tasks are never touched.
        Files without a row, older than ``orphan_after_s`` (a process died between writing the inputs and the row),
        go too."""
        old = (TaskRow.updated_at < db_ago(older_than_s)).label("old")  # the database's clock decides
        with Session(self.engine) as session:
            finished = session.execute(select(TaskRow.task_id, old).where(TaskRow.status.in_(FINISHED))
                                       .order_by(TaskRow.updated_at, TaskRow.id)).all()
        expired = [task_id for task_id, is_old in finished if is_old]
        usage = self.files.usage()
        self._remove_orphans(usage, orphan_after_s)
        if max_bytes is not None:
            sizes = {task_id: folder.size_bytes for task_id, folder in usage.items()}
            total = sum(size for name, size in sizes.items() if name not in expired)
            for task_id, _ in finished:
                if total <= max_bytes:
                    break
                if task_id not in expired:
                    expired.append(task_id)
                    total -= sizes.get(task_id, 0)
        if expired:
            with Session(self.engine) as session, session.begin():
                # guarded: a task re-queued in the meantime stays
                session.execute(delete(TaskRow).where(TaskRow.task_id.in_(expired), TaskRow.status.in_(FINISHED)))
            for task_id in expired:
                self.files.delete_task(task_id)
        return expired

    def _remove_orphans(self, usage: dict, orphan_after_s: float) -> None:
        old = [task_id for task_id, folder in usage.items() if folder.modified_at < time.time() - orphan_after_s]
        if not old:
            return
        with Session(self.engine) as session:
            known = set(session.scalars(select(TaskRow.task_id).where(TaskRow.task_id.in_(old))))
        for task_id in old:
            if task_id not in known:
                log.info("hallo2 retention: removing the files of task %s, which has no row", task_id)
                self.files.delete_task(task_id)

    async def expire(self, older_than_s: float, max_bytes: int | None = None, orphan_after_s: float = 3600.0) -> list[str]:
        return await self._run(self._expire, older_than_s, max_bytes, orphan_after_s)

    # -- guarded state changes --------------------------------------------------------------------------

    def _update(self, task_id: str, where: tuple, values: dict, log_message: str | None = None, level: str = "INFO") -> bool:
        values = dict(values, updated_at=db_now())
        if log_message:
            values["logs"] = func.coalesce(TaskRow.logs, "") + log_line(log_message, level)  # appended in SQL, no read-modify-write
        with self.engine.begin() as connection:  # a Core statement: an ORM session costs twice the CPU for one UPDATE
            return connection.execute(update(TaskRow).where(TaskRow.task_id == task_id, *where).values(**values)).rowcount == 1

    def _owned(self, worker_id: str) -> tuple:
        return (TaskRow.status == PROCESSING, TaskRow.claimed_by == worker_id)

    async def append_log(self, task_id: str, message: str, level: str = "INFO") -> bool:
        line = log_line(message, level)
        return await self._run(self._update_logs_only, task_id, line)

    def _update_logs_only(self, task_id: str, line: str) -> bool:
        with self.engine.begin() as connection:
            return connection.execute(update(TaskRow).where(TaskRow.task_id == task_id)
                                      .values(logs=func.coalesce(TaskRow.logs, "") + line)).rowcount == 1

    async def update_progress(self, task_id: str, worker_id: str, progress: int, message: str | None = None, log: bool = True) -> bool:
        """False when the task is no longer this worker's (cancelled, or re-queued): the worker then stops."""
        values: dict[str, Any] = {"progress": max(0, min(100, int(progress))), "heartbeat_at": db_now()}
        if message is not None:
            values["status_message"] = message[:500]
        return await self._change(task_id, self._update, task_id, self._owned(worker_id), values,
                                  message if (log and message) else None)

    def _claim_next(self, worker_id: str) -> Task | None:
        # one statement (see the module's docstring): FOR UPDATE SKIP LOCKED on PostgreSQL, the write lock on SQLite
        # (whose dialect renders no FOR UPDATE); the outer status guard keeps it exact should either ever differ
        oldest = (select(TaskRow.id).where(TaskRow.status == QUEUED).order_by(TaskRow.created_at, TaskRow.id).limit(1)
                  .with_for_update(skip_locked=True).scalar_subquery())
        now = db_now()  # the lease starts on the database's clock
        with Session(self.engine) as session, session.begin():
            claimed = session.execute(
                update(TaskRow).where(TaskRow.id == oldest, TaskRow.status == QUEUED).values(
                    status=PROCESSING, claimed_by=worker_id, heartbeat_at=now, updated_at=now, progress=0,
                    status_message="Processing started", attempts=TaskRow.attempts + 1,
                    logs=func.coalesce(TaskRow.logs, "") + log_line(f"Processing started by worker {worker_id}"),
                ).returning(TaskRow.task_id)
            ).scalar()
        return self._get(claimed) if claimed is not None else None

    async def claim_next(self, worker_id: str) -> Task | None:
        """Atomically take the oldest queued task for ``worker_id`` (None when nothing is queued)."""
        task = await self._run(self._claim_next, worker_id)
        if task is not None:
            self._wake_watchers(task.task_id)
        return task

    def _complete(self, task_id: str, worker_id: str, video: bytes, result: dict) -> bool:
        self.files.write(task_id, OUTPUT_NAME, video)
        # the path inside the task storage, not the server's folder (answers carry no server paths)
        result = dict(result, video_path=f"{uuid.UUID(task_id)}/{OUTPUT_NAME}", video_url=f"/api/v1/tasks/{task_id}/video",
                      size_bytes=len(video))
        done = self._update(task_id, self._owned(worker_id),
                            {"status": COMPLETED, "progress": 100, "status_message": "Task completed", "result": result,
                             "error": None, "claimed_by": None, "heartbeat_at": None},
                            f"Task completed: {len(video)} bytes of video")
        if not done:  # cancelled (or taken away) while the video was being written: nobody will serve it
            self.files.delete(task_id, OUTPUT_NAME)
        return done

    async def complete(self, task_id: str, worker_id: str, video: bytes, result: dict | None = None) -> bool:
        return await self._change(task_id, self._complete, task_id, worker_id, video, result or {})

    async def fail(self, task_id: str, worker_id: str, error: str) -> bool:
        return await self._change(task_id, self._update, task_id, self._owned(worker_id),
                                  {"status": FAILED, "status_message": "Task failed", "error": error[:10000],
                                   "claimed_by": None, "heartbeat_at": None},
                                  f"Task failed: {error}", "ERROR")

    def _cancel(self, task_id: str) -> tuple[bool, Task | None]:
        for _ in range(10):  # the status may change between the read and the guarded write
            task = self._get(task_id)
            if task is None or task.finished:
                return False, task
            message = "Task cancelled" if task.status == QUEUED else "Task cancelled while processing"
            if self._update(task_id, (TaskRow.status == task.status,),
                            {"status": CANCELLED, "status_message": message, "claimed_by": None, "heartbeat_at": None},
                            f"{message} on request"):
                return True, self._get(task_id)
        return False, self._get(task_id)

    async def cancel(self, task_id: str) -> tuple[bool, Task | None]:
        """(cancelled?, the task after): queued and processing tasks become ``cancelled``; finished ones stay."""
        cancelled, task = await self._run(self._cancel, task_id)
        if cancelled:
            self._wake_watchers(task_id)
        return cancelled, task

    async def requeue(self, task_id: str, worker_id: str, reason: str, count_attempt: bool = False) -> bool:
        """Give a task this worker holds back to the queue (graceful shutdown: the attempt does not count)."""
        values: dict[str, Any] = {"status": QUEUED, "progress": 0, "status_message": "Task re-queued", "claimed_by": None,
                                  "heartbeat_at": None}
        if not count_attempt:
            values["attempts"] = TaskRow.attempts - 1
        return await self._change(task_id, self._update, task_id, self._owned(worker_id), values, f"Task re-queued: {reason}",
                                  "WARNING")

    def _requeue_worker(self, worker_id: str, reason: str) -> list[str]:
        with Session(self.engine) as session:
            task_ids = list(session.scalars(select(TaskRow.task_id).where(*self._owned(worker_id))))
        return [task_id for task_id in task_ids
                if self._update(task_id, self._owned(worker_id),
                                {"status": QUEUED, "progress": 0, "status_message": "Task re-queued", "claimed_by": None,
                                 "heartbeat_at": None, "attempts": TaskRow.attempts - 1},
                                f"Task re-queued: {reason}", "WARNING")]

    async def requeue_worker(self, worker_id: str, reason: str) -> list[str]:
        """Every task ``worker_id`` still holds goes back to the queue (its shutdown; attempts not counted)."""
        return await self._run(self._requeue_worker, worker_id, reason)

    def _heartbeat(self, task_ids: list[str], worker_id: str) -> list[str]:
        """Refresh the heartbeats; answer the ids that are no longer this worker's (to be stopped)."""
        lost = []
        now = db_now()  # renewed on the database's clock
        for task_id in task_ids:
            with Session(self.engine) as session, session.begin():
                kept = session.execute(update(TaskRow).where(TaskRow.task_id == task_id, *self._owned(worker_id))
                                       .values(heartbeat_at=now)).rowcount == 1
            if not kept:
                lost.append(task_id)
        return lost

    async def heartbeat(self, task_ids: list[str], worker_id: str) -> list[str]:
        return await self._run(self._heartbeat, list(task_ids), worker_id)

    # -- recovery --------------------------------------------------------------------------------------

    def _requeue_stale(self, stale_after_s: float, exclude_worker: str | None) -> RecoveryReport:
        report = RecoveryReport()
        # silent for stale_after_s by the database's clock (the caller's clock plays no part); the others are alive
        silent_now = or_(TaskRow.heartbeat_at.is_(None), TaskRow.heartbeat_at <= db_ago(stale_after_s))
        query = (select(TaskRow.task_id, TaskRow.attempts, TaskRow.claimed_by, TaskRow.heartbeat_at)
                 .where(TaskRow.status == PROCESSING, silent_now))
        with Session(self.engine) as session:
            rows = session.execute(query).all()
        for task_id, attempts, claimed_by, heartbeat_at in rows:
            if exclude_worker is not None and claimed_by == exclude_worker:
                continue
            # still silent when the update runs: a heartbeat between the read and here keeps the task its worker's
            guard = (TaskRow.status == PROCESSING, TaskRow.claimed_by == claimed_by, silent_now)
            silent = "" if heartbeat_at is None else f" (no heartbeat since {iso_utc(heartbeat_at)})"
            if attempts >= self.max_attempts:
                error = (f"the server processing this task stopped {attempts} times before it finished{silent}; "
                         f"giving up after {self.max_attempts} attempts")
                if self._update(task_id, guard, {"status": FAILED, "status_message": "Task failed", "error": error,
                                                 "claimed_by": None, "heartbeat_at": None}, f"Task failed: {error}", "ERROR"):
                    report.failed.append(task_id)
            elif self._update(task_id, guard, {"status": QUEUED, "progress": 0, "status_message": "Task re-queued",
                                               "claimed_by": None, "heartbeat_at": None},
                              f"Task re-queued: worker {claimed_by} stopped while processing it{silent} "
                              f"(attempt {attempts} of {self.max_attempts})", "WARNING"):
                report.requeued.append(task_id)
        return report

    async def requeue_stale(self, stale_after_s: float, exclude_worker: str | None = None) -> RecoveryReport:
        """Tasks 'processing' without a heartbeat for ``stale_after_s``: their worker died. Re-queued, or
        failed once they have been interrupted ``max_attempts`` times."""
        return await self._run(self._requeue_stale, stale_after_s, exclude_worker)

    async def recover_on_startup(self, stale_after_s: float = 0.0, exclude_worker: str | None = None) -> RecoveryReport:
        """Run when a worker starts: half-written files are removed, and tasks left 'processing' by a dead
        process are re-queued (or failed after ``max_attempts``). ``stale_after_s = 0`` treats every
        processing task and every partial file as orphaned (one worker per database); with several workers pass
        the lease (the heartbeat timeout) so that the live ones' tasks, and the files being written now, are left alone."""
        report = await self.requeue_stale(stale_after_s, exclude_worker)
        report.partial_files_removed = await self._run(self.files.remove_partial, stale_after_s)
        if report.requeued or report.failed or report.partial_files_removed:
            log.warning("hallo2 recovery: re-queued %s, failed %s, removed %d partial files",
                        report.requeued, report.failed, report.partial_files_removed)
        return report

    # -- inference configuration -----------------------------------------------------------------------

    def _get_config(self) -> InferenceConfig:
        with Session(self.engine) as session:
            row = session.get(ConfigRow, 1)
        if row is None:
            return self.defaults
        merged = {**self.defaults.__dict__, **{k: v for k, v in row.values.items() if k in InferenceConfig.__dataclass_fields__}}
        return InferenceConfig(**merged)

    async def get_config(self) -> InferenceConfig:
        return await self._run(self._get_config)

    def _set_config(self, changes: dict) -> InferenceConfig:
        try:
            return self._set_config_once(changes)
        except IntegrityError:  # another replica created the row at the same moment: it is there now, to be locked
            return self._set_config_once(changes)

    def _set_config_once(self, changes: dict) -> InferenceConfig:
        with Session(self.engine) as session, session.begin():
            row = session.get(ConfigRow, 1, with_for_update=True)
            current = dict(row.values) if row is not None else {}
            current.update({k: v for k, v in changes.items() if v is not None})
            if row is None:
                session.add(ConfigRow(id=1, values=current, updated_at=db_now()))
            else:
                row.values = json.loads(json.dumps(current))  # a new object: the JSON column sees the change
                row.updated_at = db_now()
        return self._get_config()

    async def set_config(self, **changes) -> InferenceConfig:
        return await self._run(self._set_config, changes)
