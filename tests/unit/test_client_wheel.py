"""`make wheel`'s build: the wheel another repository installs carries the generated code,
the typed stubs, the py.typed marker, the grpc floors and the version, and imports on its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "python"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # The Makefile's wheel target's command, on a copy: setuptools builds in the source tree.
    source = tmp_path_factory.mktemp("src") / "python"
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(source)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("qdata_client-*.whl")
    return built


def test_wheel_carries_the_generated_code_and_its_types(wheel):
    version = tomllib.loads((CLIENT / "pyproject.toml").read_text("utf-8"))["project"]["version"]
    assert wheel.name == f"qdata_client-{version}-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {"qdata/__init__.py", "qdata/client.py", "qdata/_calls.py", "qdata/_rpcs.py", "qdata/py.typed"}
    expected.add("qdata/v1/descriptors.binpb")  # the contract with comments, for the server's reflection
    for proto in ("chat", "error_reason", "ledger", "options", "usage", "user"):
        expected |= {f"qdata/v1/{proto}{suffix}" for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")}
    assert expected <= names, sorted(expected - names)
    metadata = zipfile.ZipFile(wheel).read(f"qdata_client-{version}.dist-info/METADATA").decode()
    assert "Requires-Dist: grpcio<2,>=1.85.1" in metadata
    assert "Requires-Dist: grpcio-status<2,>=1.85.1" in metadata


def test_installed_wheel_imports_and_knows_its_version(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    probe = "import qdata, qdata.client; print(qdata.__file__); print(qdata.__version__, qdata.client.USER_AGENT)"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        check=True,
    )
    where, versions = result.stdout.splitlines()
    assert Path(where).is_relative_to(site)  # the wheel's copy, not this checkout's
    version = tomllib.loads((CLIENT / "pyproject.toml").read_text("utf-8"))["project"]["version"]
    assert versions == f"{version} qdata-client/{version}"
