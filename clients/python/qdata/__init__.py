"""qdata client: generated qdata.v1 stubs (qdata.v1.*_pb2*) and a thin typed client (qdata.client)."""
