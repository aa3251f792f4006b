"""Start the real ``tritonserver`` bundled in the ``nvidia-pytriton`` wheel on a CPU-only machine.

The wheel ships the server binary, the python backend and a python-backend stub per CPython
version. Three traps shape this module:

* the stub links ``libpython3.X.so``; the system's copy may be another patch release than the venv's
  interpreter, so the base interpreter's LIBDIR must come first on ``LD_LIBRARY_PATH``;
* the stub starts Python in isolated mode and finds the venv only through ``python3`` on ``PATH``;
* a stub that cannot start leaves the server "loading" forever, deaf to SIGINT — hence the readiness
  timeout, the SIGKILL fallback and the server log attached to every start-up failure.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from stack.supervision import (
    SHM_PREFIX_ROOT,
    describe_holder,
    die_with_parent,
    end_process_group,
    port_in_use,
    port_owner,
    process_group_members,
    remove_stale_leftovers,
)
from stack.watchdog import start_watchdog, stop_watchdog

log = logging.getLogger(__name__)

DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002
# documented-ports mode: the LAM-A2E and Hallo2 documents' servers take 8000 and 8001, so Triton moves here
MOVED_PORTS = (8100, 8101, 8102)


class TritonLaunchError(RuntimeError):
    """The server did not become ready; the message carries the tail of its log."""


def _pytriton_root() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonLaunchError("nvidia-pytriton is not installed in this environment (pip install nvidia-pytriton==0.7.0)")
    return Path(list(spec.submodule_search_locations)[0]) / "tritonserver"


def _python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def prepare_backend_directory(root: Path | None = None) -> Path:
    """Return a backends directory whose python backend carries the stub for this interpreter.

    The stub is copied into the installed package's own ``backends/python`` (idempotent), which keeps
    the wheel's RPATH to ``nvidia_pytriton.libs`` valid.
    """
    root = root or _pytriton_root()
    backends = root / "backends"
    stub_target = backends / "python" / "triton_python_backend_stub"
    if not stub_target.exists():
        stub_source = root / "python_backend_stubs" / _python_version() / "triton_python_backend_stub"
        if not stub_source.exists():
            raise TritonLaunchError(f"no python-backend stub for Python {_python_version()} in {stub_source.parent}")
        tmp = stub_target.with_suffix(f".tmp{os.getpid()}")
        shutil.copy2(stub_source, tmp)
        os.replace(tmp, stub_target)
    return backends


def server_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    libpython_dir = sysconfig.get_config_var("LIBDIR") or ""
    wheel_libs = _pytriton_root().parent.parent / "nvidia_pytriton.libs"
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libpython_dir, str(wheel_libs), env.get("LD_LIBRARY_PATH", "")) if p)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join((venv_bin, env.get("PATH", "")))
    return env


@dataclass
class TritonServerOptions:
    model_repository: Path
    http_port: int = DEFAULT_HTTP_PORT
    grpc_port: int = DEFAULT_GRPC_PORT
    metrics_port: int = DEFAULT_METRICS_PORT
    host: str = "127.0.0.1"
    log_verbose: int = 0
    startup_timeout_s: float = 180.0
    log_path: Path | None = None
    # the log is cut (its content kept as <log>.1) when it grows past this, at start and by the supervisor
    log_max_bytes: int = 64 * 1024 * 1024
    # explicit model control (every model loaded at start) lets the stack reload a model whose stub died
    explicit_model_control: bool = True
    extra_args: list[str] = field(default_factory=list)
    # variables for the server and the stubs it starts, over this process's: e.g. OMP_NUM_THREADS, so replicas sharing
    # one host's cores split them instead of each starting a thread per core
    environment: dict[str, str] = field(default_factory=dict)


class TritonServer:
    """One tritonserver process: ``with TritonServer(opts) as server: ...``."""

    def __init__(self, options: TritonServerOptions):
        self.options = options
        self.shm_prefix = self._new_shm_prefix()
        self.process: subprocess.Popen | None = None
        self._watchdog: subprocess.Popen | None = None
        self._owned_log_dir: str | None = None
        if options.log_path is None:
            self._owned_log_dir = tempfile.mkdtemp(prefix="tritonserver-log-")
            self.log_path = Path(self._owned_log_dir) / "tritonserver.log"
        else:
            self.log_path = Path(options.log_path)
            self.log_path.parent.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _new_shm_prefix() -> str:
        # the launcher's pid in the name lets the next launcher recognise regions whose owner is gone
        return f"{SHM_PREFIX_ROOT}{os.getpid()}_{uuid.uuid4().hex[:8]}_"

    @property
    def http_url(self) -> str:
        return f"{self.options.host}:{self.options.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.options.host}:{self.options.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.options.host}:{self.options.metrics_port}/metrics"

    def command(self) -> list[str]:
        opts = self.options
        root = _pytriton_root()
        return [
            str(root / "bin" / "tritonserver"),
            f"--model-repository={Path(opts.model_repository).resolve()}",
            f"--backend-directory={prepare_backend_directory(root)}",
            f"--cache-directory={root / 'caches'}",
            # one key=value per flag: a comma-joined list is silently taken as one value
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            "--backend-config=python,shm-default-byte-size=4194304",
            "--backend-config=python,shm-growth-byte-size=1048576",
            "--allow-gpu-metrics=false",
            f"--http-address={opts.host}",
            f"--grpc-address={opts.host}",
            f"--metrics-address={opts.host}",
            f"--http-port={opts.http_port}",
            f"--grpc-port={opts.grpc_port}",
            f"--metrics-port={opts.metrics_port}",
            f"--log-verbose={opts.log_verbose}",
            "--exit-timeout-secs=10",
            *(["--model-control-mode=explicit", "--load-model=*"]
              if opts.explicit_model_control and not any(a.startswith("--model-control-mode") for a in opts.extra_args) else []),
            *opts.extra_args,
        ]

    def start(self) -> TritonServer:
        if not Path(self.options.model_repository).is_dir():
            raise TritonLaunchError(f"model repository {self.options.model_repository} does not exist; build it first (make repo)")
        remove_stale_leftovers()
        self.check_ports()
        self.bound_log()
        log_file = open(self.log_path, "ab")  # O_APPEND: the server's writes follow a truncation to the new end
        try:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=server_environment() | self.options.environment,
                # its own process group (one killpg also ends the stubs it forks; Ctrl-C reaches only us, and we stop
                # the server in order), and it dies with the thread that started it
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        finally:
            log_file.close()
        self._watchdog = start_watchdog(self.process.pid, self.shm_prefix)
        try:
            self.wait_ready()
            self.confirm_identity()
        except BaseException:
            self.stop()
            raise
        return self

    def check_ports(self) -> None:
        """A port someone else holds is an error naming the holder, never a silent attach to their server."""
        opts = self.options
        for what, port in (("HTTP", opts.http_port), ("gRPC", opts.grpc_port), ("metrics", opts.metrics_port)):
            if port_in_use(opts.host, port):
                raise TritonLaunchError(
                    f"Triton's {what} port {opts.host}:{port} is already in use by {describe_holder(port)}: stop it, "
                    "or start the stack with other ports")

    def confirm_identity(self) -> None:
        """The server answering on the HTTP port must be the process started here."""
        owner = port_owner(self.options.http_port)
        if self.process is None or owner is None or owner[0] not in (0, self.process.pid):
            raise TritonLaunchError(
                f"the server answering on port {self.options.http_port} is {describe_holder(self.options.http_port)}, "
                f"not the tritonserver started here (pid {self.process.pid if self.process else '?'})")

    def stubs_by_model(self) -> dict[str, int]:
        """Live python-backend stub processes of this server, per model (a stub's first argument is its model.py)."""
        counts: dict[str, int] = {}
        if self.process is None:
            return counts
        for pid in process_group_members(self.process.pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if len(argv) > 1 and argv[0].endswith(b"triton_python_backend_stub"):
                model = Path(argv[1].decode(errors="replace")).parent.parent.name
                counts[model] = counts.get(model, 0) + 1
        return counts

    def reload_model(self, model: str, timeout_s: float = 120.0) -> None:
        """Unload, then load, through Triton's model-control API (explicit mode): a plain load of an unchanged model
        keeps its dead stubs, an unload ends them and a load starts them afresh."""
        for action in ("unload", "load"):
            request = urllib.request.Request(f"http://{self.http_url}/v2/repository/models/{model}/{action}", data=b"", method="POST")
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                if response.status != 200:
                    raise TritonLaunchError(f"{action} of {model} answered HTTP {response.status}")

    def restart(self) -> TritonServer:
        """Start again after the server died: its stubs and shared memory go first."""
        self.stop()
        self.shm_prefix = self._new_shm_prefix()
        return self.start()

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.options.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise TritonLaunchError(
                    f"tritonserver exited with code {self.process.returncode} during start-up\n{self.log_tail()}"
                )
            if self.is_ready():
                return
            time.sleep(0.25)
        raise TritonLaunchError(
            f"tritonserver not ready after {self.options.startup_timeout_s:.0f}s (a python-backend stub may have "
            f"failed to start)\n{self.log_tail()}"
        )

    def bound_log(self) -> bool:
        """Copy-and-truncate the log once it is over ``log_max_bytes`` (``<log>.1`` keeps the previous part). The
        server keeps writing to the same open file; lines written between the copy and the truncation are lost."""
        try:
            if self.log_path.stat().st_size <= self.options.log_max_bytes:
                return False
            shutil.copyfile(self.log_path, self.log_path.with_name(self.log_path.name + ".1"))
            os.truncate(self.log_path, 0)
        except OSError:
            return False
        return True

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        return "--- tritonserver log (tail) ---\n" + "\n".join(text[-lines:])

    def stop(self, timeout_s: float = 20.0) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        grace_s = 0.0
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # SIGINT lets the server stop its stubs and remove its /dev/shm regions
            try:
                process.wait(timeout=timeout_s)
                grace_s = 5.0  # stubs still finishing after an orderly exit
            except subprocess.TimeoutExpired:
                log.warning("tritonserver ignored SIGINT for %.0fs; killing its process group", timeout_s)
        # stubs share the server's process group and would outlive a killed server, and so would their shared memory
        end_process_group(process.pid, grace_s)
        process.wait(timeout=10)
        _remove_shm_regions(self.shm_prefix)
        watchdog, self._watchdog = self._watchdog, None
        stop_watchdog(watchdog)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
        if self._owned_log_dir and exc_info[0] is None:
            shutil.rmtree(self._owned_log_dir, ignore_errors=True)


def _remove_shm_regions(prefix: str) -> None:
    shm = Path("/dev/shm")
    for region in shm.glob(f"{prefix}*"):
        region.unlink(missing_ok=True)


def leftover_shm_regions(prefix: str) -> list[Path]:
    return sorted(Path("/dev/shm").glob(f"{prefix}*"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the bundled tritonserver on CPU with a model repository.")
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT)
    parser.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT)
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--log-verbose", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = TritonServerOptions(args.model_repository, args.http_port, args.grpc_port, args.metrics_port, args.host, args.log_verbose)
    server = TritonServer(options)
    with server:
        log.info(
            "tritonserver ready: http=%s grpc=%s metrics=%s log=%s", server.http_url, server.grpc_url, server.metrics_url, server.log_path
        )
        try:
            while server.process is not None and server.process.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
