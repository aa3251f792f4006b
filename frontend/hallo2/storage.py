"""Where a Hallo2 task's files live: one small interface, :class:`TaskFiles`, and its folder implementation.

Every front end and worker that shares a task database must reach the same files: on one machine that is a local
folder, on Kubernetes a ReadWriteMany volume mounted at the same path in every pod (:class:`LocalTaskFiles` covers
both). An object store can implement the same methods later; nothing outside this module touches the folder.

Files are addressed by (task id, name), never by a path a client gave: a task id is a UUID, a name is one of the
store's own (``image.png``, ``audio.wav``, ``output.mp4``).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

PARTIAL_SUFFIX = ".part"
_WRITE_BLOCK = 1 << 20


@dataclass(frozen=True)
class FolderUsage:
    """One task's files together: their bytes, and when the newest of them was written (epoch seconds)."""

    size_bytes: int
    modified_at: float


class TaskFiles(Protocol):
    def write(self, task_id: str, name: str, data: bytes) -> str:
        """Store ``data`` whole or not at all; answer where it lies (what the task row keeps)."""

    def read(self, task_id: str, name: str) -> bytes: ...

    def exists(self, task_id: str, name: str) -> bool: ...

    def local_path(self, task_id: str, name: str) -> Path | None:
        """A file the front end can send as it is, or None when this backend keeps none (then :meth:`read`)."""

    def delete(self, task_id: str, name: str) -> None: ...

    def delete_task(self, task_id: str) -> None: ...

    def usage(self) -> dict[str, FolderUsage]:
        """Every task that has files, by task id (the retention sweep's budget and its orphans)."""

    def remove_partial(self, older_than_s: float) -> int:
        """Remove writes a dead process left half-done, older than ``older_than_s`` (0: all of them); their count."""


def write_atomically(path: Path, data: bytes) -> None:
    """``data`` appears at ``path`` whole or not at all (temporary name in the same folder, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial_path = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")
    try:
        with open(partial_path, "wb") as handle:
            view = memoryview(data)
            handle.writelines(view[offset:offset + _WRITE_BLOCK] for offset in range(0, len(view), _WRITE_BLOCK))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial_path, path)
    except BaseException:
        partial_path.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError:
        pass


class LocalTaskFiles:
    """``<root>/<task_id>/<name>``: a local folder, or a shared one (NFS, a ReadWriteMany volume) mounted by every
    process at the same path."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def task_dir(self, task_id: str) -> Path:
        return self.root / str(uuid.UUID(task_id))  # a task id is a UUID: nothing else reaches the file system

    def path(self, task_id: str, name: str) -> Path:
        if Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"not a task file name: {name!r}")
        return self.task_dir(task_id) / name

    def write(self, task_id: str, name: str, data: bytes) -> str:
        path = self.path(task_id, name)
        write_atomically(path, data)
        return str(path)

    def read(self, task_id: str, name: str) -> bytes:
        return self.path(task_id, name).read_bytes()

    def exists(self, task_id: str, name: str) -> bool:
        return self.path(task_id, name).is_file()

    def local_path(self, task_id: str, name: str) -> Path | None:
        path = self.path(task_id, name)
        return path if path.is_file() else None

    def delete(self, task_id: str, name: str) -> None:
        self.path(task_id, name).unlink(missing_ok=True)

    def delete_task(self, task_id: str) -> None:
        shutil.rmtree(self.task_dir(task_id), ignore_errors=True)

    def usage(self) -> dict[str, FolderUsage]:
        found = {}
        for folder in self.root.iterdir():
            if not folder.is_dir():
                continue
            try:
                files = [f.stat() for f in folder.rglob("*") if f.is_file()]
                modified = max([s.st_mtime for s in files], default=folder.stat().st_mtime)
            except OSError:  # removed meanwhile by another process's sweep
                continue
            found[folder.name] = FolderUsage(sum(s.st_size for s in files), modified)
        return found

    def remove_partial(self, older_than_s: float) -> int:
        # another process may be writing one right now (a shared folder): only those older than its longest write go
        cutoff = time.time() - older_than_s
        removed = 0
        for partial_file in self.root.glob(f"*/*{PARTIAL_SUFFIX}"):
            try:
                if older_than_s <= 0 or partial_file.stat().st_mtime < cutoff:
                    partial_file.unlink(missing_ok=True)
                    removed += 1
            except OSError:
                continue
        return removed
