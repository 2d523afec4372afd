"""deploy/kubernetes: both overlays render (kustomize, through `kubectl kustomize`), every object validates against
the Kubernetes API's own schemas (kubernetes-validate: the OpenAPI schemas of each release, bundled, so no cluster
and no network; strict, so an unknown field fails, and an unknown kind fails too), and the objects fit together:
the runtime class of each TEE, the Service's ports, readiness from enclave-ike's /health, the budget, the network
policy; and the configs that go into the image (deploy/kubernetes/image: not a ConfigMap, which the host could
change) are ones `enclave-ike serve` accepts."""

from __future__ import annotations

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
IMAGE = ROOT / "image"


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
    assert set(objects) == {"StatefulSet/enclave-ike", "Service/enclave-ike", "Service/enclave-ike-peers",
                            "PodDisruptionBudget/enclave-ike", "NetworkPolicy/enclave-ike"}
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
    [spread] = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["labelSelector"] == statefulset["selector"]
    [unbound] = [c for c in pod["containers"] if c["name"] == "unbound"]
    assert unbound["readinessProbe"]["tcpSocket"] == {"port": "dns-tcp"}
    assert not any("volumeMounts" in c for c in pod["containers"]) and "volumes" not in pod  # nothing from the host


def test_the_service_carries_ike_and_esp_in_one_udp_flow_and_dns(rendered) -> None:
    """UDP 4500 only for IKE: a load balancer places each port's flows on their own, so 500 and 4500 could reach
    two pods (ikectl's encapsulation starts IKE on 4500)."""
    _, objects = rendered
    service = objects["Service/enclave-ike"]["spec"]
    assert {(p["port"], p["protocol"]) for p in service["ports"]} == {(4500, "UDP"), (4501, "TCP"), (53, "UDP"),
                                                                       (53, "TCP")}
    assert service["sessionAffinity"] == "ClientIP" and service["externalTrafficPolicy"] == "Local"
    pod = objects["StatefulSet/enclave-ike"]["spec"]["template"]["spec"]
    named = {p["name"] for c in pod["containers"] for p in c["ports"]}
    assert {p["targetPort"] for p in service["ports"]} <= named
    peers = objects["Service/enclave-ike-peers"]["spec"]
    assert peers["clusterIP"] == "None" and peers["publishNotReadyAddresses"] is True
    policy = objects["NetworkPolicy/enclave-ike"]["spec"]
    release = [rule for rule in policy["ingress"] if {"port": 4502, "protocol": "TCP"} in rule["ports"]]
    assert release == [{"from": [{"podSelector": statefulset_selector(objects)}],
                        "ports": [{"port": 4502, "protocol": "TCP"}]}]


def statefulset_selector(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return dict(objects["StatefulSet/enclave-ike"]["spec"]["selector"])


def test_the_images_config_is_one_serve_accepts_with_a_spec_for_both_tees(tmp_path: Path) -> None:
    spec = MeasurementSpec.load(IMAGE / "service-spec.json")
    assert sorted(entry.attestation_type for entry in spec.entries) == ["dcap-tdx", "sev-snp"]
    text = (IMAGE / "enclave-ike.toml").read_text()
    (tmp_path / "enclave-ike.toml").write_text(text.replace("/etc/enclave-ike/service-spec.json",
                                                            str(IMAGE / "service-spec.json")))
    served = enclave_config.load(tmp_path / "enclave-ike.toml")
    assert served.apply is enclave_config.ApplyMode.USERSPACE  # a Service carries ESP only inside UDP
    release = served.release
    assert release.source is enclave_config.KeySource.PEERS and release.anchors is enclave_config.Anchors.VENDORS
    assert [str(p) for p in release.peers] == ["enclave-ike-peers:4502"]
    assert (release.when_alone, release.founder) == (enclave_config.WhenAlone.NEW_KEY, "enclave-ike-0")
    assert served.metrics.enabled and served.metrics.port == 9464  # the readiness probe's port
    assert "log-queries: no" in (IMAGE / "unbound.conf").read_text()
