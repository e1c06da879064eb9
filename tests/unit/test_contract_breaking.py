"""`make lint`'s buf breaking check against the committed baseline (protos/breaking/baseline.binpb):
it passes on the contract as it is and on an additive change, and fails on a removed field or a
renamed RPC."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / "node_modules" / ".bin" / "buf"
LEDGER = Path("qdata/v1/ledger.proto")

pytestmark = pytest.mark.skipif(not BUF.exists(), reason="buf not installed: run `make tools`")


def _breaking(tmp_path: Path, edit: tuple[str, str] | None) -> subprocess.CompletedProcess[str]:
    protos = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", protos)
    if edit is not None:
        text = (protos / LEDGER).read_text(encoding="utf-8")
        assert edit[0] in text
        (protos / LEDGER).write_text(text.replace(edit[0], edit[1], 1), encoding="utf-8")
    return subprocess.run(
        [str(BUF), "breaking", "--against", "breaking/baseline.binpb"],
        cwd=protos,
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_contract_matches_the_baseline(tmp_path):
    result = _breaking(tmp_path, None)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_additive_change_passes(tmp_path):
    anchor = "message GetBalanceRequest {\n"
    result = _breaking(tmp_path, (anchor, anchor + "  // A new field.\n  string note = 3;\n"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_removed_field_fails(tmp_path):
    field = '  // ISO 4217 currency code; empty means "USD".\n  string currency_code = 2;\n'
    result = _breaking(tmp_path, (field, ""))
    assert result.returncode != 0
    assert "currency_code" in result.stdout + result.stderr


def test_a_renamed_rpc_fails(tmp_path):
    result = _breaking(tmp_path, ("rpc GetBalance(", "rpc FetchBalance("))
    assert result.returncode != 0
    assert "GetBalance" in result.stdout + result.stderr
