"""Command line: `python -m qdata_server [serve|migrate|status|verify|seed]`.

serve    runs the gRPC service (the default; the container's entrypoint)
migrate  applies pending migrations and changed db/functions files (a Kubernetes Job or init
         container runs this)
status   lists pending migrations and db/functions files
verify   checks the migration history and the live schema; exits 1 on any problem
verify-audit  recomputes the audit trail's hash chain; exits 1 on an edited or missing event
seed     loads the sample data into an empty database
rewrap-keys [--batch N]
         re-wraps every stored API key's data key under the key ring's primary version, online,
         in batches of N (default 500); resumable; afterwards older ring versions can be removed
hash-token  reads a caller token on stdin (or makes a new one if stdin is empty) and prints the
         sha256:<hex> form QDATA_AUTH_TOKENS takes

migrate, status, verify, verify-audit and rewrap-keys act on QDATA_OWNER_DATABASE_URL, else
DATABASE_URL, else (neither set) the embedded PostgreSQL. serve and seed need DATABASE_URL, the
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
        choices=["serve", "migrate", "status", "verify", "verify-audit", "seed", "hash-token", "rewrap-keys"],
    )
    parser.add_argument("--batch", type=int, default=500, help="rewrap-keys: keys per transaction (default 500)")
    args = parser.parse_args(argv)
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

            report = asyncio.run(audit_chain.verify(conninfo))
            for broken in report.problems:
                print(f"problem: {broken}")
            if report.ok:
                print(f"audit trail intact: {report.checked} event(s) verified in {report.chains} chain(s)")
                return 0
            print(f"audit trail broken: {len(report.problems)} problem(s) in {report.checked} event(s) checked")
            return 1
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


if __name__ == "__main__":
    sys.exit(main())
