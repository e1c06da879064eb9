"""The committed generated modules match the contract in protos/."""

import filecmp
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "clients" / "python" / "qdata" / "v1"


def _load_generator():
    spec = importlib.util.spec_from_file_location("qdata_generate", ROOT / "clients" / "python" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_fresh(tmp_path):
    _load_generator().generate(tmp_path)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(
        p.relative_to(ROOT / "clients" / "python") for p in GENERATED.glob("*_pb2*") if p.suffix in (".py", ".pyi")
    )
    assert [str(p) for p in fresh] == [str(p) for p in committed], "run `make proto`: generated files differ in name"
    stale = [str(p) for p in fresh if not filecmp.cmp(tmp_path / p, ROOT / "clients" / "python" / p, shallow=False)]
    assert not stale, f"generated code is stale; run `make proto` and commit: {stale}"


def test_every_proto_has_generated_modules():
    protos = sorted(p.stem for p in (ROOT / "protos" / "qdata" / "v1").glob("*.proto"))
    assert protos == ["chat", "error_reason", "ledger", "options", "usage", "user"]
    for stem in protos:
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            assert (GENERATED / f"{stem}{suffix}").is_file()
