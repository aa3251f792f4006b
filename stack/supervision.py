"""What keeps a bundled tritonserver owned by the stack that started it (Linux ``/proc``, no extra packages).

Triton 2.51 never restarts a dead python-backend stub, a ``kill -9`` of tritonserver leaves its stubs and their
``/dev/shm`` regions behind, and a second server on busy ports loads every model before it fails to bind while the
other server keeps answering health probes. Hence:

* the server dies with its launcher (parent-death signal) and lives in its own process group, so one ``killpg``
  also takes the stubs it forked;
* a port held by anyone else is a start-up error naming the holder, and after start-up the HTTP port must be held
  by the process the stack started;
* shared-memory regions and stubs left by a launcher that is gone are removed before a new server starts;
* :class:`TritonSupervisor` restarts a server that exits on its own, with bounded backoff.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

SHM_PREFIX_ROOT = "emoserve_"
_PR_SET_PDEATHSIG = 1
_TCP_LISTEN = "0A"
_STALE_PREFIX = re.compile(rf"{SHM_PREFIX_ROOT}(\d+)_")


def die_with_parent() -> None:
    """``preexec_fn``: SIGKILL this child when the thread that started it dies (the launcher's main thread)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == _TCP_LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes


def port_owner(port: int) -> tuple[int, str] | None:
    """(pid, command name) of the process listening on ``port``; ``(0, "unknown")`` when it cannot be seen."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in targets:
                    return int(proc.name), (proc / "comm").read_text().strip()
        except OSError:  # the process ended, or is not ours to inspect
            continue
    return 0, "unknown"


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def describe_holder(port: int) -> str:
    owner = port_owner(port)
    if owner is None or owner[0] == 0:
        return "another process"
    return f"pid {owner[0]} ({owner[1]})"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_leftovers() -> tuple[list[str], list[int]]:
    """Remove the shm regions and kill the stubs of servers whose launcher (the pid in the prefix) is gone.

    Returns (regions removed, pids killed)."""
    regions = []
    for region in Path("/dev/shm").glob(f"{SHM_PREFIX_ROOT}*"):
        match = _STALE_PREFIX.match(region.name)
        if match and not _alive(int(match.group(1))):
            region.unlink(missing_ok=True)
            regions.append(region.name)
    killed = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for arg in argv:
            match = _STALE_PREFIX.search(arg.decode(errors="replace"))
            if match and not _alive(int(match.group(1))):
                try:
                    os.kill(int(proc.name), signal.SIGKILL)
                    killed.append(int(proc.name))
                except ProcessLookupError:
                    pass
                break
    if regions or killed:
        log.warning("removed %d shared-memory regions and killed %d processes left by a dead launcher", len(regions), len(killed))
    return regions, killed


def process_group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    members = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(proc.name))
    return members


def end_process_group(pgid: int, grace_s: float = 0.0) -> None:
    """Give a group's processes ``grace_s`` to exit on their own, then SIGKILL what is left."""
    deadline = time.monotonic() + grace_s
    while process_group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class TritonSupervisor:
    """Keeps a :class:`~stack.triton_server.TritonServer` serving.

    * A server that exits on its own is restarted (``server.restart()``), waiting 1, 2, 4 … up to ``max_backoff_s``
      between tries; the wait resets once a server has stayed up for ``stable_after_s``.
    * A model whose python-backend stubs died (Triton 2.51 never restarts them and keeps reporting the model ready)
      is reloaded through the model-control API; if the reload fails the whole server is restarted.
    """

    def __init__(self, server, *, poll_s: float = 0.5, max_backoff_s: float = 30.0, stable_after_s: float = 60.0,
                 expected_stubs: dict[str, int] | None = None):
        self.server = server
        self.poll_s, self.max_backoff_s, self.stable_after_s = poll_s, max_backoff_s, stable_after_s
        self.restarts = 0
        self.reloads_by_model: dict[str, int] = {}
        # python-backend processes per model of a healthy server (default: what it runs now)
        self._expected_stubs = expected_stubs if expected_stubs is not None else server.stubs_by_model()
        self._stop = threading.Event()
        self._stop_server = False
        self._thread = threading.Thread(target=self._watch, name="triton-supervisor", daemon=True)

    @property
    def model_reloads(self) -> int:
        return sum(self.reloads_by_model.values())

    def collect(self):
        """prometheus_client collector protocol: the supervisor's recoveries, on the front end's ``/metrics``."""
        from prometheus_client.core import CounterMetricFamily

        reloads = CounterMetricFamily("emoserve_model_recoveries", "models reloaded after their python-backend process died",
                                      labels=["model"])
        for model, count in sorted(self.reloads_by_model.items()):
            reloads.add_metric([model], count)
        yield reloads
        yield CounterMetricFamily("emoserve_triton_restarts", "tritonserver restarts by the stack's supervisor", value=self.restarts)

    def start(self) -> TritonSupervisor:
        self._thread.start()
        return self

    def stop(self, stop_server: bool = False) -> None:
        """Stop supervising; ``stop_server`` also stops the server, from the supervisor's own thread: a server that
        thread restarted gets its parent-death signal when the thread ends, which would kill it before an orderly stop."""
        self._stop_server = stop_server
        self._stop.set()
        self._thread.join(timeout=90)

    def _watch(self) -> None:
        try:
            self._supervise()
        finally:
            if self._stop_server:
                self.server.stop()

    def _supervise(self) -> None:
        backoff, up_since = 1.0, time.monotonic()
        while not self._stop.wait(self.poll_s):
            process = self.server.process
            self.server.bound_log()
            if process is not None and process.poll() is None:
                if time.monotonic() - up_since > self.stable_after_s:
                    backoff = 1.0
                if self._reload_models_with_dead_stubs():
                    continue
                log.error("reloading a model did not help: restarting tritonserver in %.0fs", backoff)
                self.server.stop()
            elif process is not None:
                log.error("tritonserver (pid %d) exited with code %s; restarting in %.0fs\n%s",
                          process.pid, process.returncode, backoff, self.server.log_tail(20))
            if self._stop.wait(backoff):
                return
            try:
                self.server.restart()
            except Exception as exc:  # the next round tries again, later
                log.error("tritonserver restart failed: %s", exc)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            self.restarts += 1
            self._expected_stubs = self.server.stubs_by_model()
            up_since = time.monotonic()
            backoff = min(backoff * 2, self.max_backoff_s)

    def _reload_models_with_dead_stubs(self) -> bool:
        """Reload each model with fewer live stubs than it started with; False when a reload failed."""
        live = self.server.stubs_by_model()
        for model, expected in self._expected_stubs.items():
            if live.get(model, 0) >= expected or self._stop.is_set():
                continue
            log.error("model %s has %d of its %d python-backend processes: reloading it", model, live.get(model, 0), expected)
            try:
                self.server.reload_model(model)
            except Exception as exc:
                log.error("reloading %s failed: %s", model, exc)
                return False
            self.reloads_by_model[model] = self.reloads_by_model.get(model, 0) + 1
            if self.server.stubs_by_model().get(model, 0) < expected:
                log.error("%s still lacks python-backend processes after its reload", model)
                return False
        return True
