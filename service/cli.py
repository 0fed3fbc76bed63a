"""The ``mixq`` command: ``serve``, ``worker``, ``token create``, ``db upgrade``/``downgrade``
(plus the search library's ``search``/``export`` commands when ``search.cli`` provides them).

Quick start (SQLite under ./mixq-data, one local worker)::

    mixq serve
    mixq jobs submit --workload digits --set n_trials=12 --set qat_steps=100 --watch
    mixq jobs show 1                                   # the front
    mixq jobs download 1 --out job-1                   # qconfig, weights and QDQ ONNX of each front point

More machines: ``MIXQ_DATABASE_URL=postgresql+psycopg://user@db/mixq mixq worker`` on each.
Beyond loopback: ``MIXQ_AUTH_REQUIRED=true mixq serve --host 0.0.0.0`` and ``mixq token create --owner NAME``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from service.cli_jobs import jobs_app
from service.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from service.worker import Worker

# rich_markup_mode=None: click's plain help, whose option column never cuts a flag name short (rich's
# table squeezed --max-quality-drop to "--max-quality-dr…" at 80 columns); long flags wrap their help
app = typer.Typer(help="mixq: mixed-precision quantization search service", no_args_is_help=True,
                  rich_markup_mode=None)
token_app = typer.Typer(help="API tokens", no_args_is_help=True, rich_markup_mode=None)
db_app = typer.Typer(help="Database migrations", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(token_app, name="token")
app.add_typer(db_app, name="db")
app.add_typer(jobs_app, name="jobs")


def _settings(database_url: str | None) -> Settings:
    settings = Settings()
    if database_url:
        settings = settings.model_copy(update={"database_url": database_url})
    return settings


def _exit_on_database_error(url: str, exc: Exception) -> NoReturn:
    """One line naming the database (password masked) and the driver's reason, exit status 2: a
    wrong URL or a stopped server is an operator's mistake, not a crash worth 465 lines."""
    from sqlalchemy.engine import make_url

    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown by its scheme only
        shown = url.split(":", 1)[0] + ":..."
    cause = getattr(exc, "orig", None) or exc
    reason = " ".join(str(cause).split()) or type(cause).__name__
    typer.echo(f"error: database {shown} unreachable: {reason}", err=True)
    raise typer.Exit(2)


@contextlib.contextmanager
def _database_errors(url: str) -> Iterator[None]:
    from sqlalchemy.exc import ArgumentError, DBAPIError

    try:
        yield
    except (DBAPIError, ArgumentError) as exc:
        _exit_on_database_error(url, exc)


DatabaseUrl = Annotated[str | None, typer.Option("--database-url", help="overrides MIXQ_DATABASE_URL")]


@contextlib.contextmanager
def _session(database_url: str | None) -> Iterator[Session]:
    """One transaction on the configured database for a CLI command; an unreachable database is
    one line and exit 2, and the engine is disposed of either way."""
    from service.db import Database

    url = _settings(database_url).resolved_database_url
    db = Database(url)
    try:
        with _database_errors(url), db.session() as session:
            yield session
    finally:
        db.dispose()


@db_app.command("upgrade")
def db_upgrade(revision: str = "head", database_url: DatabaseUrl = None) -> None:
    """Apply migrations (creates everything on an empty database)."""
    from service.db import upgrade

    url = _settings(database_url).resolved_database_url
    with _database_errors(url):
        upgrade(url, revision)
    typer.echo(f"database at {revision}")


@db_app.command("downgrade")
def db_downgrade(revision: str = "base", database_url: DatabaseUrl = None) -> None:
    """Revert migrations (``base`` drops mixq's tables; Optuna's are left alone)."""
    from service.db import downgrade

    url = _settings(database_url).resolved_database_url
    with _database_errors(url):
        downgrade(url, revision)
    typer.echo(f"database at {revision}")


@token_app.command("create")
def token_create(
    owner: Annotated[str, typer.Option(help="who the token acts as; jobs are visible to their owner only")],
    name: Annotated[str, typer.Option(help="a note, e.g. the machine or person")] = "",
    expires_in: Annotated[
        str | None, typer.Option(help="lifetime: 90d, 12h, 30m or seconds; default: until revoked")
    ] = None,
    role: Annotated[
        str, typer.Option(help="user, or operator (may also submit jobs above the default priority)")
    ] = "user",
    database_url: DatabaseUrl = None,
) -> None:
    """Create an API token; it is printed once and stored only as a hash."""
    from service.auth import create_token, parse_duration

    try:
        lifetime = parse_duration(expires_in) if expires_in is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--expires-in") from None
    from service.models import TokenRole

    if role not in {r.value for r in TokenRole}:
        raise typer.BadParameter(f"{role!r}: expected one of {', '.join(r.value for r in TokenRole)}",
                                 param_hint="--role")
    try:
        with _session(database_url) as session:
            token = create_token(session, owner, name, lifetime, TokenRole(role))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(token)


