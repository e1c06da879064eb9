"""Command line: `python -m qdata_server [serve|migrate|status|verify|seed]`.

serve    runs the gRPC service (the default; the container's entrypoint)
migrate  applies pending migrations (a Kubernetes Job or init container runs this)
status   lists pending migrations
verify   checks the migration history and the live schema; exits 1 on any problem
seed     loads the sample data into an empty database
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from qdata_server import logs
from qdata_server.config import ConfigError, Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="qdata-server", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "migrate", "status", "verify", "seed"])
    args = parser.parse_args(argv)
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
    conninfo = serve.resolve_database(settings)
    try:
        if args.command == "migrate":
            applied = migrate.migrate(conninfo)
            print("applied: " + (", ".join(applied) if applied else "nothing (schema is current)"))
        elif args.command == "status":
            todo = migrate.status(conninfo)
            print("pending: " + (", ".join(f"{m.version:04d}_{m.name}" for m in todo) if todo else "none"))
        elif args.command == "verify":
            problems = migrate.verify(conninfo)
            for problem in problems:
                print(f"problem: {problem}")
            print("schema ok" if not problems else f"{len(problems)} problem(s)")
            return 1 if problems else 0
        elif args.command == "seed":
            asyncio.run(serve.seed_database(settings, conninfo))
            print("seeded")
    except migrate.MigrationError as exc:
        print(f"migration error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
