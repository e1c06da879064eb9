"""Command line: `python -m qdata_server [serve|migrate|status|verify|seed]`.

serve    runs the gRPC service (the default; the container's entrypoint)
migrate  applies pending migrations and changed db/functions files (a Kubernetes Job or init
         container runs this)
status   lists pending migrations and db/functions files
verify   checks the migration history, the live schema and database code; exits 1 on any problem
verify-audit  recomputes the audit trail's hash chain; exits 1 on an edited or missing event, or
         on an event left unsealed longer than QDATA_AUDIT_SEAL_MAX_DELAY_SECONDS
seal-audit  chains every audit event whose transaction has ended (the servers do it in the
         background; this is for a database no server is writing to, or before a verify-audit)
seed     loads the sample data into an empty database
rewrap-keys [--batch N]
         re-wraps every stored API key's data key under the key ring's primary version, online,
         in batches of N (default 500); resumable; afterwards older ring versions can be removed
import FILE [--dry-run] [--jobs N]
         loads a JSON Lines dump of the old services' dictionaries through the domain functions
         (docs/import.md): validates everything first, resumes after a crash, creates nothing twice,
         ends with a reconciliation report; exit 0 when it reconciles exactly, 1 otherwise
hash-token  reads a caller token on stdin (or makes a new one if stdin is empty) and prints the
         sha256:<hex> form QDATA_AUTH_TOKENS takes

migrate, status, verify, verify-audit, seal-audit and rewrap-keys act on QDATA_OWNER_DATABASE_URL, else
DATABASE_URL, else (neither set) the embedded PostgreSQL. serve, seed and import need DATABASE_URL, the
serving login: with QDATA_OWNER_DATABASE_URL alone they exit 2 with a configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from qdata_server import logs
from qdata_server.config import ConfigError, Settings
from qdata_server.startup import StartupError


def main(argv: list[str] | None = None) -> int:
    """Runs one command; returns its exit status.

    The one place a refused start becomes an exit status: a bad setting read from the environment
    is 2 ("configuration error: ..."), a StartupError raised later (serve's files, the key ring,
    the embedded PostgreSQL) is 1 with its message; worker processes do the same (serve.py).
    """
    try:
        return _command(argv)
    except StartupError as exc:
        print(exc, file=sys.stderr)
        return 1


def _command(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="qdata-server", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=[
            "serve",
            "migrate",
            "status",
            "verify",
            "verify-audit",
            "seal-audit",
            "seed",
            "import",
            "hash-token",
            "rewrap-keys",
        ],
    )
    parser.add_argument("file", nargs="?", help="import: the JSON Lines dump")
    parser.add_argument("--dry-run", action="store_true", help="import: validate and report, write nothing")
    parser.add_argument("--jobs", type=int, default=4, help="import: users imported at once (default 4)")
    parser.add_argument("--batch", type=int, default=500, help="rewrap-keys: keys per transaction (default 500)")
    args = parser.parse_args(argv)
    if args.file is not None and args.command != "import":
        parser.error(f"{args.command} takes no file")
    if args.command == "hash-token":
        from qdata_server import auth

        return auth.hash_token_command(sys.stdin, sys.stdout)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)

    from qdata_server import serve
    from qdata_server.db import migrate

    if args.command == "serve":
        return serve.serve(settings)
    if args.command == "seed":
        # Seeding goes through the service code, as served.
        try:
            databases = serve.resolve_database(settings)
        except ConfigError as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            return 2
        asyncio.run(serve.seed_database(settings, databases.serving))
        print("seeded")
        return 0
    if args.command == "import":
        return import_dump(settings, args.file, dry_run=args.dry_run, jobs=args.jobs)
    # Operator commands run as the schema's owner, on the database they are given.
    conninfo = serve.resolve_owner_database(settings)
    try:
        if args.command == "migrate":
            applied = migrate.migrate(conninfo)
            print("applied: " + (", ".join(applied) if applied else "nothing (schema is current)"))
        elif args.command == "status":
            todo = migrate.status(conninfo)
            print("pending: " + migrate.labels(todo))
        elif args.command == "verify":
            problems = migrate.verify(conninfo)
            for problem in problems:
                print(f"problem: {problem}")
            print("schema ok" if not problems else f"{len(problems)} problem(s)")
            return 1 if problems else 0
        elif args.command == "verify-audit":
            from qdata_server import audit_chain

            report = asyncio.run(
                audit_chain.verify(conninfo, max_unsealed_seconds=settings.audit_seal_max_delay_seconds)
            )
            for broken in report.problems:
                print(f"problem: {broken}")
            if report.unsealed:
                print(
                    f"unsealed: {report.unsealed} event(s) not chained yet, the oldest"
                    f" {report.oldest_unsealed_seconds or 0:.1f} s old"
                    f" (bound {settings.audit_seal_max_delay_seconds:g} s)"
                )
            if report.ok:
                print(f"audit trail intact: {report.checked} event(s) verified in {report.chains} chain(s)")
                return 0
            print(f"audit trail broken: {len(report.problems)} problem(s) in {report.checked} event(s) checked")
            return 1
        elif args.command == "seal-audit":
            from qdata_server import audit_sealer

            print(f"sealed {asyncio.run(audit_sealer.seal_all(conninfo))} audit event(s)")
        elif args.command == "rewrap-keys":
            return rewrap_keys(settings, conninfo, args.batch)
    except migrate.MigrationError as exc:
        print(f"migration error: {exc}", file=sys.stderr)
        return 1
    return 0


def rewrap_keys(settings: Settings, conninfo: str, batch: int) -> int:
    """The rewrap-keys command: progress on stdout, problems on stderr."""
    import psycopg
    from psycopg.rows import dict_row

    from qdata_server.users import api_keys, vault

    if not 1 <= batch <= 100_000:
        print("--batch must be 1 to 100000", file=sys.stderr)
        return 2
    try:
        ring = vault.load_key_ring(settings)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if ring is None:
        print("no key ring configured: set QDATA_KEY_RING or QDATA_KEY_RING_FILE", file=sys.stderr)
        return 2

    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True, row_factory=dict_row) as conn:
            await api_keys.rewrap_all(conn, ring, batch=batch, progress=lambda line: print(line, flush=True))

    try:
        asyncio.run(run())
    except vault.VaultError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


def import_dump(settings: Settings, path: str | None, *, dry_run: bool, jobs: int) -> int:
    """The import command: the report on stdout, progress on stderr (a bar on a terminal)."""
    from qdata_server import serve

    if not path:
        print("import needs the dump's path", file=sys.stderr)
        return 2
    if not 1 <= jobs <= 64:
        print("--jobs must be 1 to 64", file=sys.stderr)
        return 2
    try:
        databases = serve.resolve_database(settings)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        with open(path, encoding="utf-8") as stream:
            report = asyncio.run(serve.import_database(settings, databases.serving, stream, dry_run=dry_run, jobs=jobs))
    except OSError as exc:
        print(f"cannot read {path}: {exc}", file=sys.stderr)
        return 2
    for line in report.lines_of():
        print(line)
    if dry_run:
        return 0 if not report.problems else 1
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
