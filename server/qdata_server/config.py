"""Configuration: every setting comes from an environment variable into one frozen dataclass.

The table in README.md documents each variable; keep the two in step.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import TypeVar

from qdata_server.startup import ConfigError
from qdata_server.tokens import TokenEntry, parse_tokens
from qdata_server.validation import CURRENCY_CODE

# Room a gRPC message needs beside one chat message's content: the response that repeats it, the
# session and the other fields (ChatService keeps 256 KiB of it for the response itself).
CHAT_MESSAGE_HEADROOM_BYTES = 512 * 1024


__all__ = ["CHAT_MESSAGE_HEADROOM_BYTES", "ConfigError", "Settings", "TlsMaterial", "check_tls"]


N = TypeVar("N", int, float)


@dataclasses.dataclass(frozen=True)
class TlsMaterial:
    """The PEM bytes TLS is served with (repr hides the key)."""

    cert_chain: bytes
    private_key: bytes = dataclasses.field(repr=False)
    client_ca: bytes | None = None


def _number(env: Mapping[str, str], name: str, parse: Callable[[str], N], kind: str) -> N | None:
    """The variable parsed by parse (int or float), None when unset or blank."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return parse(raw)
    except ValueError:
        raise ConfigError(f"{name} must be {kind}, got {raw!r}") from None


