"""qdata client: generated qdata.v1 stubs (qdata.v1.*_pb2*) and a thin typed client (qdata.client)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qdata-client")
    """The installed qdata-client's version; its one source is clients/python/pyproject.toml."""
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
