"""All configuration, read from the environment in one place (names in API.md, "Running")."""
from __future__ import annotations

import math
import os
import secrets
from dataclasses import dataclass, fields, replace
from pathlib import Path

DATA_DIR = Path(os.environ.get("DATA_DIR", Path(__file__).parent / "data"))
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _secret_key() -> str:
    """A key generated once and kept under data/, so sessions survive restarts."""
    path = DATA_DIR / "secret_key"
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


@dataclass(frozen=True)
class Settings:
    """Each field is read from the environment variable of its name in upper case."""

    database_url: str = f"sqlite://{DATA_DIR / 'chat.sqlite3'}"
    redis_url: str | None = None
    secret_key: str = ""
    keepalive_seconds: float = 15.0
    chatbot_provider: str = "demo"
    openai_base_url: str | None = None
    openai_api_key: str | None = None
    chatbot_model: str = "gpt-4o-mini"
    chatbot_system_prompt: str = "You are a helpful assistant."
    history_max_chars: int = 24_000
    openai_first_token_timeout: float = 60.0
    openai_stall_timeout: float = 30.0
    openai_max_retries: int = 3
    openai_retry_backoff: float = 0.5  # seconds before the first retry; doubles each retry
    demo_reply_tokens: int = 40
    demo_token_interval_ms: float = 25.0
    max_prompt_chars: int = 8000
    feed_retention_seconds: float = 60.0
    feed_max_events: int = 10_000
    job_timeout_seconds: float = 600.0
    worker_max_jobs: int = 1000
    lease_seconds: float = 10.0
    worker_drain_seconds: float = 25.0
    queue_name: str = "arq:queue"
    key_prefix: str = "chat:"
    worker_metrics_bind: str | None = None  # host:port where a worker serves /metrics

    def __post_init__(self) -> None:
        for name, floor in _FLOORS.items():
            value = getattr(self, name)
            if not (math.isfinite(value) and (value > 0 if floor == "positive" else value >= 0)):
                raise ValueError(f"{name.upper()}={value!r} is not a {floor} number")
        if self.worker_metrics_bind is not None and self.worker_metrics_address() is None:
            raise ValueError(f"WORKER_METRICS_BIND={self.worker_metrics_bind!r} is not host:port (0.0.0.0:9100, say)")

    def worker_metrics_address(self) -> tuple[str, int] | None:
        """WORKER_METRICS_BIND as (host, port), an IPv6 host without its brackets; None if
        unset or malformed."""
        host, _, port = (self.worker_metrics_bind or "").rpartition(":")
        if not (host and port.isascii() and port.isdigit() and int(port) < 65536):
            return None
        return host.removeprefix("[").removesuffix("]"), int(port)

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        env = {f.name: os.environ[f.name.upper()] for f in fields(cls) if f.name.upper() in os.environ}
        values = {name: _coerce(cls, name, value) for name, value in env.items()}
        settings = cls(**{**values, **overrides})
        if not settings.secret_key:
            settings = replace(settings, secret_key=_secret_key())
        if (path := sqlite_path(settings.database_url)) is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        return settings


# The numbers that have a floor. A keepalive of 0 s, say, would send keepalives in a loop.
_FLOORS = {
    **dict.fromkeys(
        ("keepalive_seconds", "openai_first_token_timeout", "openai_stall_timeout", "demo_reply_tokens", "max_prompt_chars",
         "feed_retention_seconds", "feed_max_events", "job_timeout_seconds", "worker_max_jobs", "lease_seconds"),
        "positive",
    ),
    **dict.fromkeys(
        ("history_max_chars", "openai_max_retries", "openai_retry_backoff", "demo_token_interval_ms", "worker_drain_seconds"),
        "non-negative",
    ),
}


def sqlite_path(database_url: str) -> Path | None:
    """The file of a SQLite database URL; None for an in-memory one or another database."""
    if not database_url.startswith("sqlite://"):
        return None
    path = database_url.removeprefix("sqlite://").partition("?")[0]
    return None if ":memory:" in path else Path(path)


def _coerce(cls, name: str, value: str):
    kind = {f.name: f.type for f in fields(cls)}[name]
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
    except ValueError:
        raise ValueError(f"{name.upper()}={value!r} is not a valid {kind}") from None
    if kind == "str | None":
        return value or None
    return value
