"""The commands the READMEs give work when followed literally on a fresh clone.

Each check stands for a step a newcomer once copied and saw fail: a bare `npx buf` (which runs an
unrelated npm package outside this repository), `python -m qdata_server` outside the virtualenv,
an address repeated in every example, a Secret created without a key the Deployment requires.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def shell_blocks(path: Path) -> list[str]:
    """The lines of every ```sh block in a Markdown file."""
    lines: list[str] = []
    inside = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```sh" if not inside else False
            continue
        if inside:
            lines.append(line)
    return lines


def test_readme_examples_use_the_repositorys_own_tools():
    lines = shell_blocks(ROOT / "README.md")
    assert lines, "README has no shell examples"
    assert [line for line in lines if "npx " in line] == []
    bare_python = [line for line in lines if re.search(r"(^|[\s$(])python3? -m qdata_server", line)]
    assert bare_python == []


def test_readme_examples_name_the_address_once():
    lines = shell_blocks(ROOT / "README.md")
    # Comments may mention it; commands take it from ADDR.
    addresses = [line for line in lines if "127.0.0.1:50051" in line.split("#")[0]]
    assert len(addresses) == 1 and addresses[0].startswith("ADDR=")


def test_the_documented_secret_holds_every_key_the_deployment_requires():
    deployment = (ROOT / "deploy" / "deployment.yaml").read_text()
    required = set()
    # secretKeyRef blocks: name, key and an optional `optional: true`.
    for block in re.findall(r"secretKeyRef:\n((?:\s+\w+: .+\n)+)", deployment):
        fields = dict(re.findall(r"(\w+): (.+)", block))
        if fields.get("name") == "qdata-db" and fields.get("optional") != "true":
            required.add(fields["key"])
    assert {"DATABASE_URL", "QDATA_AUTH_TOKENS"} <= required
    readme = (ROOT / "deploy" / "README.md").read_text()
    command = readme[readme.index("kubectl create secret generic qdata-db") :]
    command = command[: command.index("\n\n")]
    documented = set(re.findall(r"--from-literal=(\w+)=", command))
    assert required <= documented
