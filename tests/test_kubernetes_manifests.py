"""deploy/kubernetes: both overlays render (kustomize, through `kubectl kustomize`), every object validates against
the Kubernetes API's own schemas (kubernetes-validate: the OpenAPI schemas of each release, bundled, so no cluster
and no network; strict, so an unknown field fails, and an unknown kind fails too), and the objects fit together:
the runtime class of each TEE, the Service's ports and affinity, readiness from enclave-ike's /health, the budget,
and the enclave-ike config in the ConfigMap is one `enclave-ike serve` accepts."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from enclave_ike import config as enclave_config
from ikecommon.attestation.spec import MeasurementSpec

ROOT = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
KUBERNETES = "1.32"  # the release whose API the manifests are checked against
RUNTIME_CLASSES = {"tdx": "kata-qemu-tdx", "snp": "kata-qemu-snp"}
SPEC_TYPES = {"tdx": "dcap-tdx", "snp": "sev-snp"}


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with kustomize) is needed: scripts/setup installs kubernetes-client"
    done = subprocess.run([kubectl, "kustomize", str(ROOT / "overlays" / overlay)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return [document for document in yaml.safe_load_all(done.stdout) if document]


@pytest.fixture(scope="module", params=sorted(RUNTIME_CLASSES))
def rendered(request: pytest.FixtureRequest) -> tuple[str, dict[str, dict[str, Any]]]:
    documents = render(request.param)
    by_kind: dict[str, dict[str, Any]] = {}
    for document in documents:
        key = f"{document['kind']}/{document['metadata']['name']}"
        assert key not in by_kind, f"{key} twice"
        by_kind[key] = document
    return request.param, by_kind


def test_every_object_validates_against_the_kubernetes_schemas(rendered) -> None:
    _, objects = rendered
    assert set(objects) == {"ConfigMap/enclave-ike", "StatefulSet/enclave-ike", "Service/enclave-ike",
                            "Service/enclave-ike-peers", "PodDisruptionBudget/enclave-ike"}
    for name, document in objects.items():
        try:
            kubernetes_validate.validate(document, KUBERNETES, strict=True)
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{name}: no schema for this kind in Kubernetes {KUBERNETES}: {exc}")
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {exc.message} at {'.'.join(map(str, exc.path))}")


def test_the_validator_can_fail() -> None:
    """The same check, on objects it must refuse: an unknown field, a wrong type, an unknown kind."""
    statefulset = next(d for d in render("tdx") if d["kind"] == "StatefulSet")
    statefulset["spec"]["template"]["spec"]["runtimeClass"] = "kata-qemu-tdx"  # runtimeClassName misspelt
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBERNETES, strict=True)
    statefulset = next(d for d in render("tdx") if d["kind"] == "StatefulSet")
    statefulset["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBERNETES, strict=True)
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "Sevice", "metadata": {"name": "x"}}, KUBERNETES,
                                     strict=True)


def test_the_pods_run_in_the_tees_runtime_class_and_are_ready_by_their_own_health(rendered) -> None:
    tee, objects = rendered
    pod = objects["StatefulSet/enclave-ike"]["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == RUNTIME_CLASSES[tee]
    statefulset = objects["StatefulSet/enclave-ike"]["spec"]
    assert statefulset["podManagementPolicy"] == "OrderedReady" and statefulset["serviceName"] == "enclave-ike-peers"
    [serve] = [c for c in pod["containers"] if c["name"] == "enclave-ike"]
    assert serve["readinessProbe"]["httpGet"] == {"path": "/health", "port": "metrics"}
    assert {p["name"]: p["containerPort"] for p in serve["ports"]}["metrics"] == 9464
    budget = objects["PodDisruptionBudget/enclave-ike"]["spec"]
    assert budget["maxUnavailable"] == 1 and budget["selector"] == statefulset["selector"]


def test_the_service_carries_ike_esp_in_udp_and_dns_and_keeps_a_client_on_one_pod(rendered) -> None:
    _, objects = rendered
    service = objects["Service/enclave-ike"]["spec"]
    assert {(p["port"], p["protocol"]) for p in service["ports"]} == {(500, "UDP"), (4500, "UDP"), (4501, "TCP"),
                                                                       (53, "UDP"), (53, "TCP")}
    assert service["sessionAffinity"] == "ClientIP" and service["externalTrafficPolicy"] == "Local"
    pod = objects["StatefulSet/enclave-ike"]["spec"]["template"]["spec"]
    named = {p["name"] for c in pod["containers"] for p in c["ports"]}
    assert {p["targetPort"] for p in service["ports"]} <= named
    peers = objects["Service/enclave-ike-peers"]["spec"]
    assert peers["clusterIP"] == "None" and peers["publishNotReadyAddresses"] is True


def test_the_configmap_holds_a_config_serve_accepts_and_a_spec_for_the_tee(rendered, tmp_path: Path) -> None:
    tee, objects = rendered
    data = objects["ConfigMap/enclave-ike"]["data"]
    spec = MeasurementSpec.decode(data["service-spec.json"].encode())
    assert {entry.attestation_type for entry in spec.entries} == {SPEC_TYPES[tee]}
    (tmp_path / "service-spec.json").write_text(data["service-spec.json"])
    text = data["enclave-ike.toml"].replace("/etc/enclave-ike/service-spec.json", str(tmp_path / "service-spec.json"))
    (tmp_path / "enclave-ike.toml").write_text(text)
    served = enclave_config.load(tmp_path / "enclave-ike.toml")
    assert served.apply is enclave_config.ApplyMode.USERSPACE  # a Service carries ESP only inside UDP
    assert served.release.source is enclave_config.KeySource.PEERS
    assert [str(p) for p in served.release.peers] == ["enclave-ike-peers:4502"]
    assert served.release.anchors is enclave_config.Anchors.VENDORS
    assert json.loads(data["service-spec.json"])  # what an operator edits is plain JSON
