"""``python -m stack.watchdog PGID SHM_PREFIX``: ends a tritonserver's process group once its launcher is gone.

The server itself dies with its launcher (parent-death signal), but the python-backend stubs it forked do not:
a stub in the middle of a request keeps running, and its shared memory stays. The launcher starts this
watchdog with a pipe on its standard input and never writes to it; when the launcher exits, however it exits
(``kill -9`` included), the kernel closes the pipe, the read returns, and the watchdog kills the group and
removes the group's ``/dev/shm`` regions. A launcher that stops its server itself closes the pipe afterwards,
and the watchdog finds nothing left to do.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def end_group(pgid: int, shm_prefix: str) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for region in Path("/dev/shm").glob(f"{shm_prefix}*"):
        region.unlink(missing_ok=True)


def start_watchdog(pgid: int, shm_prefix: str) -> subprocess.Popen:
    """The watchdog of a server's process group; keep the returned process's ``stdin`` open while the server runs."""
    return subprocess.Popen([sys.executable, "-m", "stack.watchdog", str(pgid), shm_prefix], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop_watchdog(watchdog: subprocess.Popen | None) -> None:
    if watchdog is None:
        return
    if watchdog.stdin is not None:
        watchdog.stdin.close()
    try:
        watchdog.wait(timeout=10)
    except subprocess.TimeoutExpired:
        watchdog.kill()
        watchdog.wait(timeout=5)


def main(argv: list[str]) -> int:
    pgid, shm_prefix = int(argv[0]), argv[1]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C for the stack is not the watchdog's business
    while sys.stdin.buffer.read(4096):
        pass
    end_group(pgid, shm_prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
