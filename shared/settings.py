"""Configuration from environment variables (pydantic-settings).

Settings are built by :func:`get_settings` (or by a service's factory), never at
import time, so tests can give each process its own environment.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.errors import ConfigError
from shared.jsonvalues import MAX_JSON_DEPTH
from shared.messages import MAX_PAYLOAD_BYTES, WORKER_ID_PATTERN
from switchyard.models import ROLES as ROLES  # defined with the public package (tasks use it)

log = logging.getLogger(__name__)

# What a worker may offer (SWITCHYARD_WORKER_* and the worker's flags alike): more than
# a machine has is a typo, and the columns that store it are 32-bit.
WORKER_MAX_THREADS = 1024
WORKER_MAX_CPU_UNITS = 4096.0
WORKER_MAX_MEMORY_MB = 16 * 2**20  # 16 TiB


# The API's payload limits, bounded by what a dispatch message carries (shared.messages).
_DISPATCHABLE = {
    "max_payload_bytes": (2, MAX_PAYLOAD_BYTES, "bytes"),  # 2: "{}"
    "max_json_depth": (1, MAX_JSON_DEPTH, "levels"),
}


class Settings(BaseSettings):
    """Every variable in design.md, with its default."""

    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_", extra="ignore")

    database_url: str = Field(
        default="postgresql+asyncpg://postgres@127.0.0.1:5432/switchyard",
        validation_alias=AliasChoices("DATABASE_URL", "SWITCHYARD_DATABASE_URL"),
    )
    amqp_url: str = Field(
        default="amqp://guest:guest@127.0.0.1:5672/",
        validation_alias=AliasChoices("AMQP_URL", "SWITCHYARD_AMQP_URL"),
    )
    namespace: str = Field(default="switchyard", pattern=r"^[A-Za-z0-9_.-]{1,100}$")

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # "key:role,key:role"; parsed into a dict key -> role.
    api_keys: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    # Which configuration the keys above belong to: an API revokes only the env keys its
    # own set created and no longer lists (services/api/keys.py). Replicas sharing one
    # list share one set; another fleet on the same database names its own.
    api_keys_set: str = Field(default="default", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    dev: bool = False

    # Where the CLI and the SDK connect.
    url: str = "http://127.0.0.1:8000"
    api_key: str | None = None

    max_body_bytes: int = 1_048_576
    heartbeat_seconds: float = 2.0
    worker_lease_seconds: float = 10.0
    aging_seconds: float = 300.0

    # Worker (flags override these; defaults from psutil when unset).
    # No dots: the id is one word of the dispatch routing key.
    worker_id: str | None = Field(default=None, pattern=WORKER_ID_PATTERN)
    worker_threads: int | None = Field(default=None, ge=1, le=WORKER_MAX_THREADS)
    worker_cpu_units: float | None = Field(
        default=None, gt=0, le=WORKER_MAX_CPU_UNITS, allow_inf_nan=False
    )
    worker_memory_mb: int | None = Field(default=None, gt=0, le=WORKER_MAX_MEMORY_MB)
    worker_tasks: str = ""  # comma-separated modules, like --tasks
    # Where attempts run (like --isolation): "task" as each @task says (thread by
    # default), "thread" or "process" for every attempt (docs/isolation.md).
    worker_isolation: Literal["task", "thread", "process"] = "task"
    # SIGTERM: how long running jobs may take to finish before they are handed back.
    worker_grace_seconds: float = 30.0
    # After a cancel or a timeout, how long a task may take to notice before its
    # attempt is reported ended anyway (its thread is then counted as stuck).
    cancel_grace_seconds: float = 3.0

    # Scheduler
    scheduler_tick_seconds: float = 0.5
    scheduler_batch_size: int = Field(default=500, ge=1, le=100_000)
    monitoring_seconds: float = 5.0
    # How long the scheduler lets job.state events (and re-sent cancels) gather before
    # it publishes them as one batch: fewer messages for every API replica to take in.
    # Dispatches never wait. 0: publish each cycle's events at once.
    event_linger_seconds: float = Field(default=0.02, ge=0, le=1)
    # When the PostgreSQL server runs without autovacuum, the active scheduler vacuums
    # (and analyzes) the jobs table this often. 0: never.
    vacuum_seconds: float = Field(default=30.0, ge=0)
    # The active scheduler vacuums the ready queue (ready_jobs) this often, autovacuum on
    # or off: each dispatch leaves a dead entry at the head the claim reads, and
    # autovacuum visits a database once a minute at most. 0: never.
    queue_vacuum_seconds: float = Field(default=5.0, ge=0)

    # Retention: when > 0, finished jobs (completed, failed, cancelled) are deleted with
    # their log lines, executions and dependency edges this many days after they
    # finished; the active scheduler sweeps every retention_sweep_seconds. 0 (the
    # default) keeps every job: none is deleted unless the operator asks for it.
    # The audit log has its own setting (audit_retention_days, below); the rows of
    # workers gone for a week go in the same sweep whatever the settings.
    retention_days: float = Field(default=0.0, ge=0)
    retention_sweep_seconds: float = Field(default=60.0, gt=0)

    # API: events buffered per WebSocket client before new ones are dropped for it.
    ws_buffer_events: int = Field(default=1000, ge=1, le=1_000_000)
    # Open WebSockets per API key on one API replica; one more is closed with 1008.
    ws_max_sockets_per_key: int = Field(default=50, ge=1, le=100_000)
    # Log lines a WebSocket replay sends per job (the latest ones); the earlier lines
    # are read with GET /jobs/{id}/logs (paged).
    ws_replay_lines: int = Field(default=1000, ge=0, le=100_000)
    # How often every open WebSocket's key is checked again (a revocation's NOTIFY
    # triggers a check at once; this is the bound should it be missed).
    ws_key_recheck_seconds: float = Field(default=2.0, gt=0, le=60)

    # Rate limits (token buckets, in memory per API replica: with N replicas behind a
    # balancer a client may get up to N times these). Requests per second sustained
    # and the burst allowed on top; 0 per second turns that limit off.
    # Per API key: generous, an honest client looping as fast as it can is never held.
    rate_limit_key_per_second: float = Field(default=500.0, ge=0)
    rate_limit_key_burst: int = Field(default=2000, ge=1)
    # Per client address, whatever the key (many clients may share an address).
    rate_limit_address_per_second: float = Field(default=1000.0, ge=0)
    rate_limit_address_burst: int = Field(default=4000, ge=1)
    # Per client address, requests refused 401 (no key, a bad or revoked key): tight.
    rate_limit_unauthenticated_per_second: float = Field(default=2.0, ge=0)
    rate_limit_unauthenticated_burst: int = Field(default=30, ge=1)
    # A key the database refused is refused again without asking it for this long (a
    # key created or restored meanwhile works at the latest after this; every replica
    # forgets refused keys at once when keys change through the API or the bootstrap).
    key_refused_cache_seconds: float = Field(default=5.0, ge=0, le=300)

    # Audit rows of requests refused without a valid key: at most this many per client
    # address and minute; the others are counted in the next row written for it.
    audit_unauthenticated_rows_per_minute: int = Field(default=10, ge=1)
    # Characters of a refusal's message kept in its audit row (the rest is cut, marked).
    audit_detail_max_chars: int = Field(default=2000, ge=100, le=1_000_000)
    # When > 0, audit rows older than this many days are deleted by the active
    # scheduler's retention sweep. 0 (the default) keeps the audit log forever.
    audit_retention_days: float = Field(default=0.0, ge=0)
    # Require a (viewer) key for GET /metrics.
    metrics_require_key: bool = False

    # Publishing a message waits at most this long for the broker's confirm.
    publish_timeout_seconds: float = 5.0
    # Register the built-in demo.* tasks (API: announce them; worker: run them).
    demo_tasks: bool = True

    # Hostile-input limits (see docs/api.md). A payload the API takes must fit the
    # dispatch that carries it to a worker: at most the message schema's own limits.
    max_payload_bytes: int = 262_144
    max_json_depth: int = 32
    max_dependencies: int = 1_000
    max_batch_jobs: int = 10_000
    # A list page or bulk selection with a name prefix may read at most this long, then
    # it is refused with a 422 (shared.jobs.listing._fetch says why).
    max_name_search_seconds: float = Field(default=1.0, ge=0.001, le=30)

    @field_validator("max_payload_bytes", "max_json_depth")
    @classmethod
    def _within_what_a_dispatch_carries(cls, value: int, info: ValidationInfo) -> int:
        low, high, unit = _DISPATCHABLE[info.field_name or ""]
        if not low <= value <= high:
            raise ValueError(
                f"must lie between {low:,} and {high:,} {unit}: a payload the API takes must "
                "fit the dispatch that carries it to a worker"
            )
        return value

    @field_validator("database_url")
    @classmethod
    def _with_the_asyncpg_driver(cls, value: str) -> str:
        # postgres:// and postgresql:// are how most tools and hosts write the URL; every
        # process here talks to PostgreSQL through asyncpg.
        for plain in ("postgresql://", "postgres://"):
            if value.startswith(plain):
                return "postgresql+asyncpg://" + value[len(plain) :]
        if not value.startswith("postgresql+asyncpg://"):
            raise ValueError(
                "must be a PostgreSQL URL, postgresql+asyncpg://user@host:port/database "
                "(postgresql:// and postgres:// are taken as that)"
            )
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_api_keys(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        keys: dict[str, str] = {}
        items = filter(None, (part.strip() for part in value.split(",")))
        for position, item in enumerate(items, start=1):
            key, sep, role = item.rpartition(":")
            if not sep or not key:
                # The entry itself is not shown: without its ':' it may be a bare key.
                raise ValueError(f"entry {position} of SWITCHYARD_API_KEYS is not 'key:role'")
            if role not in ROLES:
                raise ValueError(
                    f"entry {position} of SWITCHYARD_API_KEYS has role {role!r}; a role is one "
                    "of " + ", ".join(ROLES)
                )
            keys[key] = role
        return keys

    @property
    def sync_database_url(self) -> str:
        """The same database for tools that want libpq-style URLs (psql, asyncpg)."""
        return self.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


def get_settings(**overrides: object) -> Settings:
    """Read the environment now (not at import time). A bad variable is a ConfigError
    that names it and says what is wrong, never its value (it may be a key)."""
    for plain in ("DATABASE_URL", "AMQP_URL"):
        prefixed = os.environ.get(f"SWITCHYARD_{plain}")
        if prefixed is not None and os.environ.get(plain) not in (None, prefixed):
            # A DATABASE_URL left in a shell for another program would otherwise be used
            # without a word.
            log.warning("%s and SWITCHYARD_%s are both set, to different values: %s is "
                        "used", plain, plain, plain)  # fmt: skip
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"SWITCHYARD_{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}"
            if e["loc"]
            else e["msg"]
            for e in exc.errors(include_input=False, include_url=False)
        )
        raise ConfigError(f"bad configuration: {problems}") from None
