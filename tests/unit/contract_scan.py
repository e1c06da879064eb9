"""Static scans behind the contract drift tests: what the protos document, what the server raises.

Which reasons can an RPC raise? This module answers it without running anything, as a sound
over-approximation built in three layers:

1. Shared layer. Every call passes through the same modules (SHARED_MODULES: the interceptor,
   authentication, the error mapping, the transaction runner, idempotency, Deps, validation,
   pagination). A reason named anywhere in them, or raised by a constraint their SQL can
   violate, counts as raisable by any RPC; error_reason.proto documents those once ("Raised by:
   any RPC" / "any RPC with a request_id").
2. Python layer. From each servicer method, a walk of the call graph over module-level functions
   and classes of qdata_server, resolved through each module's imports: a reached function
   contributes every ErrorReason it names (nested functions and lambdas included), a reached
   class all of its methods and its bases. Calls on objects the scan cannot resolve (the Deps
   parameter) lead into the shared layer by construction. So that nothing escapes, every
   ErrorReason named outside the shared modules and db/constraints.py must be reached from some
   RPC (`unattributed` lists the ones that are not).
3. SQL layer. Every string constant of a reached function that names a SQL block brings that
   block; a block brings the plpgsql functions it calls and the triggers of the tables it writes,
   transitively, over every definition found under server/qdata_server/db (all migrations, and
   current-source function files where they exist). A constraint of db/constraints.py is
   raisable where that text names it in quotes (the ledger_reject/usage_reject pseudo-constraints)
   or writes its table: an INSERT into it, or an UPDATE that sets one of the constraint's columns.
   Its reason, as the factory builds it, then belongs to the RPC. A constraint the scan cannot
   locate is reported (`unlocated_constraints`).
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path

from qdata.v1.error_reason_pb2 import ErrorReason
from qdata_server.contract import REASON_PREFIX, SERVICE_DESCRIPTORS
from qdata_server.db import sql
from qdata_server.db.constraints import CONSTRAINT_ERRORS

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "server" / "qdata_server"
PROTOS = ROOT / "protos" / "qdata" / "v1"

SHARED_MODULES = frozenset(
    {
        "qdata_server.interceptor",
        "qdata_server.auth",
        "qdata_server.errors",
        "qdata_server.db.errors",
        "qdata_server.db.transactions",
        "qdata_server.idempotency",
        "qdata_server.app",
        "qdata_server.validation",
        "qdata_server.pagination",
    }
)
# Mapped by constraint name; reached through the SQL layer, not through Python calls.
CONSTRAINTS_MODULE = "qdata_server.db.constraints"
# The servicer module of each service.
SERVICER_MODULES = {
    "UserService": "qdata_server.users.service",
    "LedgerService": "qdata_server.ledger.service",
    "ChatService": "qdata_server.chat.service",
    "UsageService": "qdata_server.usage.service",
    "BudgetService": "qdata_server.budgets.service",
}

ALL_REASONS = frozenset(v.name.removeprefix(REASON_PREFIX) for v in ErrorReason.DESCRIPTOR.values if v.number)


# ---- the protos --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ReasonDoc:
    """One ErrorReason value as error_reason.proto documents it."""

    name: str
    code: str
    scope: str  # "any RPC", "any RPC with a request_id" or "the RPCs that list it"


SHARED_SCOPES = ("any RPC", "any RPC with a request_id")
LISTED_SCOPE = "the RPCs that list it"
_SCOPE_LINE = re.compile(r"Code: (?P<code>[A-Z_]+)\. Raised by: (?P<scope>[^.]+)\.\s*$")


def reason_docs(text: str | None = None) -> dict[str, ReasonDoc]:
    """{wire name: its documentation} from error_reason.proto (each value's last comment line)."""
    text = text if text is not None else (PROTOS / "error_reason.proto").read_text("utf-8")
    docs: dict[str, ReasonDoc] = {}
    comment: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("//"):
            comment.append(stripped[2:].strip())
            continue
        value = re.match(rf"{REASON_PREFIX}(?P<name>[A-Z0-9_]+)\s*=\s*\d+;", stripped)
        if value and value.group("name") != "UNSPECIFIED":
            match = _SCOPE_LINE.search(comment[-1]) if comment else None
            name = value.group("name")
            docs[name] = (
                ReasonDoc(name, match.group("code"), match.group("scope")) if match else ReasonDoc(name, "", "")
            )
        comment = []
    return docs


@dataclasses.dataclass(frozen=True)
class RpcDoc:
    """One RPC's comment in its proto: the text and the reasons its Errors paragraph lists."""

    service: str
    name: str
    comment: str
    errors: dict[str, str]  # reason -> the status code the paragraph names for it
    problems: tuple[str, ...]  # what in the Errors paragraph does not parse


_ERRORS = re.compile(r"(?:^|\n)Errors: (?P<body>.*)\Z", re.S)


def parse_errors_paragraph(comment: str) -> tuple[dict[str, str], list[str]]:
    """Reads "Errors: NOT_FOUND USER_NOT_FOUND, HOLD_NOT_FOUND; FAILED_PRECONDITION HOLD_EXPIRED."

    The paragraph ends the comment; groups are separated by ";", each a status code and the
    reasons it carries. "Errors: none of its own." lists nothing.
    """
    match = _ERRORS.search(comment)
    if not match:
        return {}, ["no 'Errors:' paragraph ends the comment"]
    # A parenthesized note ("(per user, in ImportUserResult.error_reason)") is prose, not a list.
    body = re.sub(r"\([^)]*\)", "", " ".join(match.group("body").split())).strip().rstrip(".")
    if body.startswith("none"):
        return {}, []
    found: dict[str, str] = {}
    problems: list[str] = []
    for group in body.split(";"):
        words = group.replace(",", " ").split()
        if len(words) < 2:
            problems.append(f"group {group.strip()!r} needs a status code and at least one reason")
            continue
        code, *reasons = words
        for reason in reasons:
            if reason in found:
                problems.append(f"{reason} is listed twice")
            found[reason] = code
    return found, problems


def rpc_docs() -> dict[str, RpcDoc]:
    """{"/qdata.v1.UserService/GetUser": its documentation} for every RPC of every proto."""
    docs: dict[str, RpcDoc] = {}
    for path in sorted(PROTOS.glob("*.proto")):
        service = None
        comment: list[str] = []
        for line in path.read_text("utf-8").splitlines():
            stripped = line.strip()
            if stripped.startswith("//"):
                comment.append(stripped[2:].strip())
                continue
            if match := re.match(r"service (\w+) \{", stripped):
                service = match.group(1)
            elif match := re.match(r"rpc (\w+)\(", stripped):
                text = "\n".join(comment)
                errors, problems = parse_errors_paragraph(text)
                name = match.group(1)
                docs[f"/qdata.v1.{service}/{name}"] = RpcDoc(service or "", name, text, errors, tuple(problems))
            comment = []
    return docs


# ---- the server's Python -----------------------------------------------------------------------


@dataclasses.dataclass
class Module:
    name: str
    tree: ast.Module
    defs: dict[str, ast.AST]  # top-level functions and classes by name
    imports: dict[str, str]  # local name -> "module" or "module:name"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Module]:
    found: dict[str, Module] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text("utf-8"), str(path))
        name = _module_name(path)
        defs: dict[str, ast.AST] = {}
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                defs[node.name] = node
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                # A module-level table (e.g. reason by field) is reached where its name is used.
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        defs[target.id] = node
        found[name] = Module(name, tree, defs, {})
    for module in found.values():
        for node in ast.walk(module.tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    local = alias.asname or alias.name
                    module.imports[local] = full if full in found else f"{node.module}:{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        module.imports[alias.asname] = alias.name
    return found


def _reason_of(node: ast.AST) -> str | None:
    """ "USER_NOT_FOUND" for an `ErrorReason.ERROR_REASON_USER_NOT_FOUND` expression."""
    if isinstance(node, ast.Attribute) and node.attr.startswith(REASON_PREFIX):
        name = node.attr.removeprefix(REASON_PREFIX)
        return None if name == "UNSPECIFIED" else name
    return None


Key = tuple[str, str]  # (module, top-level name)


def _resolve(module: Module, node: ast.AST) -> Key | None:
    """The top-level qdata_server function or class a Name or module.attr expression names."""
    mods = modules()
    if isinstance(node, ast.Name):
        if node.id in module.defs:
            return module.name, node.id
        target = module.imports.get(node.id, "")
        if ":" in target:
            where, _, what = target.partition(":")
            if where in mods and what in mods[where].defs:
                return where, what
    elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        target = module.imports.get(node.value.id, "")
        if target in mods and node.attr in mods[target].defs:
            return target, node.attr
    return None


@dataclasses.dataclass
class Reach:
    """What a walk from one entry point reached."""

    reasons: set[str] = dataclasses.field(default_factory=set)
    queries: set[str] = dataclasses.field(default_factory=set)
    defs: set[Key] = dataclasses.field(default_factory=set)
    reason_sites: dict[str, set[str]] = dataclasses.field(default_factory=dict)  # reason -> "module:def"


# The service packages: the shared layer's walk does not enter them (app.py, the composition root,
# names their servicers and background loops, which are not what every RPC runs).
SERVICE_PACKAGES = (
    "qdata_server.users.",
    "qdata_server.ledger.",
    "qdata_server.chat.",
    "qdata_server.usage.",
    "qdata_server.budgets.",
)


def walk(entries: Iterable[tuple[Module, ast.AST]], *, shared: bool = False) -> Reach:
    """Walks the call graph from entries (module, node), collecting reasons and SQL block names.

    An RPC's walk stops at the shared modules (their reasons are every RPC's); the shared layer's
    walk (shared=True) goes everywhere except into the service packages.
    """
    mods = modules()
    query_names = set(sql.names())
    reach = Reach()
    todo: list[tuple[Module, ast.AST, str]] = [(m, n, f"{m.name}:{getattr(n, 'name', '?')}") for m, n in entries]
    while todo:
        module, root, where = todo.pop()
        for node in ast.walk(root):
            reason = _reason_of(node)
            if reason:
                reach.reasons.add(reason)
                reach.reason_sites.setdefault(reason, set()).add(where)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in query_names:
                reach.queries.add(node.value)
            if not isinstance(node, ast.Name | ast.Attribute):
                continue
            key = _resolve(module, node)
            if key is None or key in reach.defs:
                continue
            if key[0] == CONSTRAINTS_MODULE:
                continue
            if key[0].startswith(SERVICE_PACKAGES) if shared else key[0] in SHARED_MODULES:
                continue
            reach.defs.add(key)
            target = mods[key[0]]
            definition = target.defs[key[1]]
            todo.append((target, definition, f"{key[0]}:{key[1]}"))
    return reach


def servicer_methods() -> dict[str, tuple[Module, ast.AST]]:
    """{"/qdata.v1.UserService/GetUser": (servicer module, the method's node)}."""
    found: dict[str, tuple[Module, ast.AST]] = {}
    for service in SERVICE_DESCRIPTORS:
        module = modules()[SERVICER_MODULES[service.name]]
        rpcs = {m.name for m in service.methods}
        for node in module.tree.body:
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name in rpcs:
                        found[f"/{service.full_name}/{item.name}"] = (module, item)
    return found


# ---- the SQL -----------------------------------------------------------------------------------


def _strip_comments(text: str) -> str:
    return re.sub(r"--[^\n]*", "", text)


@cache
def sql_sources() -> str:
    """Every .sql file under db/ except the named query blocks, comments removed."""
    folder = PACKAGE / "db"
    return "\n".join(
        _strip_comments(p.read_text("utf-8")) for p in sorted(folder.rglob("*.sql")) if p.parent.name != "queries"
    )


@cache
def sql_functions() -> dict[str, str]:
    """plpgsql/SQL function name -> the union of all its definitions' text."""
    bodies: dict[str, list[str]] = {}
    text = sql_sources()
    for match in re.finditer(r"CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+(?:\w+\.)?(\w+)\s*\(", text, re.I):
        start = match.end()
        tag = re.compile(r"\$(\w*)\$").search(text, start)
        if tag is None:
            continue
        end = text.find(tag.group(0), tag.end())
        bodies.setdefault(match.group(1), []).append(text[start : end if end > 0 else len(text)])
    return {name: "\n".join(parts) for name, parts in bodies.items()}


@cache
def sql_triggers() -> dict[str, set[str]]:
    """Table -> the functions its triggers execute."""
    found: dict[str, set[str]] = {}
    pattern = (
        r"CREATE\s+(?:OR\s+REPLACE\s+)?TRIGGER\s+\w+\s+.*?\bON\s+(\w+)\s+.*?EXECUTE\s+(?:FUNCTION|PROCEDURE)\s+(\w+)"
    )
    for match in re.finditer(pattern, sql_sources(), re.I | re.S):
        found.setdefault(match.group(1), set()).add(match.group(2))
    return found


def _written_tables(text: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"\b(?:INSERT\s+INTO|UPDATE)\s+(\w+)", text, re.I)}