@token_app.command("list")
def token_list(
    owner: Annotated[str | None, typer.Option(help="only this owner's tokens")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Tokens by id, owner, name, creation, expiry and state (never the secret: only its hash is kept)."""
    from service import store
    from service.models import utcnow

    with _session(database_url) as session:
        rows = store.list_tokens(session, owner)
        now = utcnow()
        typer.echo("id\towner\tname\tcreated_utc\texpires_utc\tstate\trole")
        for row in rows:
            expired = row.expires_at is not None and row.expires_at <= now
            state = "revoked" if row.revoked else "expired" if expired else "active"
            expires = row.expires_at.isoformat(timespec="seconds") if row.expires_at else "never"
            typer.echo(f"{row.id}\t{row.owner}\t{row.name}\t{row.created_at.isoformat(timespec='seconds')}"
                       f"\t{expires}\t{state}\t{row.role}")


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[int, typer.Argument(help="the id `mixq token list` shows")],
    database_url: DatabaseUrl = None,
) -> None:
    """Revoke a token: requests with it get 401, and its open event streams end."""
    from service import store

    with _session(database_url) as session:
        row = store.revoke_token(session, token_id)
    if row is None:
        typer.echo(f"error: token_id: no token {token_id} (see `mixq token list`)", err=True)
        raise typer.Exit(2)
    typer.echo(f"token {token_id} of {row.owner} revoked")


_PARENT_ENV = "MIXQ_SERVE_PID"
_ORPHAN_CHECK_S = 1.0


def _stop_when_orphaned(w: Worker, parent_pid: int) -> None:
    while not w.stop_event.wait(_ORPHAN_CHECK_S):
        if os.getppid() != parent_pid:
            logging.getLogger("mixq.worker").info("`mixq serve` (pid %d) is gone: stopping", parent_pid)
            w.stop()


@app.command()
def worker(
    database_url: DatabaseUrl = None,
    max_jobs: Annotated[int | None, typer.Option(help="exit after this many job runs")] = None,
) -> None:
    """Run trials of queued and running jobs until SIGTERM/SIGINT (finishing the current trial)."""
    from search import set_torch_threads
    from service.db import Database
    from service.worker import Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = _settings(database_url)
    # `mixq serve` starts local_workers of these on one machine: each takes its share of the cores
    # (for its whole life, whatever the load: a trial's numbers follow the thread count)
    threads = set_torch_threads(processes=max(1, settings.local_workers))
    logging.getLogger("mixq.worker").info(threads)
    if settings.worker_nice:
        os.nice(settings.worker_nice)
    db = Database(settings.resolved_database_url)
    w = Worker(db, settings)

    def _stop(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("mixq.worker").info("signal %d: stopping after the current trial", signum)
        w.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    parent = os.environ.get(_PARENT_ENV)
    if parent:  # started by `mixq serve`: stop when it is gone, even if it was SIGKILLed
        threading.Thread(target=_stop_when_orphaned, args=(w, int(parent)), daemon=True).start()
    try:
        w.run_forever(max_jobs=max_jobs)
    finally:
        db.dispose()


class _Server:
    """uvicorn's server, minus its habit of re-raising SIGTERM/SIGINT after shutdown (which would kill
    this process before it stops its workers)."""

    def __init__(self, config: object) -> None:
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        self.server = Server(config)  # type: ignore[arg-type]

    def run(self) -> None:
        def _exit(_signum: int, _frame: FrameType | None) -> None:
            self.server.should_exit = True

        signal.signal(signal.SIGTERM, _exit)
        signal.signal(signal.SIGINT, _exit)
        self.server.run()


def uvicorn_config(settings: Settings, asgi_app: object) -> Any:
    """The API server's configuration: idle keep-alive connections closed after a few seconds, a header block
    at most MIXQ_MAX_HEADER_BYTES and complete within MIXQ_HEADER_TIMEOUT_S (``service.http_protocol``), at most
    MIXQ_MAX_CONNECTIONS connections (503 past them)."""
    import uvicorn

    from service.http_protocol import header_timeout_protocol

    return uvicorn.Config(
        asgi_app, host=settings.host, port=settings.port, log_level="info",  # type: ignore[arg-type]
        http=header_timeout_protocol(settings.header_timeout_s),
        timeout_keep_alive=settings.keep_alive_timeout_s,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        limit_concurrency=settings.max_connections, timeout_graceful_shutdown=30,
    )


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address (MIXQ_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (MIXQ_PORT)")] = None,
    workers: Annotated[int | None, typer.Option(help="local worker processes (MIXQ_LOCAL_WORKERS)")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """API + migrations + local workers: the one command a new user needs."""
    from service.db import upgrade
    from service.main import create_app

    updates = {k: v for k, v in {"host": host, "port": port, "local_workers": workers}.items() if v is not None}
    settings = _settings(database_url).model_copy(update=updates)
    try:
        settings.check_exposure()
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    url = settings.resolved_database_url
    with _database_errors(url):
        upgrade(url)
    env = {**os.environ, "MIXQ_DATABASE_URL": url, _PARENT_ENV: str(os.getpid()),
           "MIXQ_LOCAL_WORKERS": str(settings.local_workers)}
    procs = [
        subprocess.Popen([sys.executable, "-m", "service.cli", "worker"], env=env)
        for _ in range(settings.local_workers)
    ]
    typer.echo(f"mixq: API on http://{settings.host}:{settings.port} (docs at /docs), {len(procs)} worker(s), "
               f"database {url}")
    try:
        _Server(uvicorn_config(settings, create_app(settings))).run()
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)  # each finishes the trial in hand; the job continues later
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


# The search library's commands (``mixq search``, ``mixq export``) are added here by ``search.cli``;
# this file only mounts them.
_search_cli: ModuleType | None
try:
    from search import cli as _search_cli
except ImportError:
    _search_cli = None
if _search_cli is not None and hasattr(_search_cli, "register"):
    _search_cli.register(app)


if __name__ == "__main__":
    app()
