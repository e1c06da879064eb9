"""The documents say what the code does, and the commands they give work when followed literally.

Each check stands for a step a newcomer once copied and saw fail, or a fact that drifted: a bare
`npx buf` (which runs an unrelated npm package outside this repository), `python -m qdata_server`
outside the virtualenv, an address repeated in every example, a Secret created without a key the
Deployment requires, a setting the server reads but the table omits, a link to a section that
moved.

The README holds what qdata is, the two commands, a first session and the settings table; the
design and operations documents are in docs/ (docs/README.md is their index).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def markdown_files() -> list[Path]:
    """Every Markdown file of the repository (not those of installed tools or local state)."""
    return sorted(
        path
        for path in ROOT.rglob("*.md")
        if not any(part.startswith(".") or part == "node_modules" for part in path.relative_to(ROOT).parts)
    )


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


def prose(path: Path) -> str:
    """A Markdown file without its fenced code blocks (indented ones included) and inline code."""
    text = re.sub(r"^[ \t]*```.*?^[ \t]*```[^\n]*$", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def section(path: Path, heading: str) -> str:
    """The text under `heading` (a whole heading line) up to the next heading of the same level."""
    text = path.read_text()
    start = text.index(f"\n{heading}\n")
    level = heading.split(" ", 1)[0]
    end = text.find(f"\n{level} ", start + len(heading) + 1)
    return text[start : end if end >= 0 else len(text)]


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    inside = False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
            continue
        match = re.match(r"#{1,6} (.+)", line)
        if match and not inside:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    targets = re.findall(r"\]\(([^)\s]+)\)", prose(path))
    return [t for t in targets if not re.match(r"[a-z]+:", t)]


def test_the_examples_use_the_repositorys_own_tools() -> None:
    assert shell_blocks(README), "README has no shell examples"
    for path in markdown_files():
        lines = shell_blocks(path)
        assert [line for line in lines if "npx " in line] == [], path
        bare_python = [line for line in lines if re.search(r"(^|[\s$(])python3? -m qdata_server", line)]
        assert bare_python == [], path


def test_readme_examples_name_the_address_once() -> None:
    lines = shell_blocks(README)
    # Comments may mention it; commands take it from ADDR.
    addresses = [line for line in lines if "127.0.0.1:50051" in line.split("#")[0]]
    assert len(addresses) == 1 and addresses[0].startswith("ADDR=")


def test_the_documented_secret_holds_every_key_the_deployment_requires() -> None:
    deployment = (ROOT / "deploy" / "components" / "qdata" / "sidecar.yaml").read_text()
    required: set[str] = set()
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


def test_the_settings_table_names_every_variable_the_server_reads() -> None:
    read: set[str] = set()
    for path in (ROOT / "server" / "qdata_server").rglob("*.py"):
        read |= set(re.findall(r"\"((?:QDATA_[A-Z0-9_]+)|DATABASE_URL)\"", path.read_text()))
    table = section(README, "## Configuration")
    documented: set[str] = set()
    for row in re.findall(r"^\| (`[^|]+`) \|", table, flags=re.MULTILINE):
        documented |= set(re.findall(r"`([A-Z0-9_]+)`", row))
    assert read, "no variable names found in server/qdata_server"
    assert documented == read


def test_the_readme_gives_the_two_commands_and_only_targets_that_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets: set[str] = set()
    for line in re.findall(r"^([a-z][a-z -]*):", makefile, flags=re.MULTILINE):
        targets |= set(line.split())
    commands = section(README, "## The two commands")
    assert re.search(r"^make run ", commands, re.MULTILINE)
    assert re.search(r"^make test ", commands, re.MULTILINE)
    named = set(re.findall(r"`make ([a-z][a-z-]*)", commands))
    assert {"run", "test"} < named
    assert named <= targets


def test_the_readme_stays_a_front_page() -> None:
    text = README.read_text()
    headings = re.findall(r"^## (.+)$", text, flags=re.MULTILINE)
    assert headings == ["The two commands", "Trying it with buf curl or grpcurl", "Configuration", "Documentation"]
    assert len(text.encode()) < 15_000


def test_every_relative_link_points_at_a_file_and_heading_that_exist() -> None:
    broken = []
    for path in markdown_files():
        for link in relative_links(path):
            target, _, anchor = link.partition("#")
            file = (path.parent / target).resolve() if target else path
            if not file.exists():
                broken.append(f"{path.relative_to(ROOT)}: {link} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{path.relative_to(ROOT)}: {link} (no such heading)")
    assert broken == []


def test_the_docs_index_lists_every_page() -> None:
    index = (DOCS / "README.md").read_text()
    listed = {(DOCS / link).resolve() for link in re.findall(r"\]\(([^)#]+\.md)\)", index)}
    pages = {path.resolve() for path in DOCS.rglob("*.md") if path.name != "README.md"}
    assert pages <= listed


def test_every_benchmark_says_when_it_was_measured() -> None:
    text = (DOCS / "benchmarks.md").read_text()
    sections = re.split(r"^## ", text, flags=re.MULTILINE)[1:]
    assert sections
    undated = [s.splitlines()[0] for s in sections if not re.search(r"\b20\d\d-\d\d-\d\d\b", s)]
    assert undated == []
