"""A typed Python client for the mixq service (``from service.client import Client``), built on httpx.

::

    from service.client import Client

    with Client("http://127.0.0.1:8000", token=None) as mixq:
        job = mixq.submit({"workload": "digits", "n_trials": 12, "qat_steps": 100})
        job = mixq.wait(job.id)                      # follows the job's event stream
        for point in mixq.front(job.id).points:
            mixq.download_onnx(job.id, point.number, "out/")   # out/trial0003-int8x2-int4x3.onnx

Every answer is parsed into the API's own schemas (``service.schemas``); an error answer raises
:class:`ApiError` carrying the HTTP status and the server's message; an unreachable server raises
:class:`ConnectionFailed`.  ``mixq jobs ...`` (``service.cli_jobs``) is this client on the command line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from service.schemas import JobCreate, JobOut, JobPage, Meta, ParetoOut, ProfileOut, TrialOut, TrialPage, UploadOut

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
TrialFile = Literal["qconfig", "weights", "onnx"]
_ROUTE = {"qconfig": "qconfig.json", "weights": "weights", "onnx": "model.onnx"}
_SUFFIX = {"qconfig": ".json", "weights": ".pt", "onnx": ".onnx"}


class ClientError(Exception):
    """Anything the client could not do."""


class ConnectionFailed(ClientError):
    """The server could not be reached (or the connection broke)."""


class ApiError(ClientError):
    """The server answered with an error: ``status`` and its ``detail`` (a message, or FastAPI's list of
    ``{loc, msg, type}`` for a 422)."""

    def __init__(self, status: int, detail: Any, method: str = "", path: str = "") -> None:
        self.status = status
        self.detail = detail
        self.method = method
        self.path = path
        super().__init__(f"{status}: {self.message}")

    @property
    def message(self) -> str:
        """The server's message in one line; a 422 names each field as the request spelled it
        (``n_trials: Input should be greater than or equal to 1``; ``pins.2.match: ...``)."""
        if isinstance(self.detail, list):
            parts = []
            for item in self.detail:
                if isinstance(item, Mapping):
                    where = list(item.get("loc", []))
                    if where and where[0] in ("body", "query", "path", "header") and len(where) > 1:
                        where = where[1:]  # the part of the request is clear from the call
                    loc = ".".join(str(p) for p in where)
                    parts.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg", "")))
                else:
                    parts.append(str(item))
            return "; ".join(parts)
        return str(self.detail)


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event of ``/v1/jobs/{id}/events``: ``progress`` and ``done`` carry a Job,
    ``trial`` a Trial, ``error`` ``{"detail"}``."""

    name: str
    data: dict[str, Any]

    @property
    def job(self) -> JobOut | None:
        if self.name in ("progress", "done") and "spec" in self.data:
            return JobOut.model_validate(self.data)
        return None

    @property
    def trial(self) -> TrialOut | None:
        return TrialOut.model_validate(self.data) if self.name == "trial" else None


def _filename(response: httpx.Response, fallback: str) -> str:
    disposition = response.headers.get("content-disposition", "")
    if 'filename="' in disposition:
        name = disposition.split('filename="', 1)[1].split('"', 1)[0]
        if name and "/" not in name and "\\" not in name and name not in (".", ".."):
            return name
    return fallback


