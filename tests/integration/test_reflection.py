"""Server reflection against a real server: v1 and v1alpha both list the services (buf curl asks
for one protocol at a time), and grpcurl's describe shows the contract's comments."""

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qdata_server.health import SERVICE_NAMES

ROOT = Path(__file__).resolve().parents[2]
GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
BUF = ROOT / "node_modules" / ".bin" / "buf"


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


def buf_list(api, protocol: str) -> subprocess.CompletedProcess[str]:
    return run(
        [
            str(BUF),
            "curl",
            "--http2-prior-knowledge",
            "--protocol",
            "grpc",
            "--reflect-protocol",
            protocol,
            "--list-services",
            f"http://{api.address}",
        ]
    )


@pytest.mark.skipif(not BUF.exists(), reason="buf not installed: run `make tools`")
@pytest.mark.parametrize("protocol", ["grpc-v1", "grpc-v1alpha"])
async def test_both_reflection_versions_list_the_services(api, protocol):
    listed = await asyncio.to_thread(buf_list, api, protocol)
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {*SERVICE_NAMES, "grpc.health.v1.Health"} <= services
    assert {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= services


@pytest.mark.skipif(not BUF.exists(), reason="buf not installed: run `make tools`")
async def test_v1_reflection_describes_a_method(api):
    # buf curl resolves the method's schema over reflection v1 before calling it.
    called = await asyncio.to_thread(
        run,
        [
            str(BUF),
            "curl",
            "--http2-prior-knowledge",
            "--protocol",
            "grpc",
            "--reflect-protocol",
            "grpc-v1",
            "-d",
            "{}",
            f"http://{api.address}/grpc.health.v1.Health/Check",
        ],
    )
    assert called.returncode == 0, called.stderr
    assert "SERVING" in called.stdout


async def test_describe_shows_the_contracts_comments(api):
    described = await asyncio.to_thread(
        run, [GRPCURL, "-plaintext", "-max-time", "10", api.address, "describe", "qdata.v1.LedgerService"]
    )
    assert described.returncode == 0, described.stderr
    assert "rpc GetBalance" in described.stdout
    assert "Returns a user's balance in one currency." in described.stdout


async def test_describe_finds_a_method_by_its_full_name(api):
    # protobuf's upb pool does not resolve pkg.Service.Method; reflection asks for the service.
    described = await asyncio.to_thread(
        run,
        [GRPCURL, "-plaintext", "-max-time", "10", api.address, "describe", "qdata.v1.LedgerService.Charge"],
    )
    assert described.returncode == 0, described.stderr
    assert "qdata.v1.LedgerService.Charge is a method" in described.stdout
    assert "rpc Charge ( .qdata.v1.ChargeRequest ) returns ( .qdata.v1.ChargeResponse )" in described.stdout
    missing = await asyncio.to_thread(
        run,
        [GRPCURL, "-plaintext", "-max-time", "10", api.address, "describe", "qdata.v1.LedgerService.NoSuchMethod"],
    )
    assert missing.returncode != 0
    assert "Symbol not found" in missing.stderr
