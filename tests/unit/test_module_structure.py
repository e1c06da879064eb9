"""The server's module structure: no import cycle, and the periodic-job helper every loop uses."""

from __future__ import annotations

import ast
import asyncio
import logging
from pathlib import Path

import qdata_server
from qdata_server import background

PACKAGE = Path(qdata_server.__file__).parent


def _imports() -> dict[str, set[str]]:
    """Module -> the server modules it imports, counting every import statement wherever it is
    (function bodies and TYPE_CHECKING blocks included)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("qdata_server", *path.relative_to(PACKAGE).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the path that closes it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_no_import_cycle_among_server_modules():
    graph = _imports()
    assert "qdata_server.config" in graph and "qdata_server.tokens" in graph["qdata_server.config"]
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = _imports()
    graph["qdata_server.tokens"].add("qdata_server.auth")
    assert _cycle(graph) is not None


async def test_every_skips_rounds_while_not_serving_and_survives_a_failing_job(caplog):
    runs: list[int] = []
    serving = [False, True, True, True]
    three = asyncio.Event()

    async def job() -> None:
        runs.append(len(runs))
        if len(runs) == 3:
            three.set()
        if len(runs) == 1:
            raise RuntimeError("the first round fails")

    def when() -> bool:
        return serving.pop(0) if serving else True

    log = logging.getLogger("qdata.test")
    task = asyncio.create_task(background.every(lambda: 0.0, job, log=log, failure="job failed", when=when))
    await asyncio.wait_for(three.wait(), timeout=10)
    await background.cancel(task)
    assert task.cancelled()
    assert runs[:3] == [0, 1, 2] and serving == []  # the first round was skipped
    failures = [r for r in caplog.records if r.getMessage() == "job failed"]
    assert len(failures) == 1 and failures[0].error_type == "RuntimeError"
