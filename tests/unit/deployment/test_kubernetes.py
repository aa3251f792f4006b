"""deploy/k8s/: every manifest is valid against the Kubernetes API schema of a pinned version (kubernetes-validate,
strict: an unknown field is an error), the kustomization lists every file, and the deployment's own rules hold."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

K8S = Path(__file__).resolve().parents[3] / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"  # the oldest release still supported by the major clouds when this was written


def manifests() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found += [(path.name, document) for document in yaml.safe_load_all(path.read_text()) if document]
    return found


def by_kind(kind: str) -> dict[str, dict]:
    return {document["metadata"]["name"]: document for _, document in manifests() if document["kind"] == kind}


def pod_templates() -> dict[str, dict]:
    return {f"{document['kind']}/{name}": document["spec"]["template"]["spec"]
            for _, document in manifests() if document["kind"] in ("Deployment", "StatefulSet")
            for name in [document["metadata"]["name"]]}


@pytest.mark.parametrize("name,document", manifests(), ids=lambda value: value if isinstance(value, str) else value["kind"])
def test_every_manifest_is_valid_for_the_pinned_kubernetes(name, document):
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_kustomization_applies_every_file():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def test_every_container_has_probes_and_resources():
    for workload, pod in pod_templates().items():
        for container in pod["containers"]:
            assert "readinessProbe" in container and "livenessProbe" in container, (workload, container["name"])
        for container in pod["containers"] + pod.get("initContainers", []):
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(kind, {})), (workload, container["name"], kind)


def test_the_parts_of_a_scaled_out_stack():
    statefulsets, deployments = by_kind("StatefulSet"), by_kind("Deployment")
    triton = statefulsets["triton"]
    assert triton["spec"]["serviceName"] in by_kind("Service")  # stable per-pod names
    container = triton["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == container["resources"]["limits"]["nvidia.com/gpu"] == 1
    threads = {variable["name"]: variable["value"] for variable in container["env"]}["OMP_NUM_THREADS"]
    assert threads == container["resources"]["limits"]["cpu"]  # one OpenMP thread per core the pod may use
    assert triton["spec"]["template"]["spec"]["initContainers"][0]["name"] == "build-repository"
    assert deployments["frontend"]["spec"]["replicas"] >= 2
    hpa = by_kind("HorizontalPodAutoscaler")["frontend"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "frontend" and hpa["spec"]["minReplicas"] >= 2
    assert "postgres" in statefulsets
    assert by_kind("PersistentVolumeClaim")["task-files"]["spec"]["accessModes"] == ["ReadWriteMany"]
    budgets = {budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] for budget in by_kind("PodDisruptionBudget").values()}
    assert {"frontend", "triton", "hallo2-worker"} <= budgets


def test_front_ends_queue_and_workers_run_tasks_sharing_one_database_and_folder():
    config = by_kind("ConfigMap")["emoserve"]["data"]
    assert config["EMOSERVE_HALLO2__EMBEDDED_WORKER"] == "false" and "EMOSERVE_HALLO2__RECOVER_ALL_ON_STARTUP" not in config
    for name in ("frontend", "hallo2-worker"):
        pod = by_kind("Deployment")[name]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = {item["name"]: item for item in container["env"]}
        assert env["EMOSERVE_HALLO2__DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "emoserve"
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        assert mounts[config["EMOSERVE_HALLO2__DATA_DIR"]] == "task-files"
        assert {v["name"]: v for v in pod["volumes"]}["task-files"]["persistentVolumeClaim"]["claimName"] == "task-files"
    worker = by_kind("Deployment")["hallo2-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert worker["command"][:4] == ["python", "-m", "frontend.hallo2", "worker"]
    frontend = by_kind("Deployment")["frontend"]["spec"]["template"]["spec"]["containers"][0]
    assert {item["name"]: item for item in frontend["env"]}["EMOSERVE_API_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "api-key"
    assert frontend["readinessProbe"]["httpGet"]["path"] == "/readyz" and frontend["livenessProbe"]["httpGet"]["path"] == "/livez"


def test_front_ends_reach_every_triton_pod_by_name_and_share_the_session_signing_key():
    """LAM-A2E streaming across replicas: the replica list names each StatefulSet pod, and the key is the Secret's."""
    import json

    from frontend.config import Settings

    triton = by_kind("StatefulSet")["triton"]
    config = by_kind("ConfigMap")["emoserve"]["data"]
    service = triton["spec"]["serviceName"]
    expected = [f"{triton['metadata']['name']}-{i}.{service}:8001" for i in range(triton["spec"]["replicas"])]
    assert json.loads(config["EMOSERVE_LAM_A2E__TRITON_REPLICAS"]) == expected
    assert by_kind("Service")[service]["spec"]["clusterIP"] == "None"  # headless: one DNS name per pod
    frontend = by_kind("Deployment")["frontend"]["spec"]["template"]["spec"]["containers"][0]
    key = {item["name"]: item for item in frontend["env"]}["EMOSERVE_LAM_A2E__SESSION_KEY"]["valueFrom"]["secretKeyRef"]
    assert key["name"] == "emoserve" and key["key"] in by_kind("Secret")["emoserve"]["stringData"]
    # the ConfigMap's value parses as the front end's setting
    settings = Settings(lam_a2e={"triton_replicas": json.loads(config["EMOSERVE_LAM_A2E__TRITON_REPLICAS"])})
    assert settings.lam_a2e.replica_urls(config["EMOSERVE_TRITON_GRPC_URL"]) == expected