def _int(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    value = _number(env, name, int, "an integer")
    if value is None:
        return default
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    value = _number(env, name, float, "a number")
    if value is None:
        return default
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


_TRUE = ("1", "true", "yes")
_FALSE = ("0", "false", "no")


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    """Every boolean setting: one of _TRUE or _FALSE (any case), default when unset or blank."""
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in _TRUE + _FALSE:
        accepted = ", ".join(_TRUE + _FALSE)
        raise ConfigError(f"{name} must be true or false (one of {accepted}), got {raw!r}")
    return raw in _TRUE


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the server can be told from outside; built once at start."""

    # Address the gRPC server listens on, host:port.
    listen_address: str = "127.0.0.1:50051"
    # PostgreSQL connection string the server serves through (a login role in qdata_service);
    # empty means "start the embedded PostgreSQL".
    database_url: str = ""
    # Connection string of the schema's owner, for migrations and operator commands
    # (verify-audit, rewrap-keys); empty means database_url. Set alone, operator commands act on
    # it and serve refuses to start (it has no login to serve as).
    owner_database_url: str = ""
    # Where the embedded PostgreSQL keeps its data when database_url is empty.
    embedded_data_dir: str = ".qdata/pgdata"
    # Connection pool bounds, per worker process.
    pool_min_size: int = 2
    pool_max_size: int = 10
    # Seconds a request waits for a pooled connection before failing with UNAVAILABLE.
    pool_timeout_seconds: float = 5.0
    # Worker processes sharing the port through SO_REUSEPORT; 0 means the CPU count.
    workers: int = 0
    # Python logging level name.
    log_level: str = "INFO"
    # Seconds in-flight RPCs get to finish after SIGTERM/SIGINT.
    shutdown_grace_seconds: float = 10.0
    # bcrypt work factor for new password hashes (4..31; 12 is a sane production value).
    bcrypt_cost: int = 12
    # Optional secret mixed into every password pre-hash (HMAC key); changing it invalidates
    # every stored bcrypt hash, so set it once.
    password_pepper: str = ""
    # Password policy, in UTF-8 bytes.
    password_min_length: int = 8
    password_max_length: int = 1024
    # Consecutive failed logins that lock an account, and for how long.
    lockout_threshold: int = 5
    lockout_seconds: int = 900
    # Largest gRPC message accepted or sent, in bytes.
    max_message_bytes: int = 4 * 1024 * 1024
    # Largest chat message content (with its tool-call arguments), in UTF-8 bytes; the gRPC
    # maximum must leave room for it plus CHAT_MESSAGE_HEADROOM_BYTES.
    chat_max_content_bytes: int = 1024 * 1024
    # Seconds between database liveness probes that drive the health status.
    health_probe_seconds: float = 5.0
    # Apply pending migrations at start (the embedded default does; Kubernetes runs `migrate`).
    migrate_on_start: bool = False
    # Load sample data at start if the database holds no users yet.
    seed_on_start: bool = False
    # Retries of a transaction that hit a serialization failure or deadlock.
    transaction_retries: int = 5
    # Server-side prepared statements for repeated queries, and pipelined transactions; turn off
    # behind a PgBouncer older than 1.21 (or without max_prepared_statements) in transaction mode,
    # which mishandles both (see db/pool.py, QdataPool.pipelined).
    prepared_statements: bool = True
    # ISO 4217 currencies the ledger accepts (USD always).
    ledger_currencies: tuple[str, ...] = ("USD",)
    # Seconds between runs of the background sweeper that resolves expired holds (0: never; the
    # ledger also sweeps an account's expired holds whenever it touches the account).
    hold_sweep_seconds: float = 30.0
    # How long a request_id's first answer is kept for replays (0: forever). A replay after that
    # is a new request, unless it moves money: the ledger remembers those forever (see
    # qdata_server.idempotency). Longer than any caller's retry window; Stripe keeps keys for 24 hours.
    idempotency_retention_hours: float = 168.0
    # Seconds between runs of the background purge of records older than the retention (0: never).
    idempotency_purge_seconds: float = 300.0
    # Seconds between runs of the folder that moves recorded usage into the statistics rollups
    # (0: never; reads stay exact either way, but grow slower as unfolded usage piles up).
    usage_fold_seconds: float = 1.0
    # Monthly partitions of usage_records kept created ahead of the current month.
    usage_partition_months_ahead: int = 3
    # Seconds between rounds of the audit sealer, which chains audit events after their
    # transactions commit (audit_sealer.py; 0: this server never seals, another one must).
    audit_seal_seconds: float = 0.5
    # The promised bound on an audit event's time unsealed: verify-audit reports an older unsealed
    # event as "stale" (a failure). Well above the round interval plus the longest transaction.
    audit_seal_max_delay_seconds: float = 60.0
    # API key vault key ring (users/vault.py): "1:<base64>,2:<base64>" inline, or the path of a
    # JSON file; neither means a generated development ring (embedded) or no vault (DATABASE_URL).
    key_ring: str = dataclasses.field(default="", repr=False)
    key_ring_file: str = ""
    # Callers and their permissions (QDATA_AUTH_TOKENS / QDATA_AUTH_TOKENS_FILE; see auth.py).
    auth_tokens: tuple[TokenEntry, ...] = ()
    # Serve without tokens, every call as "anonymous" with all permissions (only when no token is
    # configured; otherwise tokens are enforced).
    allow_insecure: bool = False
    # Serve gRPC reflection (grpcurl, buf curl can list and describe the services).
    reflection: bool = True
    # TLS: PEM certificate chain and private key files (both or neither); with a client CA file,
    # mutual TLS (every client must present a certificate signed by that CA).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    # host:port of a separate plaintext server that serves only grpc.health.v1.Health (for
    # Kubernetes gRPC probes, which present no client certificate); empty: none.
    health_listen_address: str = ""
    # host:port serving Prometheus /metrics for the whole server (empty: no metrics at all).
    metrics_listen_address: str = ""
    # Seconds between scheduled runs of ledger and audit verification by worker 0 (0: never; see
    # verify_schedule.py). Their results are the qdata_*verify* metrics and log lines.
    verify_interval_seconds: float = 0.0
    # The TLS files' contents, read once (by from_env, which checks them) and passed on to every
    # worker; None without TLS, and for settings built in code (see inputs.py).
    tls_material: TlsMaterial | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file)

    @property
    def embedded(self) -> bool:
        """True when the server runs its own private PostgreSQL (no database URL is set)."""
        return not self.database_url and not self.owner_database_url

    @property
    def effective_workers(self) -> int:
        return self.workers or (os.cpu_count() or 1)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Reads QDATA_* variables (and DATABASE_URL); unset ones keep their defaults."""
        env = os.environ if env is None else env
        d = cls()
        database_url = env.get("DATABASE_URL", "").strip()
        owner_database_url = env.get("QDATA_OWNER_DATABASE_URL", "").strip()
        # The embedded default migrates and seeds itself; a database given by URL does neither.
        embedded = not database_url and not owner_database_url
        migrate_on_start = _flag(env, "QDATA_MIGRATE_ON_START", embedded)
        seed_on_start = _flag(env, "QDATA_SEED_ON_START", embedded)
        prepared = _flag(env, "QDATA_PREPARED_STATEMENTS", True)
        currencies = tuple(
            sorted(
                {"USD", *(c.strip().upper() for c in env.get("QDATA_LEDGER_CURRENCIES", "").split(",") if c.strip())}
            )
        )
        for code in currencies:
            if not CURRENCY_CODE.regex.fullmatch(code):
                raise ConfigError(f"QDATA_LEDGER_CURRENCIES must list ISO 4217 codes like USD,EUR; got {code!r}")
        level = env.get("QDATA_LOG_LEVEL", d.log_level).strip().upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"QDATA_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
        auth_tokens = parse_tokens(env.get("QDATA_AUTH_TOKENS", ""), "QDATA_AUTH_TOKENS")
        tokens_file = env.get("QDATA_AUTH_TOKENS_FILE", "").strip()
        if tokens_file:
            try:
                with open(tokens_file, encoding="utf-8") as f:
                    text = f.read()
            except OSError as exc:
                raise ConfigError(f"QDATA_AUTH_TOKENS_FILE {tokens_file!r} cannot be read: {exc.strerror}") from None
            auth_tokens += parse_tokens(text, "QDATA_AUTH_TOKENS_FILE")
        digests = [e.digest for e in auth_tokens if not e.identity]
        identities = [e.identity for e in auth_tokens if e.identity]
        if len(set(digests)) != len(digests) or len(set(identities)) != len(identities):
            raise ConfigError(
                "QDATA_AUTH_TOKENS and QDATA_AUTH_TOKENS_FILE configure the same token or certificate twice"
            )
        settings = cls(
            listen_address=env.get("QDATA_LISTEN_ADDRESS", d.listen_address).strip(),
            database_url=database_url,
            owner_database_url=owner_database_url,
            embedded_data_dir=env.get("QDATA_EMBEDDED_DATA_DIR", d.embedded_data_dir).strip(),
            pool_min_size=_int(env, "QDATA_POOL_MIN_SIZE", d.pool_min_size, 0, 1000),
            pool_max_size=_int(env, "QDATA_POOL_MAX_SIZE", d.pool_max_size, 1, 1000),
            pool_timeout_seconds=_float(env, "QDATA_POOL_TIMEOUT_SECONDS", d.pool_timeout_seconds, 0.1),
            workers=_int(env, "QDATA_WORKERS", d.workers, 0, 256),
            log_level=level,
            shutdown_grace_seconds=_float(env, "QDATA_SHUTDOWN_GRACE_SECONDS", d.shutdown_grace_seconds, 0),
            bcrypt_cost=_int(env, "QDATA_BCRYPT_COST", d.bcrypt_cost, 4, 31),
            password_pepper=env.get("QDATA_PASSWORD_PEPPER", ""),
            password_min_length=_int(env, "QDATA_PASSWORD_MIN_LENGTH", d.password_min_length, 1, 4096),
            password_max_length=_int(env, "QDATA_PASSWORD_MAX_LENGTH", d.password_max_length, 1, 65536),
            lockout_threshold=_int(env, "QDATA_LOCKOUT_THRESHOLD", d.lockout_threshold, 1, 1000),
            lockout_seconds=_int(env, "QDATA_LOCKOUT_SECONDS", d.lockout_seconds, 1, 86400 * 30),
            max_message_bytes=_int(env, "QDATA_MAX_MESSAGE_BYTES", d.max_message_bytes, 1024, 1 << 30),
            chat_max_content_bytes=_int(
                env,
                "QDATA_CHAT_MAX_CONTENT_BYTES",
                d.chat_max_content_bytes,
                1024,
                (1 << 30) - CHAT_MESSAGE_HEADROOM_BYTES,
            ),
            health_probe_seconds=_float(env, "QDATA_HEALTH_PROBE_SECONDS", d.health_probe_seconds, 0.1),
            migrate_on_start=migrate_on_start,
            seed_on_start=seed_on_start,
            transaction_retries=_int(env, "QDATA_TRANSACTION_RETRIES", d.transaction_retries, 0, 100),
            prepared_statements=prepared,
            auth_tokens=auth_tokens,
            allow_insecure=_flag(env, "QDATA_ALLOW_INSECURE", False),
            reflection=_flag(env, "QDATA_REFLECTION", True),
            ledger_currencies=currencies,
            hold_sweep_seconds=_float(env, "QDATA_HOLD_SWEEP_SECONDS", d.hold_sweep_seconds, 0),
            idempotency_retention_hours=_float(
                env, "QDATA_IDEMPOTENCY_RETENTION_HOURS", d.idempotency_retention_hours, 0
            ),
            idempotency_purge_seconds=_float(env, "QDATA_IDEMPOTENCY_PURGE_SECONDS", d.idempotency_purge_seconds, 0),
            usage_fold_seconds=_float(env, "QDATA_USAGE_FOLD_SECONDS", d.usage_fold_seconds, 0),
            usage_partition_months_ahead=_int(
                env, "QDATA_USAGE_PARTITION_MONTHS_AHEAD", d.usage_partition_months_ahead, 1, 120
            ),
            audit_seal_seconds=_float(env, "QDATA_AUDIT_SEAL_SECONDS", d.audit_seal_seconds, 0),
            audit_seal_max_delay_seconds=_float(
                env, "QDATA_AUDIT_SEAL_MAX_DELAY_SECONDS", d.audit_seal_max_delay_seconds, 1
            ),
            key_ring=env.get("QDATA_KEY_RING", "").strip(),
            key_ring_file=env.get("QDATA_KEY_RING_FILE", "").strip(),
            tls_cert_file=env.get("QDATA_TLS_CERT_FILE", "").strip(),
            tls_key_file=env.get("QDATA_TLS_KEY_FILE", "").strip(),
            tls_client_ca_file=env.get("QDATA_TLS_CLIENT_CA_FILE", "").strip(),
            health_listen_address=env.get("QDATA_HEALTH_LISTEN_ADDRESS", "").strip(),
            metrics_listen_address=env.get("QDATA_METRICS_LISTEN_ADDRESS", "").strip(),
            verify_interval_seconds=_float(env, "QDATA_VERIFY_INTERVAL_SECONDS", d.verify_interval_seconds, 0),
        )
        if settings.key_ring and settings.key_ring_file:
            raise ConfigError("set QDATA_KEY_RING or QDATA_KEY_RING_FILE, not both")
        if settings.max_message_bytes < settings.chat_max_content_bytes + CHAT_MESSAGE_HEADROOM_BYTES:
            raise ConfigError(
                "QDATA_MAX_MESSAGE_BYTES must be at least QDATA_CHAT_MAX_CONTENT_BYTES + "
                f"{CHAT_MESSAGE_HEADROOM_BYTES}, so the largest chat message fits in one gRPC message"
            )
        settings = dataclasses.replace(settings, tls_material=check_tls(settings))
        if settings.pool_min_size > settings.pool_max_size:
            raise ConfigError("QDATA_POOL_MIN_SIZE must not exceed QDATA_POOL_MAX_SIZE")
        if settings.password_min_length > settings.password_max_length:
            raise ConfigError("QDATA_PASSWORD_MIN_LENGTH must not exceed QDATA_PASSWORD_MAX_LENGTH")
        return settings


def _read_pem(name: str, path: str, marker: str) -> bytes:
    """The file's bytes; ConfigError naming the variable (never the content) if unusable."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"{name} {path!r} cannot be read: {exc.strerror}") from None
    if marker.encode() not in data:
        raise ConfigError(f"{name} {path!r} holds no PEM {marker.strip('-')}")
    return data


def check_tls(settings: Settings) -> TlsMaterial | None:
    """Validates the TLS and health-port settings and reads the files; None without TLS."""
    if settings.health_listen_address and settings.health_listen_address == settings.listen_address:
        raise ConfigError("QDATA_HEALTH_LISTEN_ADDRESS must differ from QDATA_LISTEN_ADDRESS")
    if settings.health_listen_address and ":" not in settings.health_listen_address:
        raise ConfigError(f"QDATA_HEALTH_LISTEN_ADDRESS must be host:port, got {settings.health_listen_address!r}")
    metrics = settings.metrics_listen_address
    if metrics and (":" not in metrics or not metrics.rpartition(":")[2].isdigit()):
        raise ConfigError(f"QDATA_METRICS_LISTEN_ADDRESS must be host:port, got {metrics!r}")
    if metrics and metrics in (settings.listen_address, settings.health_listen_address):
        raise ConfigError("QDATA_METRICS_LISTEN_ADDRESS must differ from QDATA_LISTEN_ADDRESS and the health address")
    if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
        raise ConfigError("set both QDATA_TLS_CERT_FILE and QDATA_TLS_KEY_FILE, or neither")
    if settings.tls_client_ca_file and not settings.tls_cert_file:
        raise ConfigError("QDATA_TLS_CLIENT_CA_FILE (mutual TLS) needs QDATA_TLS_CERT_FILE and QDATA_TLS_KEY_FILE")
    if any(e.identity for e in settings.auth_tokens) and not settings.tls_client_ca_file:
        raise ConfigError(
            "cert: caller entries need mutual TLS (QDATA_TLS_CLIENT_CA_FILE); without it no client "
            "certificate is verified"
        )
    if not settings.tls_cert_file:
        return None
    return TlsMaterial(
        cert_chain=_read_pem("QDATA_TLS_CERT_FILE", settings.tls_cert_file, "-----BEGIN CERTIFICATE-----"),
        private_key=_read_pem("QDATA_TLS_KEY_FILE", settings.tls_key_file, "PRIVATE KEY-----"),
        client_ca=_read_pem("QDATA_TLS_CLIENT_CA_FILE", settings.tls_client_ca_file, "-----BEGIN CERTIFICATE-----")
        if settings.tls_client_ca_file
        else None,
    )