def expand_sql(texts: Iterable[str]) -> str:
    """The texts plus every function they call and every trigger of the tables they write, transitively."""
    functions, triggers = sql_functions(), sql_triggers()
    seen: set[str] = set()
    parts = list(texts)
    index = 0
    while index < len(parts):
        text = parts[index]
        index += 1
        called = {m.group(1) for m in re.finditer(r"\b(\w+)\s*\(", text) if m.group(1) in functions}
        for table in _written_tables(text):
            called |= triggers.get(table, set())
        for name in sorted(called - seen):
            seen.add(name)
            parts.append(functions[name])
    return "\n".join(parts)


@dataclasses.dataclass(frozen=True)
class TableConstraint:
    table: str
    columns: tuple[str, ...]


@cache
def table_constraints() -> dict[str, TableConstraint]:
    """Constraint or unique index name -> its table and columns, for the ones db/constraints.py maps."""
    text = sql_sources()
    found: dict[str, TableConstraint] = {}
    for name in CONSTRAINT_ERRORS:
        index = re.search(rf"CREATE\s+UNIQUE\s+INDEX\s+(?:CONCURRENTLY\s+)?{name}\s+ON\s+(\w+)[^(]*\(([^)]*)\)", text)
        inline = re.search(rf"CONSTRAINT\s+{name}\s+(?:UNIQUE|FOREIGN\s+KEY|PRIMARY\s+KEY)\s*\(([^)]*)\)", text)
        if index:
            found[name] = TableConstraint(index.group(1), _columns(index.group(2)))
        elif inline:
            tables = list(
                re.finditer(
                    r"(?:CREATE\s+TABLE|ALTER\s+TABLE)\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", text[: inline.start()]
                )
            )
            if tables:
                found[name] = TableConstraint(tables[-1].group(1), _columns(inline.group(1)))
    return found


