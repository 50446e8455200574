"""The front end's configuration: one frozen object, built once at the process edge."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from medrobust.env import env_float, env_int, env_str


@dataclass(frozen=True)
class ServiceConfig:
    """Everything `medrobust serve` and `create_app` need; tests construct it directly."""

    model_repo: Path | None = None
    tf_serving: str | None = None  # HOST:PORT of TF Serving's gRPC port; None means the embedded backend
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    threads: int = 4
    max_upload_bytes: int = 20_000_000
    max_pixels: int = 50_000_000
    api_token: str | None = None
    admin_token: str | None = None
    grpc_deadline_seconds: float = 10.0
    poll_seconds: float = 30.0
    max_loaded: int = 8
    models: tuple[str, ...] = ()  # TF Serving without a mounted repository: the served model names
    # The audit store to show on the Audits page (runs come from a separate `medrobust audit worker`);
    # None: no Audits page. Reports drawn for the page go under audit_artefacts.
    database_url: str | None = None
    audit_artefacts: Path | None = None

    def __post_init__(self) -> None:
        for name in ("model_repo", "audit_artefacts"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        checks = (
            ("port", self.port, 0),
            ("workers", self.workers, 1),
            ("threads", self.threads, 1),
            ("max_upload_bytes", self.max_upload_bytes, 1),
            ("max_pixels", self.max_pixels, 1),
            ("max_loaded", self.max_loaded, 1),
        )
        for name, value, low in checks:
            if value < low:
                raise ValueError(f"expected {name} >= {low}, got {value}")
        if self.grpc_deadline_seconds <= 0:
            raise ValueError(f"expected grpc_deadline_seconds > 0, got {self.grpc_deadline_seconds}")
        if self.poll_seconds <= 0:
            raise ValueError(f"expected poll_seconds > 0, got {self.poll_seconds}")
        if self.model_repo is None and not (self.tf_serving and self.models):
            raise ValueError(
                "expected a model repository (MEDROBUST_MODEL_REPO / --model-repo), or TF Serving with "
                "--models naming the served models; got neither"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> ServiceConfig:
        """Read `MEDROBUST_*` variables; keyword overrides (the CLI's flags) win over them."""
        env = os.environ if environ is None else environ
        repo = env_str("MODEL_REPO", None, env)
        models = env_str("MODELS", "", env) or ""
        values = dict(
            model_repo=Path(repo) if repo else None,
            tf_serving=env_str("TF_SERVING", None, env),
            host=env_str("HOST", "127.0.0.1", env),
            port=env_int("PORT", 8000, env),
            workers=env_int("WORKERS", 1, env),
            threads=env_int("THREADS", 4, env),
            max_upload_bytes=env_int("MAX_UPLOAD_BYTES", 20_000_000, env),
            max_pixels=env_int("MAX_PIXELS", 50_000_000, env),
            api_token=env_str("API_TOKEN", None, env),
            admin_token=env_str("ADMIN_TOKEN", None, env),
            grpc_deadline_seconds=env_float("GRPC_DEADLINE_SECONDS", 10.0, env),
            poll_seconds=env_float("POLL_SECONDS", 30.0, env),
            max_loaded=env_int("MAX_LOADED", 8, env),
            models=tuple(m.strip() for m in models.split(",") if m.strip()),
            database_url=env_str("DATABASE_URL", None, env),
            audit_artefacts=env_str("AUDIT_ARTEFACTS", None, env),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
