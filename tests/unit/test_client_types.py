"""Type checkers understand the client: a sample caller passes mypy and pyright (both strict), and
each planted mistake is reported by both.

The caller is what a service author writes: both clients, a unary RPC, a read of the response, a
server stream. The planted mistakes are the ones an untyped wrapper lets through silently: a
misspelt RPC, the wrong request message and a response field that does not exist.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CALLER = textwrap.dedent(
    """\
    from qdata.client import AsyncQdataClient, NotFound, QdataClient
    from qdata.v1 import chat_pb2, ledger_pb2, user_pb2


    async def service_author() -> int:
        async with AsyncQdataClient("127.0.0.1:50051", retry=True) as qdata:
            try:
                reply = await qdata.users.GetUser(user_pb2.GetUserRequest(email="ada@example.com"))
            except NotFound as exc:
                return len(exc.reason)
            email: str = reply.user.email
            balance = await qdata.ledger.GetBalance(ledger_pb2.GetBalanceRequest(user_id=reply.user.id))
            micros: int = balance.balance.available_micros
            async for chunk in qdata.chat.ExportSession(chat_pb2.ExportSessionRequest(user_id=reply.user.id)):
                micros += len(chunk.messages)
            return micros + len(email)


    def threaded_author() -> str:
        with QdataClient("127.0.0.1:50051") as qdata:
            created = qdata.users.CreateUser(user_pb2.CreateUserRequest(email="a@example.com"))
            for chunk in qdata.chat.ExportSession(chat_pb2.ExportSessionRequest()):
                print(chunk.session.title)
            return created.user.id
    """
)

# name: (the client it is planted on, the statement, the error mypy must report, pyright's rule)
MISTAKES = {
    "misspelt RPC": (
        "async",
        'await qdata.users.GetUsr(user_pb2.GetUserRequest(email="x"))',
        r'"AsyncUserService" has no attribute "GetUsr"',
        "reportAttributeAccessIssue",
    ),
    "wrong request type": (
        "async",
        "await qdata.ledger.GetBalance(user_pb2.GetUserRequest())",
        r'Argument 1 to "GetBalance" of "AsyncLedgerService" has incompatible type "GetUserRequest"',
        "reportArgumentType",
    ),
    "wrong response field": (
        "async",
        "print((await qdata.users.GetUser(user_pb2.GetUserRequest())).user.emial)",
        r'"User" has no attribute "emial"',
        "reportAttributeAccessIssue",
    ),
    "sync misspelt RPC": (
        "sync",
        "qdata.ledger.Charges(ledger_pb2.ChargeRequest())",
        r'"LedgerService" has no attribute "Charges"',
        "reportAttributeAccessIssue",
    ),
    "sync wrong response type": (
        "sync",
        "wrong: int = qdata.users.GetUser(user_pb2.GetUserRequest()).user.email",
        r'Incompatible types in assignment \(expression has type "str", variable has type "int"\)',
        "reportAssignmentType",
    ),
    "stream item field": (
        "sync",
        "print([c.sesion for c in qdata.chat.ExportSession(chat_pb2.ExportSessionRequest())])",
        r'"ExportSessionResponse" has no attribute "sesion"',
        "reportAttributeAccessIssue",
    ),
}


def _plant(mistakes: dict[str, tuple[str, str, str, str]]) -> tuple[str, dict[int, str]]:
    """The caller with each mistake as the first statement in its client's ``with`` block, and the
    line (counted from 1, as mypy does) of each."""
    lines = CALLER.splitlines()
    for function, statement, *_ in mistakes.values():
        opening = "    async with " if function == "async" else "    with QdataClient"
        anchor = next(i for i, line in enumerate(lines) if line.startswith(opening))
        lines.insert(anchor + 1, f"        {statement}")
    where = {lines.index(f"        {statement}") + 1: name for name, (_, statement, *_) in mistakes.items()}
    return "\n".join(lines) + "\n", where


def _mypy(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    caller = tmp_path / "caller.py"
    caller.write_text(source, encoding="utf-8")
    config = tmp_path / "mypy.ini"
    # The client's source, checked as an installed package is: its own errors are not the caller's
    # (the repository's `make lint` checks it). The editable install's import hook is invisible to
    # mypy, hence MYPYPATH.
    config.write_text(
        "[mypy]\nstrict = True\n\n[mypy-qdata.*]\nfollow_imports = silent\nignore_errors = True\n", encoding="utf-8"
    )
    env = {**os.environ, "MYPYPATH": str(ROOT / "clients" / "python")}
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir", str(tmp_path / "cache"),
         "--no-error-summary", "--show-error-codes", str(caller)],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip


def _pyright(tmp_path: Path, source: str) -> list[dict]:
    """pyright's diagnostics (errors only) on source, with the client found through extraPaths."""
    work = tmp_path / f"pyright{len(list(tmp_path.glob('pyright*')))}"
    work.mkdir()
    (work / "caller.py").write_text(source, encoding="utf-8")
    config = {"extraPaths": [str(ROOT / "clients" / "python")], "typeCheckingMode": "strict", "pythonVersion": "3.11"}
    (work / "pyrightconfig.json").write_text(json.dumps(config), encoding="utf-8")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "pyright"), "--pythonpath", sys.executable, "--outputjson", "caller.py"],
        capture_output=True, text=True, cwd=work, check=False,
    )  # fmt: skip
    report = json.loads(result.stdout)
    return [d for d in report["generalDiagnostics"] if d["severity"] == "error"]


@pytest.fixture(scope="module")
def checked_by_pyright(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    tmp = tmp_path_factory.mktemp("pyright")
    planted, _ = _plant(MISTAKES)
    return {"clean": _pyright(tmp, CALLER), "planted": _pyright(tmp, planted)}


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    tmp = tmp_path_factory.mktemp("types")
    planted, _ = _plant(MISTAKES)
    return {"clean": _mypy(tmp, CALLER), "planted": _mypy(tmp, planted)}


def test_sample_caller_type_checks(checked):
    result = checked["clean"]
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_planted_mistake_is_reported(checked, name):
    _, where = _plant(MISTAKES)
    line = next(n for n, m in where.items() if m == name)
    reported = [r for r in checked["planted"].stdout.splitlines() if re.match(rf"caller\.py:{line}: error:", r)]
    assert reported, f"{name} (line {line}) not reported:\n{checked['planted'].stdout}{checked['planted'].stderr}"
    assert any(re.search(MISTAKES[name][2], r) for r in reported), reported


def test_sample_caller_passes_pyright(checked_by_pyright):
    assert checked_by_pyright["clean"] == []


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_planted_mistake_is_reported_by_pyright(checked_by_pyright, name):
    _, where = _plant(MISTAKES)
    line = next(n for n, m in where.items() if m == name)
    reported = [d for d in checked_by_pyright["planted"] if d["range"]["start"]["line"] + 1 == line]
    assert any(d.get("rule") == MISTAKES[name][3] for d in reported), (name, line, checked_by_pyright["planted"])
