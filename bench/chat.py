"""`python -m bench --suite chat`: ChatService's performance shape, as ratios (see bench/README.md).

Two claims of issue 4, each measured on a small and a big session of the same user in the same run:

(a) AppendMessages costs the same whatever the session's length: append latency in a session of
    --small-messages (1,000) versus --big-messages (100,000), through gRPC with a Python client,
    in alternating rounds. Ratio big / small, ideally 1.
(b) "The last 50 messages" of the big session is an index seek: the plan of the query ListMessages
    runs (EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)) must be a backward Index Scan of the primary key
    with no Sort and no Seq Scan, reading about 50 rows; plus ListMessages(DESCENDING, 50) latency,
    big / small.

The sessions are filled with one INSERT ... SELECT straight into the database (one chain from the
root, with the depths and jump pointers chat/tree.py gives it; the counters on the session row are
set to match), then ANALYZEd; only the measured calls go through
gRPC. No speed is asserted: the bench exits 1 only if a claim's evidence is missing (a Sort or Seq
Scan in the plan, a failed call, numbers that are not gapless afterwards).
"""

from __future__ import annotations

import os
import statistics
import time
import uuid

from bench.suite import SuiteRun, run_suite

# The filler messages: alternating user and assistant turns of about 150 bytes each, one chain
# from the root, so message g is at depth g and jumps to depth (and number) jumps[g - 1].
_FILL = """
INSERT INTO chat_messages (user_id, session_id, sequence_number, parent_sequence_number, role, content,
                           input_tokens, output_tokens, depth, jump_sequence_number, jump_depth)
SELECT %(user_id)s, %(session_id)s, g, g - 1,
       CASE WHEN g %% 2 = 1 THEN 'user' ELSE 'assistant' END,
       'Message ' || g || ': lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod '
           || 'tempor incididunt ut labore et dolore magna aliqua.',
       10, 20, g, j.jump, j.jump
  FROM unnest(%(jumps)s::bigint[]) WITH ORDINALITY AS j (jump, g)
"""
_COUNTERS = """
UPDATE chat_sessions
   SET last_sequence_number = %(count)s, current_leaf = %(count)s, message_count = %(count)s,
       total_input_tokens = 10 * %(count)s, total_output_tokens = 20 * %(count)s, last_activity_at = now()
 WHERE user_id = %(user_id)s AND session_id = %(session_id)s
"""


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _stats(samples_ms: list[float]) -> dict:
    return {
        "n": len(samples_ms),
        "mean_ms": statistics.fmean(samples_ms),
        "p50_ms": _percentile(samples_ms, 0.50),
        "p90_ms": _percentile(samples_ms, 0.90),
        "p99_ms": _percentile(samples_ms, 0.99),
    }


def _plan_nodes(plan: dict) -> list[dict]:
    nodes, todo = [], [plan]
    while todo:
        node = todo.pop()
        nodes.append(node)
        todo.extend(node.get("Plans", []))
    return nodes


def _fill(database_url: str, user_id: str, session_id: str, count: int) -> float:
    import psycopg

    from qdata_server.chat import tree

    started = time.perf_counter()
    jumps = [place.jump_sequence_number for place in tree.chain_places(0, {}, 1, count)]
    with psycopg.connect(database_url) as conn:
        params = {"user_id": user_id, "session_id": session_id, "count": count, "jumps": jumps}
        conn.execute(_FILL, params)
        conn.execute(_COUNTERS, params)
    return time.perf_counter() - started


def _explain_last_50(database_url: str, user_id: str, session_id: str) -> dict:
    """The plan and timing of the exact query ListMessages(order=DESCENDING, page_size=50) runs."""
    import psycopg

    from qdata_server.db.sql import query

    params = {
        "user_id": user_id,
        "session_id": session_id,
        "after": 0,
        "before": 2**63 - 1,
        "limit": 51,  # ListMessages reads one more than the page to know whether another follows
    }
    with psycopg.connect(database_url, autocommit=True) as conn:
        # Fresh statistics and visibility map, so autovacuum does not start during the measurement.
        conn.execute("VACUUM (ANALYZE) chat_messages")
        text = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query("list_chat_messages_descending")
        [[document]] = conn.execute(text, params).fetchall()
    root = document[0]["Plan"]
    nodes = _plan_nodes(root)
    scans = [n for n in nodes if n["Node Type"] in ("Index Scan", "Index Only Scan")]
    bad = [n["Node Type"] for n in nodes if n["Node Type"] in ("Sort", "Seq Scan", "Bitmap Heap Scan")]
    return {
        "node_types": [n["Node Type"] for n in nodes],
        "index_scans": [
            {
                "index": n.get("Index Name"),
                "direction": n.get("Scan Direction"),
                "actual_rows": n.get("Actual Rows"),
                "shared_hit_blocks": n.get("Shared Hit Blocks"),
                "shared_read_blocks": n.get("Shared Read Blocks"),
            }
            for n in scans
        ],
        "forbidden_nodes": bad,
        "execution_time_ms": document[0].get("Execution Time"),
        "planning_time_ms": document[0].get("Planning Time"),
        "ok": bool(scans) and not bad,
        "plan": document,
    }


