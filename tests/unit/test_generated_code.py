"""The committed generated code matches the contract in protos/, and the client's pins match it."""

import filecmp
import importlib.util
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "python"
GENERATED = CLIENT / "qdata" / "v1"


def _load_generator():
    spec = importlib.util.spec_from_file_location("qdata_generate", CLIENT / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _committed() -> list[Path]:
    """Every generated file in git: qdata/v1/*_pb2*.py(i), the descriptors with comments
    (qdata/v1/descriptors.binpb) and the typed RPC methods, qdata/_rpcs.py."""
    files = [p for p in GENERATED.glob("*_pb2*") if p.suffix in (".py", ".pyi")]
    files += [GENERATED / "descriptors.binpb", CLIENT / "qdata" / "_rpcs.py"]
    return sorted(p.relative_to(CLIENT) for p in files)


def test_generated_code_is_fresh(tmp_path):
    _load_generator().generate(tmp_path)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert [str(p) for p in fresh] == [str(p) for p in _committed()], "run `make proto`: generated files differ"
    stale = [str(p) for p in fresh if not filecmp.cmp(tmp_path / p, CLIENT / p, shallow=False)]
    assert not stale, f"generated code is stale; run `make proto` and commit: {stale}"


def test_every_proto_has_generated_modules():
    protos = sorted(p.stem for p in (ROOT / "protos" / "qdata" / "v1").glob("*.proto"))
    assert protos == ["budget", "chat", "error_reason", "ledger", "options", "usage", "user"]
    for stem in protos:
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"):
            assert (GENERATED / f"{stem}{suffix}").is_file()


def test_every_rpc_has_a_typed_method_on_both_clients():
    from qdata import _rpcs
    from qdata.v1 import chat_pb2, ledger_pb2, usage_pb2, user_pb2

    for module in (chat_pb2, ledger_pb2, usage_pb2, user_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for cls in (getattr(_rpcs, service.name), getattr(_rpcs, f"Async{service.name}")):
                for method in service.methods:
                    hints = getattr(cls, method.name).__annotations__
                    assert hints["request"] == f"{module.__name__.rsplit('.', 1)[1]}.{method.input_type.name}"
                    assert method.output_type.name in hints["return"], (cls.__name__, method.name)


def _floor(requirement: str) -> str:
    match = re.fullmatch(r"[a-z-]+>=([0-9.]+),<\d+", requirement)
    assert match, requirement
    return match.group(1)


def test_grpc_floor_is_what_the_generated_code_checks():
    """Below GRPC_GENERATED_VERSION the generated *_pb2_grpc.py modules raise at import."""
    generated = {
        re.search(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", p.read_text("utf-8")).group(1)
        for p in GENERATED.glob("*_pb2_grpc.py")
    }
    assert len(generated) == 1, generated
    dependencies = tomllib.loads((CLIENT / "pyproject.toml").read_text("utf-8"))["project"]["dependencies"]
    floors = {d.split(">=")[0]: _floor(d) for d in dependencies}
    assert floors["grpcio"] == floors["grpcio-status"] == generated.pop()


def test_version_has_one_source():
    import qdata
    from qdata import client

    pyproject = tomllib.loads((CLIENT / "pyproject.toml").read_text("utf-8"))["project"]["version"]
    assert qdata.__version__ == pyproject, "reinstall the client (make install) after a version change"
    assert client.USER_AGENT == f"qdata-client/{pyproject}"
    changelog = (CLIENT / "CHANGELOG.md").read_text("utf-8")
    assert f"## {pyproject}" in changelog, "CHANGELOG.md has no section for the current version"
