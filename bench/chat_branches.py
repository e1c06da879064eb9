"""`python -m bench --suite chat-branches`: a page of a branch costs the same in a long session.

The issue's setup: messages appended in batches, then ListMessages(scope=BRANCH) right after the
bulk append, before anything ANALYZEs the table. The bench builds two sessions of Alice through
AppendMessages in batches of 100, a small one of --small-branch (100) messages and a big one of
--big-branch (20,000) whose branch has a side branch of two messages (a regeneration) every 20
batches. Autovacuum is off for chat_messages and nothing runs ANALYZE, so every measurement sees
the statistics of a table right after a bulk load (pg_class.reltuples = -1, checked before and
after). Then, in --rounds alternating rounds (small then big, then big then small, ...), --reads
sequential calls each through gRPC with the generated Python stub:

- last 50:   ListMessages(BRANCH, DESCENDING, page_size 50), the current leaf's branch;
- first 50:  ListMessages(BRANCH, ASCENDING, page_size 50);
- middle 50: ListMessages(BRANCH, ASCENDING, page_size 50, after_sequence_number = the middle);
- paging:    every page of the branch, ascending, 50 at a time, following the page tokens (time
             per page; the small session's two pages are paged as often as it takes to collect
             as many pages as one pass over the big one).

Ratios big / small of p50 and mean: about 1 means a page costs the same however long the session.
The bench also runs EXPLAIN (ANALYZE, BUFFERS) of the queries those pages run on the big session,
as the serving role with the settings the server sets, and reports the rows of chat_messages they
read and the buffers they touch. No speed is asserted: it exits 1 only if the evidence is missing
(a call that fails or answers the wrong messages, a Seq Scan or a scan of chat_messages that is not
a lookup of its whole primary key, a table that was analyzed after all).
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from typing import Any

from bench.suite import SuiteRun, run_suite

BATCH = 100
PAGE = 50
KINDS = ("last50", "first50", "middle50", "paging")
TITLES = {
    "last50": "last 50 (DESCENDING)",
    "first50": "first 50 (ASCENDING)",
    "middle50": "middle 50 (ASCENDING)",
    "paging": "paging, per page",
}


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _stats(samples_ms: list[float]) -> dict[str, float]:
    return {
        "n": len(samples_ms),
        "mean_ms": statistics.fmean(samples_ms),
        "p50_ms": _percentile(samples_ms, 0.50),
        "p90_ms": _percentile(samples_ms, 0.90),
    }


def _reltuples(database_url: str) -> float:
    import psycopg

    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT reltuples FROM pg_class WHERE oid = 'chat_messages'::regclass").fetchone()[0]


def _build(stub, user_id: str, title: str, count: int, *, side_every: int) -> dict[str, Any]:
    """A session whose main branch has count messages, appended BATCH at a time through gRPC."""
    from qdata.v1 import chat_pb2

    def append(session_id: str, contents: list[str], parent: int) -> list[int]:
        request = chat_pb2.AppendMessagesRequest(
            request_id=str(uuid.uuid4()),
            user_id=user_id,
            session_id=session_id,
            parent_sequence_number=parent,
            messages=[
                chat_pb2.MessageInput(
                    role=chat_pb2.MESSAGE_ROLE_USER if i % 2 == 0 else chat_pb2.MESSAGE_ROLE_ASSISTANT,
                    content=f"{text}: lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod "
                    "tempor incididunt ut labore et dolore magna aliqua.",
                )
                for i, text in enumerate(contents)
            ],
        )
        return [m.sequence_number for m in stub.AppendMessages(request, timeout=60).messages]

    request = chat_pb2.CreateSessionRequest(request_id=str(uuid.uuid4()), user_id=user_id, title=title)
    session_id = stub.CreateSession(request, timeout=10).session.id
    main: list[int] = []
    started = time.perf_counter()
    for batch in range(count // BATCH):
        main += append(session_id, [f"message {batch}.{i}" for i in range(BATCH)], main[-1] if main else 0)
        if side_every and batch % side_every == side_every - 1:
            append(session_id, ["regenerated", "its follow-up"], main[-BATCH // 2])
    seconds = time.perf_counter() - started
    # The next reads list the current leaf's branch: make it the main branch's end.
    from google.protobuf import field_mask_pb2

    stub.UpdateSession(
        chat_pb2.UpdateSessionRequest(
            request_id=str(uuid.uuid4()),
            session=chat_pb2.Session(id=session_id, user_id=user_id, current_leaf_sequence_number=main[-1]),
            update_mask=field_mask_pb2.FieldMask(paths=["current_leaf_sequence_number"]),
        ),
        timeout=10,
    )
    return {"session_id": session_id, "main": main, "append_seconds": seconds}


def _measure(address: str, user_id: str, sessions: dict[str, dict], *, reads: int, rounds: int) -> dict:
    import grpc

    from qdata.v1 import chat_pb2, chat_pb2_grpc

    samples: dict[str, dict[str, list[float]]] = {label: {kind: [] for kind in KINDS} for label in sessions}
    with grpc.insecure_channel(address) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)

        def page(session: dict, **fields: Any) -> tuple[float, chat_pb2.ListMessagesResponse]:
            request = chat_pb2.ListMessagesRequest(
                user_id=user_id, session_id=session["session_id"], scope=chat_pb2.MESSAGE_SCOPE_BRANCH, **fields
            )
            started = time.perf_counter()
            reply = stub.ListMessages(request, timeout=60)
            return (time.perf_counter() - started) * 1000, reply

        def check(reply, expected: list[int]) -> None:
            got = [m.sequence_number for m in reply.messages]
            if got != expected:
                raise RuntimeError(f"ListMessages answered {got[:3]}...{got[-3:]}, expected {expected[:3]}...")

        def one(session: dict, kind: str) -> list[float]:
            main = session["main"]
            middle = main[len(main) // 2]
            if kind == "last50":
                ms, reply = page(session, order=chat_pb2.MESSAGE_ORDER_DESCENDING, page_size=PAGE)
                check(reply, main[::-1][:PAGE])
                return [ms]
            if kind == "first50":
                ms, reply = page(session, page_size=PAGE)
                check(reply, main[:PAGE])
                return [ms]
            if kind == "middle50":
                ms, reply = page(session, page_size=PAGE, after_sequence_number=middle)
                check(reply, [n for n in main if n > middle][:PAGE])
                return [ms]
            times, seen, token = [], [], ""
            while True:
                ms, reply = page(session, page_size=PAGE, page_token=token)
                times.append(ms)
                seen += [m.sequence_number for m in reply.messages]
                token = reply.next_page_token
                if not token:
                    break
            if seen != main:
                raise RuntimeError(f"paging the branch gave {len(seen)} messages, expected {len(main)}")
            return times

        # Warm-up: connections, prepared statements (psycopg prepares after the 5th use), caches.
        for session in sessions.values():
            for kind in ("last50", "first50", "middle50"):
                for _ in range(10):
                    one(session, kind)
        labels = list(sessions)
        pages_per_pass = max(len(s["main"]) // PAGE for s in sessions.values())
        for number in range(rounds):
            for label in labels if number % 2 == 0 else labels[::-1]:
                session = sessions[label]
                for kind in ("last50", "first50", "middle50"):
                    for _ in range(reads // rounds):
                        samples[label][kind] += one(session, kind)
                paged: list[float] = []
                while len(paged) < pages_per_pass:
                    paged += one(session, "paging")
                samples[label]["paging"] += paged
    return samples


def _explain(database_url: str, user_id: str, session: dict) -> dict[str, dict]:
    """The plans of the branch pages' queries on a session, as the serving role, as the server runs them."""
    import psycopg
    from psycopg.rows import dict_row

    from bench import servers
    from qdata_server.chat.messages import NO_UPPER_BOUND
    from qdata_server.db.sql import query
    from qdata_server.db.transactions import acting_for

    main = session["main"]
    keys = {"user_id": user_id, "session_id": session["session_id"], "limit": PAGE + 1}
    cases = {
        "last50": ("list_chat_branch_descending", {"start": main[-1], "after": 0, "before": NO_UPPER_BOUND}),
        "first50": ("list_chat_branch_ascending", {"start": main[-1], "after": 0, "before": NO_UPPER_BOUND}),
        "middle50": (
            "list_chat_branch_ascending",
            {"start": main[-1], "after": main[len(main) // 2], "before": NO_UPPER_BOUND},
        ),
    }
    found = {}
    with psycopg.connect(servers.serving_url(database_url), row_factory=dict_row) as conn:
        for kind, (name, params) in cases.items():
            with conn.transaction(force_rollback=True):
                settings = acting_for(uuid.UUID(user_id)).settings()
                conn.execute(query("begin_transaction"), {**settings, "statement_timeout": None, "clock": ""})
                [row] = conn.execute(
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query(name), {**keys, **params}
                ).fetchall()
            [document] = row["QUERY PLAN"]
            nodes, todo = [], [document["Plan"]]
            while todo:
                node = todo.pop()
                nodes.append(node)
                todo.extend(node.get("Plans", []))
            scans = [n for n in nodes if n.get("Relation Name") == "chat_messages"]
            found[kind] = {
                "query": name,
                "rows_read": round(
                    sum((n["Actual Rows"] + n.get("Rows Removed by Filter", 0)) * n["Actual Loops"] for n in scans)
                ),
                "lookups": round(sum(n["Actual Loops"] for n in scans)),
                "shared_buffers": document["Plan"].get("Shared Hit Blocks", 0)
                + document["Plan"].get("Shared Read Blocks", 0),
                "execution_ms": document.get("Execution Time"),
                "node_types": sorted({n["Node Type"] for n in nodes}),
                "ok": not any(n["Node Type"] in ("Seq Scan", "Bitmap Heap Scan") for n in nodes)
                and all(
                    n.get("Index Name") == "chat_messages_pkey" and "sequence_number =" in n.get("Index Cond", "")
                    for n in scans
                ),
                "plan": document,
            }
    return found


def run(args) -> int:
    """Runs the chat-branches suite; returns the exit status."""
    small, big = args.small_branch, args.big_branch
    print(
        f"qdata chat-branches bench: branch pages in a session of {small:,} vs {big:,} messages right after "
        f"appending them, without ANALYZE ({args.reads} reads of each page per session, {args.rounds} "
        f"alternating rounds); {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    settings = {"small_branch": small, "big_branch": big, "reads": args.reads, "rounds": args.rounds}

    def body(run: SuiteRun) -> None:
        import grpc
        import psycopg

        from bench import servers
        from qdata.v1 import chat_pb2_grpc

        if small % BATCH or big % BATCH or small < 2 * PAGE:
            raise ValueError(f"--small-branch and --big-branch must be multiples of {BATCH}, at least {2 * PAGE}")
        database_url, address = run.start(workers=1, bcrypt_cost=args.bcrypt_cost)
        with psycopg.connect(database_url) as conn:
            # Nothing analyzes the table during the run: the planner keeps the statistics of a
            # table right after a bulk load.
            conn.execute("ALTER TABLE chat_messages SET (autovacuum_enabled = off)")
        user_id = servers.user_id(address, "alice")
        sessions = {}
        with grpc.insecure_channel(address) as channel:
            stub = chat_pb2_grpc.ChatServiceStub(channel)
            for label, count, side_every in (("small", small, 0), ("big", big, 20)):
                sessions[label] = _build(stub, user_id, label, count, side_every=side_every)
                seconds = sessions[label]["append_seconds"]
                print(f"  appended {count:,} messages to the {label} session in {seconds:.1f}s", flush=True)
        run.report["reltuples_before"] = _reltuples(database_url)
        run.report["explain_big"] = _explain(database_url, user_id, sessions["big"])
        run.report["explain_small"] = _explain(database_url, user_id, sessions["small"])

        print("measuring ...", flush=True)
        samples = _measure(address, user_id, sessions, reads=args.reads, rounds=args.rounds)
        run.report["reltuples_after"] = _reltuples(database_url)
        results = {
            label: {kind: _stats(values) for kind, values in by_kind.items()} for label, by_kind in samples.items()
        }
        run.report["results"] = results
        run.report["ratios_big_over_small"] = {
            kind: {stat: results["big"][kind][stat] / results["small"][kind][stat] for stat in ("mean_ms", "p50_ms")}
            for kind in KINDS
        }
        print(_summary(run.report), flush=True)
        if run.report["reltuples_before"] >= 0 or run.report["reltuples_after"] >= 0:
            run.failure = "chat_messages was analyzed during the run: the plans did not see fresh statistics"
        bad = [k for e in ("explain_big", "explain_small") for k, v in run.report[e].items() if not v["ok"]]
        if bad:
            run.failure = f"a branch page's plan is not made of primary-key lookups: {bad}"

    return run_suite("chat-branches", settings, args.out, body)


def _summary(report: dict) -> str:
    settings, results, ratios = report["settings"], report["results"], report["ratios_big_over_small"]
    small, big = f"{settings['small_branch']:,}", f"{settings['big_branch']:,}"
    lines = [f"  {'':<28}{'branch of ' + small:>20}{'branch of ' + big:>20}{'ratio big/small':>18}"]
    for kind in KINDS:
        for stat in ("p50_ms", "mean_ms"):
            lines.append(
                f"  {TITLES[kind] + ' ' + stat.split('_')[0]:<28}{results['small'][kind][stat]:>17.2f} ms"
                f"{results['big'][kind][stat]:>17.2f} ms{ratios[kind][stat]:>18.2f}"
            )
    lines.append("  plans (EXPLAIN ANALYZE as the serving role; rows of chat_messages read, buffers):")
    for kind in ("last50", "first50", "middle50"):
        s, b = report["explain_small"][kind], report["explain_big"][kind]
        lines.append(
            f"    {TITLES[kind]:<24} {s['rows_read']:>4} rows, {s['shared_buffers']:>4} buffers, "
            f"{s['execution_ms']:.2f} ms  |  {b['rows_read']:>4} rows, {b['shared_buffers']:>4} buffers, "
            f"{b['execution_ms']:.2f} ms  ({'key lookups only' if b['ok'] and s['ok'] else 'NOT key lookups'})"
        )
    lines += [
        f"  chat_messages reltuples before / after the reads: {report['reltuples_before']:g} / "
        f"{report['reltuples_after']:g} (-1: never analyzed)",
        "  (ratios near 1 mean a page costs the same however long the session; compare ratios, not ms)",
    ]
    return "\n".join(lines)
