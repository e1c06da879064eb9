"""gRPC server reflection, v1 and v1alpha, answering with the contract's documented descriptors.

grpcio-reflection (pinned 1.85.1) ships only ``grpc.reflection.v1alpha``. ``grpc.reflection.v1`` is
the same protocol under another package (identical messages, field for field), so the same
servicer also answers at ``/grpc.reflection.v1.ServerReflection/ServerReflectionInfo`` with the
v1alpha messages' codecs: the bytes on the wire are those of v1's.

The runtime's descriptor pool keeps no source info, so the qdata.v1 files it would send carry no
comments. They are replaced by the ones in ``qdata/v1/descriptors.binpb`` (written by
clients/python/generate.py with protoc's ``--include_source_info``), and ``grpcurl describe
qdata.v1.LedgerService`` shows the contract's documentation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from importlib import resources
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from grpc import aio
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
V1ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME


def documented_files() -> dict[str, bytes]:
    """The contract's files with their comments, serialized, by file name (qdata/v1/ledger.proto)."""
    data = resources.files("qdata.v1").joinpath("descriptors.binpb").read_bytes()
    files = descriptor_pb2.FileDescriptorSet.FromString(data).file
    return {file.name: file.SerializeToString() for file in files}


class DocumentedReflectionServicer(ReflectionServicer):
    """grpcio-reflection's servicer, sending the documented form of the files it has one for."""

    def __init__(self, service_names: Iterable[str], documented: dict[str, bytes]) -> None:
        super().__init__(service_names)  # type: ignore[no-untyped-call]
        self._documented = documented

    async def ServerReflectionInfo(
        self, request_iterator: Any, context: Any
    ) -> AsyncIterator[reflection_pb2.ServerReflectionResponse]:
        async for response in super().ServerReflectionInfo(request_iterator, context):
            if response.HasField("file_descriptor_response"):
                protos = response.file_descriptor_response.file_descriptor_proto
                for i, data in enumerate(protos):
                    name = descriptor_pb2.FileDescriptorProto.FromString(data).name
                    protos[i] = self._documented.get(name, data)
            yield response


def enable(service_names: Iterable[str], server: aio.Server) -> None:
    """Serves reflection v1 and v1alpha on ``server``, listing ``service_names`` and both reflections."""
    servicer = DocumentedReflectionServicer((*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME), documented_files())
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {"ServerReflectionInfo": v1}),)
    )
