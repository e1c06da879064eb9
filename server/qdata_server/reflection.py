"""gRPC server reflection, v1 and v1alpha, answering with the contract's documented descriptors.

grpcio-reflection (pinned 1.85.1) ships only ``grpc.reflection.v1alpha``. ``grpc.reflection.v1`` is
the same protocol under another package (identical messages, field for field), so the same
servicer also answers at ``/grpc.reflection.v1.ServerReflection/ServerReflectionInfo`` with the
v1alpha messages' codecs: the bytes on the wire are those of v1's.

The runtime's descriptor pool keeps no source info, so the qdata.v1 files it would send carry no
comments. They are replaced by the ones in ``qdata/v1/descriptors.binpb`` (written by
clients/python/generate.py with protoc's ``--include_source_info``), and ``grpcurl describe
qdata.v1.LedgerService`` shows the contract's documentation.

protobuf's upb descriptor pool does not find a method by its full name (``qdata.v1.LedgerService.
Charge``), so ``grpcurl describe`` of a method, or of a service.method a tool resolves, got "Symbol
not found". Such a request asks for its service's name instead (the same file holds both), and
the answer echoes the request as it was sent.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Iterable
from importlib import resources
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
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


def service_of_method(symbol: str) -> str | None:
    """The service's full name if symbol names one of its methods (pkg.Service.Method), else None."""
    service, _, method = symbol.rpartition(".")
    try:
        found = descriptor_pool.Default().FindServiceByName(service)
    except KeyError:
        return None
    return service if method in found.methods_by_name else None


class DocumentedReflectionServicer(ReflectionServicer):
    """grpcio-reflection's servicer, sending the documented form of the files it has one for."""

    def __init__(self, service_names: Iterable[str], documented: dict[str, bytes]) -> None:
        super().__init__(service_names)  # type: ignore[no-untyped-call]
        self._documented = documented

    async def ServerReflectionInfo(
        self, request_iterator: Any, context: Any
    ) -> AsyncIterator[reflection_pb2.ServerReflectionResponse]:
        # The requests as sent, in order: the base servicer answers each one in turn.
        sent: deque[reflection_pb2.ServerReflectionRequest] = deque()

        async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            async for request in request_iterator:
                sent.append(request)
                service = (
                    service_of_method(request.file_containing_symbol)
                    if request.HasField("file_containing_symbol")
                    else None
                )
                if service is not None:
                    asked = reflection_pb2.ServerReflectionRequest()
                    asked.CopyFrom(request)
                    asked.file_containing_symbol = service
                    request = asked
                yield request

        async for response in super().ServerReflectionInfo(requests(), context):
            if sent:
                response.original_request.CopyFrom(sent.popleft())
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