def _columns(text: str) -> tuple[str, ...]:
    return tuple(re.findall(r"[a-z_][a-z0-9_]*", text.lower()))


def _writes_columns(text: str, constraint: TableConstraint) -> bool:
    """True if text inserts into the constraint's table or updates one of its columns.

    An INSERT with a column list counts only if the list holds one of the constraint's columns;
    an UPDATE only if its SET clause assigns one (a value set to NULL cannot collide).
    """
    table, columns = constraint.table, constraint.columns
    for match in re.finditer(rf"\bINSERT\s+INTO\s+{table}\b\s*(?:\((?P<cols>[^)]*)\))?", text, re.I):
        listed = match.group("cols")
        if listed is None or set(_columns(listed)) & set(columns):
            return True
    pattern = rf"\bUPDATE\s+{table}\b.*?\bSET\b(?P<set>.*?)(?:\bWHERE\b|\bRETURNING\b|;|\Z)"
    for match in re.finditer(pattern, text, re.I | re.S):
        for column in columns:
            for value in re.finditer(rf"(?<![.\w]){column}\s*=\s*(?P<value>[^,]*)", match.group("set")):
                if not value.group("value").strip().upper().startswith("NULL"):
                    return True
    return False


def constraint_reason(name: str) -> str:
    return CONSTRAINT_ERRORS[name]("").reason