def _measure(address: str, user_id: str, sessions: dict[str, str], *, appends: int, reads: int, rounds: int) -> dict:
    """Alternating rounds (small, big, then big, small, ...) of sequential appends and reads."""
    import grpc

    from qdata.v1 import chat_pb2, chat_pb2_grpc

    samples: dict[str, dict[str, list[float]]] = {label: {"append": [], "last50": []} for label in sessions}
    with grpc.insecure_channel(address) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)

        def append(session_id: str) -> float:
            request = chat_pb2.AppendMessagesRequest(
                request_id=str(uuid.uuid4()),
                user_id=user_id,
                session_id=session_id,
                messages=[chat_pb2.MessageInput(role=chat_pb2.MESSAGE_ROLE_USER, content="one more question")],
            )
            started = time.perf_counter()
            stub.AppendMessages(request, timeout=30)
            return (time.perf_counter() - started) * 1000

        def last50(session_id: str) -> float:
            request = chat_pb2.ListMessagesRequest(
                user_id=user_id, session_id=session_id, order=chat_pb2.MESSAGE_ORDER_DESCENDING, page_size=50
            )
            started = time.perf_counter()
            reply = stub.ListMessages(request, timeout=30)
            elapsed = (time.perf_counter() - started) * 1000
            if len(reply.messages) != 50:
                raise RuntimeError(f"ListMessages returned {len(reply.messages)} messages, expected 50")
            return elapsed

        # Warm-up: connections, prepared statements, caches.
        for session_id in sessions.values():
            for _ in range(20):
                append(session_id)
                last50(session_id)
        labels = list(sessions)
        for number in range(rounds):
            for label in labels if number % 2 == 0 else labels[::-1]:
                session_id = sessions[label]
                samples[label]["append"] += [append(session_id) for _ in range(appends // rounds)]
                samples[label]["last50"] += [last50(session_id) for _ in range(reads // rounds)]
    return samples


def run(args) -> int:
    """Runs the chat suite; returns the exit status."""
    small, big = args.small_messages, args.big_messages
    print(
        f"qdata chat bench: append and last-50 latency in a session of {small:,} vs {big:,} messages "
        f"({args.appends} appends and {args.reads} reads per session, {args.rounds} alternating rounds); "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    settings = {
        "small_messages": small,
        "big_messages": big,
        "appends": args.appends,
        "reads": args.reads,
        "rounds": args.rounds,
    }

    def body(run: SuiteRun) -> None:
        import grpc

        from bench import servers
        from qdata.v1 import chat_pb2, chat_pb2_grpc

        database_url, address = run.start(workers=1, bcrypt_cost=args.bcrypt_cost)
        user_id = servers.user_id(address, "alice")
        sessions = {}
        with grpc.insecure_channel(address) as channel:
            stub = chat_pb2_grpc.ChatServiceStub(channel)
            for label in ("small", "big"):
                request = chat_pb2.CreateSessionRequest(request_id=str(uuid.uuid4()), user_id=user_id, title=label)
                sessions[label] = stub.CreateSession(request, timeout=10).session.id
        for label, count in (("small", small), ("big", big)):
            seconds = _fill(database_url, user_id, sessions[label], count)
            print(f"  filled the {label} session with {count:,} messages in {seconds:.1f}s", flush=True)
        explain = _explain_last_50(database_url, user_id, sessions["big"])
        run.report["explain_last_50_big"] = explain

        print("measuring ...", flush=True)
        samples = _measure(address, user_id, sessions, appends=args.appends, reads=args.reads, rounds=args.rounds)
        with grpc.insecure_channel(address) as channel:
            stub = chat_pb2_grpc.ChatServiceStub(channel)
            for label, count in (("small", small), ("big", big)):
                got = stub.GetSession(
                    chat_pb2.GetSessionRequest(user_id=user_id, session_id=sessions[label]), timeout=10
                ).session
                expected = count + 20 + (args.appends // args.rounds) * args.rounds  # 20 warm-up appends
                if got.last_sequence_number != expected or got.message_count != expected:
                    raise RuntimeError(
                        f"the {label} session ends at {got.last_sequence_number} with {got.message_count} "
                        f"messages, expected {expected}"
                    )
        results = {
            label: {kind: _stats(values) for kind, values in by_kind.items()} for label, by_kind in samples.items()
        }
        run.report["results"] = results
        run.report["ratios_big_over_small"] = {
            kind: {
                stat: results["big"][kind][stat] / results["small"][kind][stat]
                for stat in ("mean_ms", "p50_ms", "p90_ms", "p99_ms")
            }
            for kind in ("append", "last50")
        }
        print(_summary(run.report), flush=True)
        if not explain["ok"]:
            run.failure = f"the last-50 plan is not a plain index scan: {explain['node_types']}"

    return run_suite("chat", settings, args.out, body)


def _summary(report: dict) -> str:
    settings, results, ratios = report["settings"], report["results"], report["ratios_big_over_small"]
    explain = report["explain_last_50_big"]
    small, big = f"{settings['small_messages']:,}", f"{settings['big_messages']:,}"
    lines = [
        f"  {'':<22}{'session of ' + small:>22}{'session of ' + big:>22}{'ratio big/small':>18}",
    ]
    for kind, title in (("append", "AppendMessages (1)"), ("last50", "ListMessages last 50")):
        for stat in ("p50_ms", "mean_ms", "p90_ms", "p99_ms"):
            lines.append(
                f"  {title + ' ' + stat.split('_')[0]:<22}{results['small'][kind][stat]:>19.2f} ms"
                f"{results['big'][kind][stat]:>19.2f} ms{ratios[kind][stat]:>18.2f}"
            )
    scan = explain["index_scans"][0] if explain["index_scans"] else {}
    lines += [
        f"  last-50 plan in the {big}-message session: {' -> '.join(explain['node_types'])}; "
        f"{scan.get('index')} {scan.get('direction', '')}, {scan.get('actual_rows')} rows, "
        f"{scan.get('shared_hit_blocks')} buffers hit, {explain['execution_time_ms']:.3f} ms execution; "
        f"Sort/Seq Scan: {', '.join(explain['forbidden_nodes']) or 'none'}",
        "  (ratios near 1 mean the cost does not grow with the session; compare ratios, not ms, across machines)",
    ]
    return "\n".join(lines)
