"""deploy/ renders with kustomize and every object is valid, for the simple path and the two-caller example.

`kubectl kustomize` (kubectl 1.37 from requirements-dev.txt, kustomize v5 inside, which builds
Components) renders each kustomization. kubernetes-validate checks every built-in object against
the Kubernetes schemas, strictly (an unknown field fails), for the oldest Kubernetes the sidecar
supports (1.29, native sidecars) and the newest it knows. The Prometheus Operator's objects
(ServiceMonitor, PrometheusRule) have no schema there: they are checked against their CRDs' own
schemas (tests/integration/deploy_crds.mjs), and the rules inside by promtool
(test_deploy_rules.py). Then what the manifests promise is checked on the rendered objects.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support.deploy import DEPLOY, kustomize, node

KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
EXAMPLE = DEPLOY / "examples" / "two-callers"
CALLERS = {"billing": "billing", "chat-gateway": "chat"}
DIGEST = re.compile(r"^[a-z0-9.-]+(/[a-z0-9._-]+)+@sha256:[0-9a-f]{64}$")
QDATA_PORTS = {50051, 8081, 9464}


@pytest.fixture(scope="module")
def simple() -> list[dict[str, Any]]:
    return kustomize(DEPLOY)


@pytest.fixture(scope="module")
def example() -> list[dict[str, Any]]:
    return kustomize(EXAMPLE)


@pytest.fixture(scope="module")
def migration() -> list[dict[str, Any]]:
    return kustomize(EXAMPLE / "migrate")


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(deployment)
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_names(container: dict[str, Any]) -> set[str]:
    return {item["name"] for item in container.get("env", [])}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.mark.parametrize("name", ["simple", "example", "migration"])
def test_every_object_is_valid_for_the_supported_kubernetes_versions(name, request):
    objects = request.getfixturevalue(name)
    custom = [obj for obj in objects if obj["apiVersion"].startswith("monitoring.coreos.com/")]
    for obj in objects:
        if obj in custom:
            continue
        for version in KUBERNETES_VERSIONS:
            # Raises ValidationError (a wrong field), SchemaNotFoundError (an unknown kind).
            kubernetes_validate.validate(obj, version, strict=True)
    if custom:
        assert node("deploy_crds.mjs", custom) == [None] * len(custom)


def test_the_crd_check_refuses_a_wrong_object(example):
    [monitor] = of_kind(example, "ServiceMonitor")
    broken = {**monitor, "spec": {**monitor["spec"], "endpoints": [{"port": "qdata-metrics", "interval": "30 s"}]}}
    [error] = node("deploy_crds.mjs", [broken])
    assert error and "interval" in error


def test_each_caller_includes_the_component_in_one_line():
    for caller in CALLERS:
        text = (EXAMPLE / caller / "kustomization.yaml").read_text()
        assert re.search(r"^components:\n  - \.\./\.\./\.\./components/qdata\n", text, re.MULTILINE), caller
        assert "initContainers" not in (EXAMPLE / caller / "deployment.yaml").read_text()


def test_every_caller_gets_the_sidecar(simple, example):
    deployments = {d["metadata"]["name"]: d for d in of_kind(example, "Deployment")}
    assert set(deployments) == set(CALLERS)
    for deployment in [*deployments.values(), *of_kind(simple, "Deployment")]:
        spec = pod_spec(deployment)
        qdata = {c["name"]: c for c in spec["initContainers"]}["qdata"]
        assert qdata["restartPolicy"] == "Always"
        assert qdata["args"] == ["serve"]
        assert {p["containerPort"] for p in qdata["ports"]} == QDATA_PORTS
        assert qdata["startupProbe"]["grpc"]["port"] == 8081
        assert qdata["readinessProbe"]["grpc"]["port"] == 8081
        assert qdata["livenessProbe"]["tcpSocket"]["port"] == 50051
        context = qdata["securityContext"]
        assert (
            context["readOnlyRootFilesystem"] and context["runAsNonRoot"] and context["capabilities"]["drop"] == ["ALL"]
        )
        mounts = {m["mountPath"]: m["name"] for m in qdata["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        # The metrics' multiprocess directory needs a writable /tmp on the read-only root.
        assert "emptyDir" in volumes[mounts["/tmp"]]
        assert "secret" in volumes[mounts["/etc/qdata/keyring"]]
        # The ConfigMap reference follows the generated name (with its hash).
        [config_ref] = [source["configMapRef"]["name"] for source in qdata["envFrom"]]
        namespace = deployment["metadata"].get("namespace")
        objects = example if namespace else simple
        configs = [c for c in of_kind(objects, "ConfigMap") if c["metadata"].get("namespace") == namespace]
        assert config_ref in {c["metadata"]["name"] for c in configs}
        assert spec["enableServiceLinks"] is False
        assert pod_spec(deployment)["terminationGracePeriodSeconds"] > 15
        # The caller's own containers are untouched.
        assert all(c["name"] != "qdata" for c in spec["containers"])


def test_a_callers_setting_overrides_only_its_own_config(example):
    configs = {
        c["metadata"]["namespace"]: c["data"]
        for c in of_kind(example, "ConfigMap")
        if "qdata-config" in c["metadata"]["name"]
    }
    assert configs["billing"]["QDATA_POOL_MAX_SIZE"] == "8"
    assert configs["chat"]["QDATA_POOL_MAX_SIZE"] == "5"
    for data in configs.values():
        assert data["QDATA_METRICS_LISTEN_ADDRESS"] == "0.0.0.0:9464"
        assert data["QDATA_MIGRATE_ON_START"] == "false"


def test_the_simple_path_migrates_in_an_init_container_before_qdata(simple):
    [deployment] = of_kind(simple, "Deployment")
    order = [c["name"] for c in pod_spec(deployment)["initContainers"]]
    assert order == ["qdata-migrate", "qdata"]
    migrate = pod_spec(deployment)["initContainers"][0]
    assert "restartPolicy" not in migrate and migrate["args"] == ["migrate"]
    assert "QDATA_OWNER_DATABASE_URL" in env_names(migrate)


def test_in_production_only_the_job_holds_the_owners_credential(example, migration):
    for deployment in of_kind(example, "Deployment"):
        for container in containers(deployment):
            assert "QDATA_OWNER_DATABASE_URL" not in env_names(container), deployment["metadata"]["name"]
            assert container["name"] != "qdata-migrate"
    [job] = of_kind(migration, "Job")
    assert job["metadata"]["namespace"] == "qdata-migrations"
    assert job["metadata"]["namespace"] not in CALLERS.values()
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]
    [env] = container["env"]
    assert env["name"] == "QDATA_OWNER_DATABASE_URL"
    assert env["valueFrom"]["secretKeyRef"]["name"] == "qdata-owner"
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["activeDeadlineSeconds"] > 0


def test_the_example_pins_every_image_by_digest(example, migration):
    images = [c["image"] for obj in example + migration if obj["kind"] in {"Deployment", "Job"} for c in (
        containers(obj) if obj["kind"] == "Deployment" else obj["spec"]["template"]["spec"]["containers"]
    )]  # fmt: skip
    assert images
    assert [image for image in images if not DIGEST.match(image)] == []
    # The Job migrates with exactly the image the callers serve.
    qdata = {image for image in images if "/qdata@" in image}
    assert len(qdata) == 1


def ingress_ports(policy: dict[str, Any]) -> list[tuple[int | str | None, list[dict[str, Any]]]]:
    """(port, from) for each port each ingress rule admits; port None for a rule without ports."""
    found: list[tuple[int | str | None, list[dict[str, Any]]]] = []
    for rule in policy["spec"].get("ingress", []):
        ports = rule.get("ports") or [{"port": None}]
        found.extend((port.get("port"), rule.get("from", [])) for port in ports)
    return found


def test_network_policies_admit_only_prometheus_to_qdata(example):
    for namespace in CALLERS.values():
        [deployment] = [d for d in of_kind(example, "Deployment") if d["metadata"]["namespace"] == namespace]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        policies = [
            p
            for p in of_kind(example, "NetworkPolicy")
            if p["metadata"]["namespace"] == namespace and selects(p["spec"]["podSelector"]["matchLabels"], pod_labels)
        ]
        assert {p["metadata"]["name"] for p in policies} == {"qdata-sidecar", deployment["metadata"]["name"]}
        admitted = [entry for p in policies for entry in ingress_ports(p)]
        # Every rule names its ports (a rule without them would admit 50051 too).
        assert None not in [port for port, _ in admitted]
        reaching_qdata = [(port, sources) for port, sources in admitted if port in QDATA_PORTS or port in {
            "qdata-grpc", "qdata-health", "qdata-metrics"}]  # fmt: skip
        assert reaching_qdata == [
            (9464, [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}])
        ]


def test_the_service_monitor_scrapes_each_callers_metrics_service(example):
    [monitor] = of_kind(example, "ServiceMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    services = [
        s
        for s in of_kind(example, "Service")
        if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert {s["metadata"]["namespace"] for s in services} == set(CALLERS.values())
    [endpoint] = monitor["spec"]["endpoints"]
    for service in services:
        [port] = service["spec"]["ports"]
        assert port["name"] == endpoint["port"] and port["port"] == 9464
        [deployment] = [
            d for d in of_kind(example, "Deployment") if d["metadata"]["namespace"] == service["metadata"]["namespace"]
        ]
        assert selects(service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
        qdata = {c["name"]: c for c in pod_spec(deployment)["initContainers"]}["qdata"]
        assert port["targetPort"] in {p["name"] for p in qdata["ports"]}


def test_each_caller_has_a_disruption_budget_over_its_pods(example):
    budgets = of_kind(example, "PodDisruptionBudget")
    assert len(budgets) == len(CALLERS)
    for budget in budgets:
        [deployment] = [
            d for d in of_kind(example, "Deployment") if d["metadata"]["namespace"] == budget["metadata"]["namespace"]
        ]
        assert selects(budget["spec"]["selector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"])
        assert budget["spec"]["maxUnavailable"] < deployment["spec"]["replicas"]


def test_the_deploy_readme_names_only_files_that_exist():
    readme = (DEPLOY / "README.md").read_text()
    named = set(re.findall(r"`((?:components|examples|migrate|monitoring|grafana)/[^`\s]*)`", readme))
    assert named
    assert [name for name in sorted(named) if not (DEPLOY / name.rstrip("/")).exists()] == []


def test_the_dashboard_is_in_the_monitoring_kustomization(example):
    [board] = [c for c in of_kind(example, "ConfigMap") if c["metadata"]["name"] == "qdata-grafana-dashboard"]
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert board["data"]["qdata.json"] == (DEPLOY / "grafana" / "qdata.json").read_text()


def test_kubernetes_validate_refuses_a_wrong_field():
    # The validation above can fail: a misspelled field of a built-in kind is refused.
    wrong: dict[str, Any] = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "x"},
        "spec": {"podSelector": {}, "ingres": []},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, KUBERNETES_VERSIONS[0], strict=True)


def test_the_secrets_documented_match_what_the_manifests_require(simple, example, migration):
    readme = (DEPLOY / "README.md").read_text()
    documented: dict[str, set[str]] = {}
    for name, block in re.findall(r"kubectl (?:-n \S+ )?create secret generic (\S+)((?:.*\\\n)*.*)", readme):
        documented.setdefault(name, set()).update(re.findall(r"--from-(?:literal|file)=([\w.]+)=", block))
    required: dict[str, set[str]] = {}
    for obj in simple + example + migration:
        if obj["kind"] not in {"Deployment", "Job"}:
            continue
        spec = obj["spec"]["template"]["spec"]
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    required.setdefault(ref["name"], set()).add(ref["key"])
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                required.setdefault(volume["secret"]["secretName"], set())
    for name, keys in required.items():
        assert name in documented, f"deploy/README.md does not say how to create the Secret {name}"
        assert keys <= documented[name], (name, keys - documented[name])


def test_a_caller_keeps_its_own_init_containers_and_volumes(tmp_path):
    """Any Deployment: the component adds to what the caller has, qdata's init containers first."""
    components = [os.path.relpath(DEPLOY / "components" / name, tmp_path) for name in ("qdata", "qdata-migrate-init")]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({"resources": ["app.yaml"], "components": components}))
    app = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "search"},
        "spec": {
            "selector": {"matchLabels": {"app": "search"}},
            "template": {
                "metadata": {"labels": {"app": "search"}},
                "spec": {
                    "initContainers": [{"name": "warm-cache", "image": "search"}],
                    "containers": [{"name": "search", "image": "search"}],
                    "volumes": [{"name": "cache", "emptyDir": {}}],
                },
            },
        },
    }
    (tmp_path / "app.yaml").write_text(yaml.safe_dump(app))
    [deployment] = of_kind(kustomize(tmp_path), "Deployment")
    spec = pod_spec(deployment)
    assert [c["name"] for c in spec["initContainers"]] == ["qdata-migrate", "qdata", "warm-cache"]
    assert [c["name"] for c in spec["containers"]] == ["search"]
    assert {v["name"] for v in spec["volumes"]} == {"cache", "qdata-keyring", "qdata-tmp"}
    assert deployment["spec"]["template"]["metadata"]["labels"] == {"app": "search", "qdata-sidecar": "true"}


def test_the_example_secret_is_a_valid_secret():
    [secret] = [doc for doc in yaml.safe_load_all((DEPLOY / "secret.example.yaml").read_text()) if doc]
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(secret, version, strict=True)


def test_the_dashboards_panels_have_unique_ids_and_do_not_overlap():
    board = json.loads((DEPLOY / "grafana" / "qdata.json").read_text())
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, (panel["title"], cells.get((x, y)))
                cells[(x, y)] = panel["title"]
        for target in panel.get("targets", []):
            assert target["refId"] and target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
