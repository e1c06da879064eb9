# qdata server image.
#
#   docker build -t qdata:dev .
#   docker run --rm -e DATABASE_URL=postgresql://... qdata:dev migrate   # apply migrations (once per release)
#   docker run --rm -p 50051:50051 -e DATABASE_URL=postgresql://... qdata:dev   # serve
#
# Production always sets DATABASE_URL. The embedded PostgreSQL of `make run`
# (requirements-embedded.txt) is not in the image; without DATABASE_URL the server says so and
# exits. With DATABASE_URL set the server
# neither migrates nor seeds at start (QDATA_MIGRATE_ON_START and QDATA_SEED_ON_START default to
# false then) and reports NOT_SERVING until `qdata-server migrate` has run. See deploy/README.md.
#
# Both stages must use the same base image: the venv's interpreter links point at
# /usr/local/bin/python3.11. Pin a digest (python:3.11-slim@sha256:...) for reproducible builds.
ARG PYTHON_IMAGE=python:3.11-slim

# ---- builder: resolve and install everything into /opt/venv -------------------------------
FROM ${PYTHON_IMAGE} AS builder

# No PYTHONDONTWRITEBYTECODE here: the .pyc files pip writes are wanted in the venv; with a
# read-only root filesystem the server could not cache them, and would compile at every start.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Dependencies first, in their own layer, so a code change does not reinstall them.
# --only-binary: every runtime dependency ships wheels; never fall back to compiling (there is
# no compiler here, and a silent sdist build would make the image depend on one).
COPY requirements.txt ./
RUN pip install --only-binary=:all: -r requirements.txt

# The two local packages, non-editable; their dependencies are already pinned above.
# The generated stubs are committed under clients/python, so no protoc/grpcio-tools is needed.
COPY clients/python ./clients/python
COPY server ./server
RUN pip install --no-deps ./clients/python ./server \
    && pip check \
    && qdata-server --help >/dev/null \
    && python -c "from qdata_server.db import migrate, sql; assert sql.names() and migrate.load_migrations()"

# ---- final: the venv on a clean slim base, run as an unprivileged user --------------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="qdata" \
      org.opencontainers.image.description="qdata data-access gRPC service over PostgreSQL"

# A fixed numeric uid/gid: Kubernetes' runAsNonRoot can only verify a numeric USER.
RUN groupadd --system --gid 10001 qdata \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/qdata --create-home \
       --shell /usr/sbin/nologin qdata

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    QDATA_LISTEN_ADDRESS=0.0.0.0:50051

# A neutral working directory; the server writes nothing to disk (logs go to stderr).
WORKDIR /home/qdata
USER 10001:10001

EXPOSE 50051

# For plain Docker / Compose only; Kubernetes ignores HEALTHCHECK and uses the native gRPC probes
# in deploy/. Asks grpc.health.v1.Health for the overall status ("") on the plaintext health port
# (QDATA_HEALTH_LISTEN_ADDRESS) when one is set, else on the listen port (which must then be
# plaintext: with TLS on, set the health port); SERVING means the database is reachable, no
# migration is pending and the role is confined by row-level security.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; port = (os.environ.get('QDATA_HEALTH_LISTEN_ADDRESS') or os.environ.get('QDATA_LISTEN_ADDRESS', '0.0.0.0:50051')).rpartition(':')[2]; ch = grpc.insecure_channel('127.0.0.1:' + port); r = g.HealthStub(ch).Check(h.HealthCheckRequest(), timeout=3); sys.exit(0 if r.status == h.HealthCheckResponse.SERVING else 1)"]

# Exec form: qdata-server is PID 1 and receives SIGTERM itself (it installs its own handlers:
# NOT_SERVING, stop accepting, drain for QDATA_SHUTDOWN_GRACE_SECONDS, close the pool, exit 0).
ENTRYPOINT ["qdata-server"]
CMD ["serve"]