def constraints_raised_by(text: str) -> set[str]:
    """The mapped constraints an expanded SQL text can violate."""
    raised = set()
    located = table_constraints()
    for name in CONSTRAINT_ERRORS:
        if f"'{name}'" in text:
            raised.add(name)
        elif name in located and _writes_columns(text, located[name]):
            raised.add(name)
    return raised


def unlocated_constraints() -> set[str]:
    """Mapped constraints the SQL scan can neither find raised by name nor defined on a table."""
    text = sql_sources()
    return {name for name in CONSTRAINT_ERRORS if f"'{name}'" not in text and name not in table_constraints()}


def sql_reasons(queries: Iterable[str]) -> dict[str, set[str]]:
    """reason -> the constraints that carry it, for the SQL blocks given."""
    texts = [_strip_comments(sql.query(name)) for name in sorted(queries)]
    found: dict[str, set[str]] = {}
    for name in constraints_raised_by(expand_sql(texts)):
        found.setdefault(constraint_reason(name), set()).add(name)
    return found


# ---- the answers -------------------------------------------------------------------------------


@cache
def shared_reasons() -> dict[str, set[str]]:
    """reason -> where the shared layer raises it ("module:def" or "constraint <name>")."""
    mods = modules()
    entries = [(mods[name], mods[name].tree) for name in sorted(SHARED_MODULES)]
    reach = walk(entries, shared=True)
    found = {reason: set(sites) for reason, sites in reach.reason_sites.items()}
    for reason, constraints in sql_reasons(reach.queries).items():
        found.setdefault(reason, set()).update(f"constraint {c}" for c in constraints)
    return found