class Client:
    """``Client(url, token)``: one connection pool; use as a context manager or call :meth:`close`."""

    def __init__(
        self, url: str = DEFAULT_URL, token: str | None = None, *, timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"cannot reach {self.url}: {exc}") from None
        self._raise_for(response, method, path)
        return response

    @staticmethod
    def _raise_for(response: httpx.Response, method: str, path: str) -> None:
        if response.is_success:
            return
        try:
            detail = response.json().get("detail", response.text)
        except (ValueError, AttributeError):
            detail = response.text or response.reason_phrase
        raise ApiError(response.status_code, detail, method, path)

    # -- meta and jobs -------------------------------------------------------------------------
    def meta(self) -> Meta:
        return Meta.model_validate(self._request("GET", "/v1/meta").json())

    def submit(self, spec: JobCreate | Mapping[str, Any], *, idempotency_key: str | None = None) -> JobOut:
        """Submit a job (``spec``: a JobCreate or its JSON); the same ``idempotency_key`` returns the same job."""
        body = spec.model_dump(mode="json", exclude_unset=True) if isinstance(spec, JobCreate) else dict(spec)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return JobOut.model_validate(self._request("POST", "/v1/jobs", json=body, headers=headers).json())

    def get(self, job_id: int) -> JobOut:
        return JobOut.model_validate(self._request("GET", f"/v1/jobs/{job_id}").json())

    def list(self, status: str | None = None, *, limit: int = 50, offset: int = 0) -> JobPage:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status is not None:
            params["status"] = status
        return JobPage.model_validate(self._request("GET", "/v1/jobs", params=params).json())

    def trials(self, job_id: int, *, limit: int = 200, offset: int = 0, sort: str = "number") -> TrialPage:
        params = {"limit": limit, "offset": offset, "sort": sort}
        return TrialPage.model_validate(self._request("GET", f"/v1/jobs/{job_id}/trials", params=params).json())

    def front(self, job_id: int) -> ParetoOut:
        """The Pareto front (final once the job succeeded, live before) and every complete trial."""
        return ParetoOut.model_validate(self._request("GET", f"/v1/jobs/{job_id}/pareto").json())

    def cancel(self, job_id: int) -> JobOut:
        return JobOut.model_validate(self._request("POST", f"/v1/jobs/{job_id}/cancel").json())

    def delete(self, job_id: int) -> None:
        self._request("DELETE", f"/v1/jobs/{job_id}")

    # -- events --------------------------------------------------------------------------------
    def events(self, job_id: int, *, read_timeout_s: float | None = None) -> Iterator[Event]:
        """The job's Server-Sent Events until the server ends the stream (after ``done`` or ``error``);
        ``read_timeout_s``: give up (:class:`ConnectionFailed`) when nothing arrives for that long."""
        path = f"/v1/jobs/{job_id}/events"
        timeout = httpx.Timeout(self._http.timeout.connect, read=read_timeout_s)
        try:
            with self._http.stream("GET", path, timeout=timeout) as r:
                if not r.is_success:
                    r.read()
                    self._raise_for(r, "GET", path)
                name, data = "message", list[str]()
                for line in r.iter_lines():
                    if not line:
                        if data:
                            yield Event(name, json.loads("\n".join(data)))
                        name, data = "message", []
                    elif line.startswith("event:"):
                        name = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].lstrip())
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"event stream of job {job_id} from {self.url}: {exc}") from None

    def wait(
        self, job_id: int, *, timeout_s: float | None = None, on_event: Callable[[Event], None] | None = None,
        reconnect_s: float = 1.0,
    ) -> JobOut:
        """Follow the job until it is succeeded, failed or cancelled; return it.  A broken stream (a
        server restart) is opened again; ``TimeoutError`` after ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.get(job_id)
            if job.status in TERMINAL_STATUSES:
                return job
            try:
                left = None if deadline is None else max(0.1, deadline - time.monotonic())
                for event in self.events(job_id, read_timeout_s=left):
                    if on_event is not None:
                        on_event(event)
                    if event.name == "error":
                        raise ApiError(401, event.data.get("detail", "event stream error"), "GET", "events")
                    if event.name == "done":
                        if event.data.get("status") == "deleted":
                            raise ApiError(404, f"job {job_id} was deleted", "GET", "events")
                        return JobOut.model_validate(event.data)
                    if deadline is not None and time.monotonic() > deadline:
                        raise TimeoutError(f"job {job_id} still {job.status} after {timeout_s} s")
            except ConnectionFailed:
                pass  # the server went away mid-stream: look again
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still running after {timeout_s} s")
            time.sleep(reconnect_s)

    # -- files ---------------------------------------------------------------------------------
    def trial_file(self, job_id: int, number: int, what: TrialFile) -> tuple[str, bytes]:
        """(server's file name, bytes) of a trial's qconfig, or a front point's weights or ONNX model."""
        response = self._request("GET", f"/v1/jobs/{job_id}/pareto/{number}/{_ROUTE[what]}")
        return _filename(response, f"trial{number:04d}{_SUFFIX[what]}"), response.content

    def save(self, job_id: int, number: int, what: TrialFile, folder: str | Path = ".") -> Path:
        """Save a trial file into ``folder`` (made if missing) under the server's name; returns the path."""
        name, data = self.trial_file(job_id, number, what)
        target = Path(folder) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return target

    def _download(self, job_id: int, number: int, what: TrialFile, dest: str | Path | None) -> Path:
        if dest is None or Path(dest).is_dir() or str(dest).endswith(("/", "\\")):
            return self.save(job_id, number, what, "." if dest is None else dest)
        _, data = self.trial_file(job_id, number, what)
        target = Path(dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return target

    def download_qconfig(self, job_id: int, number: int, dest: str | Path | None = None) -> Path:
        """Save the qconfig file (``dest``: a file, or a folder for the server's name); returns the path."""
        return self._download(job_id, number, "qconfig", dest)

    def download_weights(self, job_id: int, number: int, dest: str | Path | None = None) -> Path:
        return self._download(job_id, number, "weights", dest)

    def download_onnx(self, job_id: int, number: int, dest: str | Path | None = None) -> Path:
        return self._download(job_id, number, "onnx", dest)

    def qconfig(self, job_id: int, number: int) -> dict[str, Any]:
        """The qconfig file's JSON (``search.quant.qconfig.load_qconfig`` validates it)."""
        return dict(self._request("GET", f"/v1/jobs/{job_id}/pareto/{number}/qconfig.json").json())

    # -- uploads -------------------------------------------------------------------------------
    def _upload(self, path: str, file: str | Path, name: str) -> UploadOut:
        data = Path(file).read_bytes()
        files = {"file": (Path(file).name, data)}
        return UploadOut.model_validate(self._request("POST", path, files=files, data={"name": name}).json())

    def upload_model(self, file: str | Path, name: str) -> UploadOut:
        """An fp32 ONNX model, referred to as ``model: name`` in a job spec."""
        return self._upload("/v1/models", file, name)

    def upload_dataset(self, file: str | Path, name: str) -> UploadOut:
        """An ``.npz`` with x_train, y_train[, x_test, y_test]; ``dataset: name`` in a job spec."""
        return self._upload("/v1/datasets", file, name)

    def upload_profile(self, file: str | Path) -> ProfileOut:
        """A target profile (YAML or JSON), named by its own ``name``."""
        files = {"file": (Path(file).name, Path(file).read_bytes())}
        return ProfileOut.model_validate(self._request("POST", "/v1/profiles", files=files).json())


__all__ = ["ApiError", "Client", "ClientError", "ConnectionFailed", "Event"]
