"""qdata: the marketplace's data-access gRPC service over PostgreSQL."""

__version__ = "0.1.0"
