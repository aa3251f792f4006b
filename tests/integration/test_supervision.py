"""The launcher owns its tritonserver: busy ports are a clear error, a killed server comes back on its own with
nothing of the dead one left, and the server dies with its launcher (real processes, real kill -9)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from stack.processes import FrontendProcess, free_port
from stack.supervision import TritonSupervisor, port_owner, process_group_members, remove_stale_leftovers
from stack.triton_server import TritonLaunchError, TritonServer, TritonServerOptions, leftover_shm_regions
from tests.conftest import PROJECT_ROOT, speech_like, wait_until


@pytest.fixture(scope="module")
def a2e_repository(tmp_path_factory) -> Path:
    from export.build_repository import BuildSettings, build_repository

    return build_repository(tmp_path_factory.mktemp("supervised_repo"), BuildSettings(profile="tiny", slices=("lam_a2e",)))


def options(repository: Path) -> TritonServerOptions:
    return TritonServerOptions(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), startup_timeout_s=120)


def infer_ok(grpc_url: str) -> bool:
    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        audio = speech_like(0.5)
        tensor = grpcclient.InferInput("AUDIO", list(audio.shape), "FP32")
        tensor.set_data_from_numpy(audio)
        return client.infer("lam_a2e_offline", [tensor]).as_numpy("BLENDSHAPES").shape[1] == 52
    except InferenceServerException:
        return False
    finally:
        client.close()


def test_a_busy_port_is_a_start_up_error_naming_its_holder(a2e_repository):
    opts = options(a2e_repository)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", opts.grpc_port))
        holder.listen()
        assert port_owner(opts.grpc_port) == (os.getpid(), Path(f"/proc/{os.getpid()}/comm").read_text().strip())
        server = TritonServer(opts)
        with pytest.raises(TritonLaunchError, match=rf"gRPC port 127.0.0.1:{opts.grpc_port} is already in use by pid {os.getpid()}"):
            server.start()
        assert server.process is None  # nothing was launched


def test_a_killed_server_is_restarted_with_nothing_of_it_left(a2e_repository):
    server = TritonServer(options(a2e_repository)).start()
    supervisor = TritonSupervisor(server, poll_s=0.2).start()
    try:
        assert infer_ok(server.grpc_url)
        old_pid, old_prefix = server.process.pid, server.shm_prefix
        old_group = process_group_members(old_pid)
        assert len(old_group) > 1  # the server and its stubs share one process group
        os.kill(old_pid, signal.SIGKILL)
        wait_until(lambda: supervisor.restarts == 1 and server.is_ready(), 60, "a restarted, ready tritonserver")
        assert server.process.pid != old_pid and port_owner(server.options.http_port)[0] == server.process.pid
        assert process_group_members(old_pid) == [], "stubs of the killed server are still running"
        assert leftover_shm_regions(old_prefix) == []
        assert infer_ok(server.grpc_url)
    finally:
        supervisor.stop()
        server.stop()
    assert leftover_shm_regions(server.shm_prefix) == []


def test_a_killed_stub_is_reloaded_and_its_model_serves_again(a2e_repository):
    server = TritonServer(options(a2e_repository)).start()
    supervisor = TritonSupervisor(server, poll_s=0.2).start()
    try:
        assert infer_ok(server.grpc_url)
        stubs_before = server.stubs_by_model()
        assert stubs_before == {"lam_a2e": 1, "lam_a2e_offline": 2, "lam_a2e_stream": 1}
        victim = next(pid for pid in process_group_members(server.process.pid)
                      if b"lam_a2e/1/model.py" in Path(f"/proc/{pid}/cmdline").read_bytes())
        os.kill(victim, signal.SIGKILL)  # the network's stub: lam_a2e_offline reaches it through BLS
        started = time.monotonic()
        wait_until(lambda: supervisor.model_reloads >= 1, 30, "the model reloaded")
        wait_until(lambda: infer_ok(server.grpc_url), 30, "the pipeline serving again")
        assert time.monotonic() - started < 60
        assert supervisor.restarts == 0 and server.stubs_by_model() == stubs_before
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry()
        registry.register(supervisor)  # what python -m stack adds to the front end's /metrics
        exposed = generate_latest(registry).decode()
        assert 'emoserve_model_recoveries_total{model="lam_a2e"} 1.0' in exposed and "emoserve_triton_restarts_total 0.0" in exposed
        assert not Path(f"/proc/{victim}").exists() or "Z" in Path(f"/proc/{victim}/stat").read_text().split()[2]
    finally:
        supervisor.stop()
        server.stop()


def test_rest_answers_503_with_retry_after_while_a_stub_is_dead_then_serves_again(a2e_repository):
    server = TritonServer(options(a2e_repository)).start()
    frontend = FrontendProcess(server.grpc_url).start()
    supervisor = None
    speech = (PROJECT_ROOT / "examples" / "speech.wav").read_bytes()

    def infer():
        return httpx.post(f"{frontend.base_url}/api/infer", files={"audio_file": ("speech.wav", speech)}, timeout=60)

    try:
        assert infer().status_code == 200
        healthy_stubs = server.stubs_by_model()
        victim = next(pid for pid in process_group_members(server.process.pid)
                      if b"/lam_a2e/1/model.py" in Path(f"/proc/{pid}/cmdline").read_bytes())
        os.kill(victim, signal.SIGKILL)  # the network's one stub: the route's pipeline reaches it through BLS
        wait_until(lambda: "lam_a2e" not in server.stubs_by_model(), 10, "the stub gone")
        # nobody supervises yet: every answer in the fault is 503 in the route's format, never 500
        answers = [infer() for _ in range(4)]
        assert {a.status_code for a in answers} == {503}, [a.text for a in answers]
        assert all(a.headers["retry-after"] and set(a.json()) == {"detail"} for a in answers)
        assert all("Stub process" not in a.text for a in answers)
        supervisor = TritonSupervisor(server, poll_s=0.2, expected_stubs=healthy_stubs).start()
        started = time.monotonic()
        wait_until(lambda: infer().status_code == 200, 60, "the REST route serving again")
        assert time.monotonic() - started < 60 and supervisor.model_reloads == 1 and supervisor.restarts == 0
    finally:
        if supervisor is not None:
            supervisor.stop()
        frontend.stop()
        server.stop()


def _launch_and_kill_9(repository: Path, opts, also_kill_watchdog: bool) -> tuple[int, str]:
    """A launcher process that starts a server, then ``kill -9`` of it (and of its watchdog); (server pid, shm prefix)."""
    launcher = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from stack.triton_server import TritonServer, TritonServerOptions
        server = TritonServer(TritonServerOptions(Path({str(repository)!r}), http_port={opts.http_port},
                              grpc_port={opts.grpc_port}, metrics_port={opts.metrics_port})).start()
        print(server.process.pid, server.shm_prefix, server._watchdog.pid, flush=True)
        time.sleep(600)
    """)
    process = subprocess.Popen([sys.executable, "-c", launcher], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        server_pid, prefix, watchdog_pid = process.stdout.readline().split()
        assert leftover_shm_regions(prefix)
        if also_kill_watchdog:
            os.kill(int(watchdog_pid), signal.SIGKILL)
        process.kill()  # kill -9 of the launcher: no finally block runs there
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    wait_until(lambda: not Path(f"/proc/{server_pid}").exists() or "Z" in Path(f"/proc/{server_pid}/stat").read_text().split()[2],
               15, "tritonserver gone with its launcher")
    return int(server_pid), prefix


def test_the_server_and_its_stubs_die_with_their_launcher(a2e_repository):
    opts = options(a2e_repository)
    server_pid, prefix = _launch_and_kill_9(a2e_repository, opts, also_kill_watchdog=False)
    # the watchdog ends the process group and removes its shared memory once the launcher's pipe closes
    wait_until(lambda: process_group_members(server_pid) == [] and leftover_shm_regions(prefix) == [], 15,
               "no stub and no shm region of the dead launcher's server left")
    # a multi-threaded process shows as a zombie once its main thread exits; its sockets close with its last thread
    wait_until(lambda: all(port_owner(port) is None for port in (opts.http_port, opts.grpc_port)), 15,
               "the dead server's ports free")


def test_the_next_launch_cleans_up_what_a_dead_launcher_and_watchdog_left(a2e_repository):
    opts = options(a2e_repository)
    server_pid, prefix = _launch_and_kill_9(a2e_repository, opts, also_kill_watchdog=True)
    regions, _ = remove_stale_leftovers()  # what the next start does first
    assert leftover_shm_regions(prefix) == [] and regions
    wait_until(lambda: process_group_members(server_pid) == [], 15, "no stub of the dead launcher's server left")
    wait_until(lambda: all(port_owner(port) is None for port in (opts.http_port, opts.grpc_port)), 15,
               "the dead server's ports free")


@pytest.fixture(scope="module")
def llm_repository(tmp_path_factory) -> Path:
    from export.build_repository import BuildSettings, build_repository

    return build_repository(tmp_path_factory.mktemp("supervised_llm_repo"), BuildSettings(profile="tiny", slices=("emotion_llama",)))


def test_a_killed_llm_stub_mid_generation_ends_the_stream_with_503_and_the_llm_serves_again(llm_repository):
    """kill -9 of emotion_llama_llm while it streams a REST answer. Triton 2.51 never answers the requests of a
    decoupled model whose stub died (its python backend has no fail-over for decoupled models), so the front end's
    silence limit answers the client: the stream ends with a 503 error event, not a hang and not a "done" with a cut
    answer. The supervisor reloads the model, and REST and Triton-direct requests are answered in full again."""
    from emoserve.emotion_llama.llm_stream import LlmStream, LlmStreamError, llm_hidden_size
    from emoserve.model_catalog import EMOTION_LLM_MODEL

    hidden = llm_hidden_size(llm_repository)
    body = {"video_path": str(PROJECT_ROOT / "examples" / "sample_emotion.mp4"), "question": "[reason] Why?"}
    silence_limit_s = 10
    server = TritonServer(options(llm_repository)).start()
    supervisor = TritonSupervisor(server, poll_s=0.2).start()
    # only the emotion_llama slice is loaded: the front end's readiness (every API's models) never comes
    frontend = FrontendProcess(server.grpc_url, {"EMOSERVE_EMOTION_LLAMA__GENERATION_TIMEOUT_S": str(silence_limit_s)})
    frontend.start(wait_healthy=False)
    try:
        with httpx.Client(base_url=frontend.base_url, timeout=120) as api:
            wait_until(lambda: _answers(api, "/livez"), 90, "the front end up")
            with api.stream("POST", "/process_video/stream", json=dict(body, max_new_tokens=1000)) as response:
                assert response.status_code == 200
                events = response.iter_lines()
                assert next(line for line in events if line.startswith("event:")) == "event: token"  # decoding now
                victim = next(pid for pid in process_group_members(server.process.pid)
                              if f"/{EMOTION_LLM_MODEL}/1/model.py".encode() in Path(f"/proc/{pid}/cmdline").read_bytes())
                killed = time.monotonic()
                os.kill(victim, signal.SIGKILL)
                kinds = [line for line in events if line.startswith("event:")]
                assert time.monotonic() - killed < silence_limit_s + 20
            assert kinds and set(kinds[:-1]) <= {"event: token"} and kinds[-1] == "event: error", kinds[-3:]
            wait_until(lambda: supervisor.model_reloads >= 1, 60, "the LLM reloaded")

            def answered() -> bool:
                try:
                    with LlmStream(server.grpc_url, hidden, "[reason] Why?", 12, min_new_tokens=12) as stream:
                        return len(stream.final(timeout_s=60).token_ids) == 12
                except LlmStreamError:
                    return False

            wait_until(answered, 60, "the LLM serving Triton-direct again")
            again = api.post("/process_video", json=dict(body, max_new_tokens=8))
            assert again.status_code == 200, again.text
            assert supervisor.restarts == 0
    finally:
        frontend.stop()
        supervisor.stop()
        server.stop()


def _answers(api: httpx.Client, path: str) -> bool:
    try:
        return api.get(path).status_code == 200
    except httpx.TransportError:
        return False
