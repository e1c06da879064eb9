"""The bench's pure helpers: CPU accounting from /proc and the parsing of pgbench's summary.

The bench itself is not part of the suite (speed is measured, never asserted); these helpers turn
its raw readings into the figures it reports, so a mistake here would silently skew every row.
"""

from __future__ import annotations

import os

import pytest

from bench import cpu, pgbench

# /proc/<pid>/stat of a process whose name holds spaces and parentheses (fields 14-17 are
# utime, stime, cutime, cstime).
STAT = (
    "4242 (python (worker) 2) S 4200 4242 4200 0 -1 4194560 12000 300 0 0 "
    "1500 250 70 30 20 0 9 0 123456 1000000 20000 18446744073709551615"
)


def test_stat_ticks_reads_own_and_reaped_children_time_past_a_name_with_parentheses() -> None:
    assert cpu.stat_ticks(STAT) == (1500, 250, 70, 30)


def test_tree_seconds_counts_the_current_process() -> None:
    # Burn a little CPU so the reading cannot be zero, then compare with the kernel's own figure.
    sum(i * i for i in range(300_000))
    times = os.times()
    own = cpu.tree_seconds([os.getpid()])
    assert own > 0
    assert own == pytest.approx(times.user + times.system + times.children_user + times.children_system, abs=0.05)


def test_tree_seconds_of_a_gone_process_is_zero() -> None:
    assert cpu.tree_seconds([2**22 + 1]) == 0.0


def test_difference_and_per_call() -> None:
    used = cpu.difference({"server": 10.0, "postgres": 4.0}, {"server": 12.5, "postgres": 5.0, "load_generator": 1.0})
    assert used == {"server": 2.5, "postgres": 1.0, "load_generator": 1.0}
    assert cpu.per_call_ms(used, 1000) == {"server": 2.5, "postgres": 1.0, "load_generator": 1.0}
    assert cpu.per_call_ms(used, 0) == {"server": None, "postgres": None, "load_generator": None}


# pgbench 18's summary of a -T run.
PGBENCH_OUTPUT = """\
pgbench (18.0)
transaction type: <builtin: TPC-B (sort of)>
scaling factor: 10
query mode: simple
number of clients: 8
number of threads: 2
maximum number of tries: 1
duration: 10 s
number of transactions actually processed: 51550
number of failed transactions: 0 (0.000%)
latency average = 1.551 ms
initial connection time = 12.345 ms
tps = 5155.421337 (without initial connection time)
"""


def test_pgbench_parse_reads_tps_transactions_and_failures() -> None:
    result = pgbench.parse(PGBENCH_OUTPUT)
    assert result.tps == pytest.approx(5155.421337)
    assert result.transactions == 51550
    assert result.failed == 0
    assert result.clients == 8
    assert result.duration_s == 10
    assert result.latency_avg_ms == pytest.approx(1.551)
    assert result.ok


def test_pgbench_failed_transactions_make_the_run_invalid() -> None:
    result = pgbench.parse(PGBENCH_OUTPUT.replace("failed transactions: 0 (0.000%)", "failed transactions: 3 (0.006%)"))
    assert result.failed == 3
    assert not result.ok


def test_pgbench_parse_refuses_output_without_a_summary() -> None:
    with pytest.raises(ValueError, match="unexpected pgbench output"):
        pgbench.parse("pgbench: error: connection to server failed\n")


def test_pgbench_connection_args_from_a_socket_url() -> None:
    url = "postgresql://postgres:@/qdata_bench?host=/tmp/pg.sock&port=5432"
    assert pgbench.connection_args(url) == ["-h", "/tmp/pg.sock", "-p", "5432", "-U", "postgres"]


def test_by_second_groups_requests_by_their_start_second(tmp_path) -> None:
    from bench import h2load

    start = 1_700_000_000_000_000
    rows = [(start, 200, 1_000), (start + 500_000, 200, 3_000), (start + 1_200_000, 200, 90_000)]
    rows.append((start + 1_300_000, -1, 5_000))  # a request that never finished is left out
    log = tmp_path / "h2load.log"
    log.write_text("".join(f"{t}\t{status}\t{us}\n" for t, status, us in rows))

    seconds = h2load.by_second(log)

    assert [(s["second"], s["requests"], s["max_ms"]) for s in seconds] == [(0, 2, 3.0), (1, 1, 90.0)]
    assert seconds[0]["p50_ms"] == 2.0


def test_background_kinds_name_autovacuum_targets_and_qdata_jobs() -> None:
    from bench import background

    kinds, targets = background._kinds(
        [
            ("autovacuum worker", "active", "autovacuum: VACUUM ANALYZE public.ledger_accounts"),
            ("autovacuum worker", "starting", ""),
            ("client backend", "active", "SELECT audit_seal($1) AS sealed;"),
        ]
    )

    assert kinds == {"autovacuum", "audit_sealer"}
    assert targets == ["VACUUM ANALYZE public.ledger_accounts"]