@cache
def rpc_reasons() -> dict[str, dict[str, set[str]]]:
    """Method -> reason -> where it comes from, for every RPC (the shared layer left out)."""
    result: dict[str, dict[str, set[str]]] = {}
    for method, (module, node) in servicer_methods().items():
        reach = walk([(module, node)])
        found = {reason: set(sites) for reason, sites in reach.reason_sites.items()}
        for reason, constraints in sql_reasons(reach.queries).items():
            found.setdefault(reason, set()).update(f"constraint {c}" for c in constraints)
        result[method] = found
    return result


def unattributed() -> dict[str, set[str]]:
    """Reasons named outside the shared layer and db/constraints.py that no RPC reaches."""
    reached: set[Key] = set()
    for module, node in servicer_methods().values():
        reached |= walk([(module, node)]).defs
    servicers = set(SERVICER_MODULES.values())
    lost: dict[str, set[str]] = {}
    for module in modules().values():
        if module.name in SHARED_MODULES or module.name in (CONSTRAINTS_MODULE, "qdata_server.contract"):
            continue
        for name, node in module.defs.items():
            if (module.name, name) in reached or module.name in servicers:
                continue
            for child in ast.walk(node):
                if reason := _reason_of(child):
                    lost.setdefault(reason, set()).add(f"{module.name}:{name}")
        for statement in module.tree.body:
            if statement not in module.defs.values():
                for child in ast.walk(statement):
                    if reason := _reason_of(child):
                        lost.setdefault(reason, set()).add(f"{module.name} (module level)")
    return lost


def iter_reason_literals() -> Iterator[tuple[str, int, str]]:
    """(file, line, literal) for every string literal in server/ Python that spells a reason."""
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text("utf-8"), str(path))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if node.value in ALL_REASONS or re.fullmatch(
                    r"[A-Z]+(?:_[A-Z]+)*_(?:TAKEN|NOT_FOUND|EXISTS)", node.value
                ):
                    yield str(path.relative_to(ROOT)), node.lineno, node.value
            elif isinstance(node, ast.JoinedStr):
                text = "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
                if re.search(r"_(?:TAKEN|NOT_FOUND|EXISTS)\b", text):
                    yield str(path.relative_to(ROOT)), node.lineno, text
