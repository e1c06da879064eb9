"""Generates the qdata.v1 Python modules, their typed stubs and the client's typed RPC methods.

    python clients/python/generate.py [OUTPUT_DIR]

From protos/ it writes, under OUTPUT_DIR (default: this package's directory):

* ``qdata/v1/*_pb2.py`` and ``*_pb2_grpc.py`` (grpcio-tools), with typed stubs: ``*_pb2.pyi`` from
  protoc's own ``--pyi_out`` (the messages; its enum types are what the server's code is typed
  against) and ``*_pb2_grpc.pyi`` from mypy-protobuf's ``protoc-gen-mypy_grpc`` (the stubs, one
  ``UnaryUnaryMultiCallable[Request, Response]`` per RPC, sync and ``grpc.aio``);
* ``qdata/v1/descriptors.binpb``: the contract's ``FileDescriptorSet`` *with source info* (the
  proto comments). The ``*_pb2.py`` modules embed descriptors without it, and the runtime's
  descriptor pool drops it anyway, so the server's reflection (qdata_server/reflection.py) answers
  with these, and ``grpcurl describe`` shows the contract's documentation;
* ``qdata/_rpcs.py``: one class per service for each client (``UserService`` for the blocking
  client, ``AsyncUserService`` for the async one) with one typed method per RPC, taking the RPC's
  request message and returning its response message (a typed stream for server-streaming RPCs),
  and ``RETRY_SAFE_METHODS``, the RPCs the client's opt-in retry policy may resend.

The staleness test generates into a temporary directory and compares, so generated files in git
always match the contract.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import textwrap
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
PROTOS = HERE.parent.parent / "protos"
DESCRIPTORS = "descriptors.binpb"  # the contract's FileDescriptorSet with comments, for reflection
PERMISSION_FIELD = 50001  # qdata.v1.permission, the MethodOptions extension in options.proto


def proto_files() -> list[str]:
    return sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "qdata").rglob("*.proto"))


def _plugin(name: str) -> str:
    """The mypy-protobuf plugin beside this interpreter (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: install mypy-protobuf (requirements-dev.txt)")
    return found


def generate(output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    include = str(resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        descriptors = Path(tmp) / "qdata.binpb"
        args = [
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"-I{include}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--python_out={output}",
            f"--pyi_out={output}",
            f"--grpc_python_out={output}",
            "--mypy_grpc_opt=quiet",
            f"--mypy_grpc_out={output}",
            "--include_source_info",
            f"--descriptor_set_out={descriptors}",
            *proto_files(),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        serialized = descriptors.read_bytes()
    files = descriptor_pb2.FileDescriptorSet.FromString(serialized).file
    (output / "qdata" / "v1" / DESCRIPTORS).write_bytes(serialized)
    (output / "qdata" / "_rpcs.py").write_text(render_rpcs(files), encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# qdata/_rpcs.py


def _permission(options: descriptor_pb2.MethodOptions) -> str:
    """The qdata.v1.permission option, read from the options' wire form (an extension this
    generator's descriptor pool does not know)."""
    data, i = options.SerializeToString(), 0

    def varint() -> int:
        nonlocal i
        shift = value = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while i < len(data):
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            varint()
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            size = varint()
            if field == PERMISSION_FIELD:
                return data[i : i + size].decode()
            i += size
        else:
            raise ValueError(f"unexpected wire type {wire} in method options")
    return ""


def _comment(file: descriptor_pb2.FileDescriptorProto, path: tuple[int, ...]) -> str:
    for location in file.source_code_info.location:
        if tuple(location.path) == path:
            return textwrap.dedent(location.leading_comments).strip()
    return ""


def _docstring(text: str, indent: str) -> str:
    text = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"') or "(undocumented)"
    lines = text.splitlines()
    body = "\n".join((indent + line) if line else "" for line in lines[1:])
    return f'{indent}"""{lines[0]}' + (f"\n{body}\n{indent}" if body else "") + '"""\n'


def render_rpcs(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> str:
    files = list(files)
    messages: dict[str, tuple[str, descriptor_pb2.DescriptorProto]] = {}
    for file in files:
        module = file.name.removesuffix(".proto").rsplit("/", 1)[-1] + "_pb2"
        for message in file.message_type:
            messages[f".{file.package}.{message.name}"] = (f"{module}.{message.name}", message)
    imports: set[str] = set()
    sync_classes: list[str] = []
    async_classes: list[str] = []
    retry_safe: list[str] = []
    for file in files:
        stem = file.name.removesuffix(".proto").rsplit("/", 1)[-1]
        for s_index, service in enumerate(file.service):
            if not service.method:
                continue
            imports |= {f"{stem}_pb2", f"{stem}_pb2_grpc"}
            doc = _comment(file, (6, s_index))
            sync_lines = [
                f"class {service.name}(Service):\n",
                _docstring(f"{file.package}.{service.name} for :class:`qdata.client.QdataClient`.\n\n{doc}", "    "),
                "\n",
                "    def __init__(self, channel: grpc.Channel, defaults: CallDefaults) -> None:\n",
                "        super().__init__(defaults)\n",
                f"        self._stub = {stem}_pb2_grpc.{service.name}Stub(channel)\n",
            ]
            async_lines = [
                f"class Async{service.name}(Service):\n",
                _docstring(
                    f"{file.package}.{service.name} for :class:`qdata.client.AsyncQdataClient`.\n\n{doc}", "    "
                ),
                "\n",
                "    def __init__(self, channel: grpc.aio.Channel, defaults: CallDefaults) -> None:\n",
                "        super().__init__(defaults)\n",
                f"        self._stub = {stem}_pb2_grpc.{service.name}Stub(channel)\n",
            ]
            for m_index, method in enumerate(service.method):
                if method.client_streaming:
                    raise SystemExit(f"{service.name}.{method.name}: client streaming is not supported")
                request, request_message = messages[method.input_type]
                response, _ = messages[method.output_type]
                method_doc = _docstring(_comment(file, (6, s_index, 2, m_index)), "        ")
                params = (
                    f"self,\n        request: {request},\n        *,\n"
                    "        timeout: float | None = None,\n"
                    "        metadata: MetadataPairs | None = None,\n"
                    "        **kwargs: Any,\n    "
                )
                call = f"self._stub.{method.name}, request, timeout, metadata, kwargs"
                if method.server_streaming:
                    sync_lines += [
                        f"\n    def {method.name}(\n        {params}) -> ResponseStream[{response}]:\n",
                        method_doc,
                        f"        return self._defaults.sync_stream({call})\n",
                    ]
                    async_lines += [
                        f"\n    def {method.name}(\n        {params}) -> AsyncResponseStream[{response}]:\n",
                        method_doc,
                        f"        return self._defaults.async_stream({call})\n",
                    ]
                else:
                    sync_lines += [
                        f"\n    def {method.name}(\n        {params}) -> {response}:\n",
                        method_doc,
                        f"        return self._defaults.sync_unary({call})\n",
                    ]
                    async_lines += [
                        f"\n    async def {method.name}(\n        {params}) -> {response}:\n",
                        method_doc,
                        f"        return await self._defaults.async_unary({call})\n",
                    ]
                has_request_id = any(f.name == "request_id" for f in request_message.field)
                if has_request_id or _permission(method.options).endswith(".read"):
                    retry_safe.append(f'    ("{file.package}.{service.name}", "{method.name}"),\n')
            sync_classes.append("".join(sync_lines))
            async_classes.append("".join(async_lines))
    module_imports = "from qdata.v1 import (\n" + "".join(f"    {name},\n" for name in sorted(imports)) + ")\n"
    return (
        '"""The typed RPC methods of qdata\'s clients, one class per service and client.\n\n'
        "@generated by clients/python/generate.py from protos/: do not edit, run `make proto`.\n"
        '"""\n\n'
        "# ruff: noqa: ASYNC109 - timeout is the gRPC deadline, also sent to the server\n"
        "from __future__ import annotations\n\n"
        "from typing import Any\n\n"
        "import grpc\nimport grpc.aio\n\n"
        "from qdata._calls import AsyncResponseStream, CallDefaults, MetadataPairs, ResponseStream, Service\n"
        f"{module_imports}\n"
        "RETRY_SAFE_METHODS: tuple[tuple[str, str], ...] = (\n"
        f"{''.join(retry_safe)}"
        ")\n"
        '"""(service, method) of every RPC that is safe to resend: the reads (permission "<family>.read")\n'
        "and the mutations that carry a request_id. The client's opt-in retry policy covers these only.\n"
        '"""\n\n\n' + "\n\n".join(sync_classes) + "\n\n" + "\n\n".join(async_classes)
    )


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
