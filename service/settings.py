"""Service configuration, read from ``MIXQ_*`` environment variables and validated at construction."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATA_DIR = Path("mixq-data")
MIB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MIXQ_", extra="ignore")

    data_dir: Path = Field(default=DEFAULT_DATA_DIR, description="where the default SQLite file lives")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty: sqlite:///<data_dir>/mixq.db")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    local_workers: int = Field(default=1, ge=0, le=64, description="worker processes started by `mixq serve`")
    auth_required: bool = Field(default=False, description="every request needs a Bearer token")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="host names served besides loopback names and the bind address (the Host header is checked "
        "against them: DNS rebinding); '.example.org' serves its subdomains, '*' any host; comma-separated or JSON",
    )

    max_model_bytes: int = Field(default=64 * MIB, gt=0)
    max_dataset_bytes: int = Field(default=64 * MIB, gt=0)
    max_profile_bytes: int = Field(default=1 * MIB, gt=0)
    max_json_bytes: int = Field(default=1 * MIB, gt=0, description="any non-upload request body")
    allowed_workloads: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="entry points 'pkg.module:factory' jobs may name (operator allow-list); comma-separated or JSON",
    )

    # per-owner limits (tenancy): a clear 429/422/403 at submission or upload names the limit
    max_active_jobs_per_owner: int = Field(
        default=8, ge=1, description="queued plus running jobs one owner may have at a time"
    )
    max_qat_steps_per_job: int = Field(
        default=2_000_000, ge=1, description="n_trials x qat_steps of one job (its training work)"
    )
    max_upload_bytes_per_owner: int = Field(default=1024 * MIB, gt=0, description="all of one owner's uploads")
    max_priority_without_operator: int = Field(
        default=0, ge=-1000, le=1000, description="highest job priority a non-operator token may ask for"
    )

    # a job of an uploaded model runs in a child process of the worker under these limits (service.jobchild)
    upload_job_memory_bytes: int = Field(
        default=4 * 1024 * MIB, ge=64 * MIB,
        description="address space one job of an uploaded model may map beyond its imports; a submission whose "
        "estimated memory for one training batch is above it is refused (422 naming workload_options.batch_size)",
    )
    upload_job_cpu_s: int = Field(
        default=24 * 3600, ge=1, description="CPU seconds one job of an uploaded model may use"
    )
    upload_job_file_bytes: int = Field(
        default=64 * MIB, ge=0, description="largest file a job of an uploaded model may write (PostgreSQL only: "
        "with SQLite the child writes the database file)",
    )
    max_concurrent_inspections: int = Field(
        default=2, ge=1, le=64, description="uploads inspected at once (each in a child of up to 2 GiB); more: 429",
    )

    # the API server (uvicorn, `mixq serve`)
    keep_alive_timeout_s: int = Field(default=5, ge=1, le=600, description="an idle keep-alive connection is closed")
    max_header_bytes: int = Field(default=16 * 1024, ge=1024, description="largest request header block")
    max_connections: int = Field(default=200, ge=1, description="open connections at once; past them, 503")
    header_timeout_s: float = Field(
        default=10.0, gt=0, le=600, description="a connection whose request line and headers are not complete this "
        "long after it opened (or after a kept-alive request's first byte) is answered 408 and closed",
    )
    body_timeout_s: float = Field(default=30.0, gt=0, description="a request body silent this long: 408")
    max_requests_per_client: int = Field(
        default=32, ge=1, description="requests from one client address in progress at once; past them, 429"
    )
    trial_weights_dir: Path | None = Field(
        default=None, description="where a worker keeps each trial's trained weights while a job runs (default "
        "<data_dir>/trial-weights); the front points' weights and ONNX are made from it and stored in the database "
        "when the job ends (service/artefacts.py)",
    )
    export_front: bool = Field(
        default=True, description="store each front point's trained weights and checked QDQ ONNX when a job ends"
    )

    worker_nice: int = Field(
        default=10, ge=0, le=19, description="CPU niceness of `mixq worker`: trials yield to the API on a shared box"
    )
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    stale_after_s: float = Field(default=15.0, gt=0, description="a worker silent this long is presumed dead")
    poll_interval_s: float = Field(default=1.0, gt=0, description="idle worker: seconds between looks for work")
    events_poll_s: float = Field(default=0.5, gt=0, description="SSE: seconds between looks at the job")

    @field_validator("allowed_workloads", "allowed_hosts", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else [p.strip() for p in text.split(",") if p.strip()]
        return value

    @field_validator("database_url")
    @classmethod
    def _url_scheme(cls, value: str) -> str:
        if value and not value.startswith(("sqlite", "postgresql")):
            raise ValueError("MIXQ_DATABASE_URL: expected sqlite:///... or postgresql+psycopg://...")
        return value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        self.data_dir.mkdir(parents=True, exist_ok=True)  # a fresh machine has no data folder yet
        return f"sqlite:///{(self.data_dir / 'mixq.db').resolve()}"

    @property
    def host_is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def check_exposure(self) -> None:
        """Refuse to serve beyond this machine without auth."""
        if not self.host_is_loopback and not self.auth_required:
            raise ValueError(
                f"host: refusing to serve on non-loopback address {self.host!r} without auth; "
                "set MIXQ_AUTH_REQUIRED=true (and create tokens with `mixq token create`) or bind 127.0.0.1"
            )
