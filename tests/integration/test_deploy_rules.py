"""The alert rules: promtool checks them and runs their unit tests; each has a severity and a runbook.

deploy/monitoring/prometheusrule.yaml is the one source; promtool reads its spec.groups written
out as a plain rule file. promtool comes from Debian's prometheus package (`make promtool`); the
promtool tests skip, naming why, without it.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.support.deploy import RULES_TEST, RUNBOOKS, alerts, node, promtool, rule_groups, write_rule_file

SEVERITIES = {"critical", "warning"}
RUNBOOK_PREFIX = "https://git.example.com/qdata/blob/main/deploy/runbooks.md#"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=120)


def test_promtool_checks_the_rules(tmp_path):
    tool = promtool()
    rules = write_rule_file(tmp_path)
    checked = run(tool, "check", "rules", str(rules))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in checked.stdout


def test_promtool_runs_the_rules_unit_tests(tmp_path):
    tool = promtool()
    write_rule_file(tmp_path)
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    tested = run(tool, "test", "rules", str(tmp_path / RULES_TEST.name))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_rules_unit_tests_catch_a_changed_threshold(tmp_path):
    """The unit tests can fail: the error ratio's threshold raised above billing's 10% breaks them."""
    tool = promtool()
    groups = rule_groups()
    [rule] = [rule for group in groups for rule in group["rules"] if rule.get("alert") == "QdataHighErrorRatio"]
    assert rule["expr"].count(") > 0.05\n") == 1
    rule["expr"] = rule["expr"].replace(") > 0.05\n", ") > 0.5\n")
    write_rule_file(tmp_path, groups)
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    tested = run(tool, "test", "rules", str(tmp_path / RULES_TEST.name))
    assert tested.returncode != 0
    assert "alertname: QdataHighErrorRatio" in tested.stdout + tested.stderr


def test_every_alert_is_tested_firing_and_not_firing():
    cases: dict[str, set[bool]] = {}
    for test in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for case in test["alert_rule_test"]:
            cases.setdefault(case["alertname"], set()).add(bool(case["exp_alerts"]))
    assert {alert["alert"]: {True, False} for alert in alerts()} == cases


def runbook_sections() -> dict[str, str]:
    """runbooks.md's `## <Alert>` sections: anchor (GitHub's slug of the heading) -> text."""
    sections: dict[str, str] = {}
    for heading, body in re.findall(
        r"^## ([^\n]+)\n(.*?)(?=^## |\Z)", RUNBOOKS.read_text(), flags=re.MULTILINE | re.DOTALL
    ):
        sections[re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")] = body.strip()
    return sections


def test_every_alert_has_a_severity_and_a_runbook_paragraph():
    sections = runbook_sections()
    for alert in alerts():
        name = alert["alert"]
        assert alert["labels"]["severity"] in SEVERITIES, name
        annotations = alert["annotations"]
        assert annotations["summary"] and annotations["description"], name
        url = annotations["runbook_url"]
        assert url.startswith(RUNBOOK_PREFIX), name
        anchor = url.removeprefix(RUNBOOK_PREFIX)
        assert anchor == name.lower(), name
        assert anchor in sections, f"deploy/runbooks.md has no section `## {name}`"
        body = sections[anchor]
        # A paragraph of prose (what it means, what to check, what to do), not just a heading.
        assert len(body.split()) >= 40, name
        assert f"**Severity: {alert['labels']['severity']}.**" in body, name
    # No runbook for an alert that no longer exists.
    assert set(sections) == {alert["alert"].lower() for alert in alerts()}


def test_every_rule_expression_parses_with_prometheus_grammar():
    expressions = [alert["expr"] for alert in alerts()]
    parsed = node("promql_names.mjs", expressions)
    assert [result for result in parsed if isinstance(result, dict)] == []
    assert all(parsed), "an alert that selects no metric"


@pytest.mark.parametrize("expr", ["rate(x[5m]", '{__name__="x"}'])
def test_the_promql_name_parser_refuses_what_it_cannot_name(expr):
    [result] = node("promql_names.mjs", [expr])
    assert isinstance(result, dict) and "error" in result
