"""Drives gRPC unary load with h2load (nghttp2's HTTP/2 load generator, written in C).

gRPC over HTTP/2 is a POST with `content-type: application/grpc` and `te: trailers` whose body
is one length-prefixed message: a compressed flag byte (0), the length as 4 big-endian bytes,
then the serialized protobuf. h2load posts the same body (`-d FILE`) on every stream.

h2load knows HTTP, not gRPC: a gRPC error is an HTTP 200 whose status travels in the trailers,
so h2load counts it as a success. The bench therefore checks the response bytes: every OK
answer carries one response message, an error carries none, so the DATA bytes h2load received
must equal the requests done times the size of the answer a Python client got for the same
body just before the run. A short warm-up runs as its own h2load invocation, since h2load's
--warm-up-time counts warm-up bytes in its traffic totals but not its requests.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import statistics
import struct
import subprocess
from pathlib import Path

INSTALL_HINT = (
    "h2load is not installed. The bench needs it to drive gRPC load from C.\n"
    "Install it (Debian/Ubuntu): sudo apt-get update && sudo apt-get install -y nghttp2-client\n"
    "(macOS: brew install nghttp2)"
)


def find() -> str | None:
    """The h2load executable, or None."""
    return shutil.which("h2load")


def version(executable: str) -> str:
    done = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=10, check=False)
    return done.stdout.strip()


def grpc_frame(message: bytes) -> bytes:
    """One uncompressed gRPC length-prefixed message."""
    return struct.pack(">BI", 0, len(message)) + message


def write_frame(path: Path, message: bytes) -> Path:
    path.write_bytes(grpc_frame(message))
    return path


@dataclasses.dataclass
class Load:
    """How hard to push: h2load's -c, -m and -t."""

    connections: int = 16
    streams: int = 8
    threads: int = 1
    # h2load --rps: requests per second per connection (None: as fast as the server answers).
    rate_per_connection: float | None = None


@dataclasses.dataclass
class Result:
    """What one h2load run reports, plus percentiles from its per-request log."""

    rps: float
    seconds: float
    done: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    non_2xx: int
    data_bytes: int
    min_ms: float
    max_ms: float
    mean_ms: float
    sd_ms: float
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    # Filled in by check_payload: the answer size a Python client saw, and how many answers
    # the DATA bytes account for.
    expected_frame_bytes: int | None = None
    answers_in_data: float | None = None
    grpc_errors: int | None = None

    @property
    def http_failures(self) -> int:
        return self.failed + self.errored + self.timeout + self.non_2xx

    @property
    def ok(self) -> bool:
        return self.done > 0 and self.http_failures == 0 and not self.grpc_errors


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(f"unexpected h2load time {text!r}")
    return float(match[1]) * _UNITS_MS[match[2]]


def parse(output: str) -> Result:
    """Reads h2load's summary (the lines after "finished in")."""

    def grab(pattern: str) -> re.Match:
        match = re.search(pattern, output, re.MULTILINE)
        if not match:
            raise ValueError(f"h2load output lacks {pattern!r}:\n{output}")
        return match

    finished = grab(r"^finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s")
    requests = grab(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout"
    )
    codes = grab(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
    traffic = grab(r"^traffic: .*?, .*?\((\d+)\) data")
    times = grab(r"^time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)")
    return Result(
        rps=float(finished[3]),
        seconds=_ms(finished[1] + finished[2]) / 1000,
        done=int(requests[3]),
        succeeded=int(requests[4]),
        failed=int(requests[5]),
        errored=int(requests[6]),
        timeout=int(requests[7]),
        non_2xx=int(codes[2]) + int(codes[3]) + int(codes[4]),
        data_bytes=int(traffic[1]),
        min_ms=_ms(times[1]),
        max_ms=_ms(times[2]),
        mean_ms=_ms(times[3]),
        sd_ms=_ms(times[4]),
    )


def percentiles(log_file: Path) -> dict[str, float]:
    """p50/p90/p99 request time in ms from h2load's --log-file (start us, status, duration us)."""
    durations = []
    with log_file.open() as rows:
        for row in rows:
            fields = row.split("\t")
            if len(fields) >= 3 and fields[1] != "-1":
                durations.append(int(fields[2]) / 1000)
    if len(durations) < 2:
        return {}
    cuts = statistics.quantiles(durations, n=100, method="inclusive")
    return {"p50_ms": cuts[49], "p90_ms": cuts[89], "p99_ms": cuts[98]}


def by_second(log_file: Path) -> list[dict[str, float]]:
    """Per second of the run (by request start): requests, p50, p99 and max time in ms.

    Shows whether a tail is spread over the run or comes from a few seconds of it (something else
    running then).
    """
    requests: list[tuple[int, float]] = []
    with log_file.open() as rows:
        for row in rows:
            fields = row.split("\t")
            if len(fields) >= 3 and fields[1] != "-1":
                requests.append((int(fields[0]), int(fields[2]) / 1000))
    if not requests:
        return []
    first = min(start for start, _ in requests)
    grouped: dict[int, list[float]] = {}
    for start, duration in requests:
        grouped.setdefault((start - first) // 1_000_000, []).append(duration)
    out = []
    for second in sorted(grouped):
        durations = sorted(grouped[second])
        cuts = statistics.quantiles(durations, n=100, method="inclusive") if len(durations) > 1 else durations * 99
        out.append({"second": second, "requests": len(durations), "p50_ms": cuts[49], "p99_ms": cuts[98]})
        out[-1]["max_ms"] = durations[-1]
    return out


def check_payload(result: Result, expected_frame_bytes: int, *, tolerance: float = 0.0) -> None:
    """Counts gRPC errors from the DATA bytes (see the module docstring).

    tolerance is the relative slack per answer for answers whose size varies a little (a
    timestamp's nanos are a varint); constant-size answers use 0.
    """
    result.expected_frame_bytes = expected_frame_bytes
    answers = result.data_bytes / expected_frame_bytes
    result.answers_in_data = answers
    if abs(answers - result.done) <= result.done * tolerance:
        result.grpc_errors = 0
    else:
        result.grpc_errors = max(1, round(abs(result.done - answers)))


def run(
    executable: str,
    url: str,
    body: Path,
    *,
    duration: float,
    load: Load,
    log_file: Path | None = None,
) -> Result:
    """One timing-based h2load run of `duration` seconds (-D); raises on a broken run."""
    command = [
        executable,
        "-c", str(load.connections),
        "-m", str(load.streams),
        "-t", str(load.threads),
        "-D", f"{duration:g}",
        "-H", "content-type: application/grpc",
        "-H", "te: trailers",
        "-d", str(body),
    ]  # fmt: skip
    if load.rate_per_connection is not None:
        command.append(f"--rps={load.rate_per_connection:g}")
    if log_file is not None:
        command.append(f"--log-file={log_file}")
    command.append(url)
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"h2load exited with {done.returncode}:\n{done.stdout}\n{done.stderr}")
    result = parse(done.stdout)
    if log_file is not None:
        for name, value in percentiles(log_file).items():
            setattr(result, name, value)
    return result


def measure(executable: str, target, *, duration: float, warmup: float, load: Load, tmp: Path, tag: str) -> Result:
    """Warms up, probes the target once from Python, runs h2load and checks every answer.

    target is a bench.servers.Target. Raises if the answers do not all have the probe's size or
    the server died under load.
    """
    body = write_frame(tmp / f"{tag}.body", target.message)
    if warmup > 0:
        run(executable, target.url, body, duration=warmup, load=load)
    expected = len(grpc_frame(target.probe()))
    result = run(executable, target.url, body, duration=duration, load=load, log_file=tmp / f"{tag}.log")
    check_payload(result, expected, tolerance=target.size_tolerance)
    if not target.server.alive():
        raise RuntimeError(f"{target.server.name} died under load:\n{target.server.log_tail()}")
    return result
