"""Which Prefect API a one-shot command (``previews build``, ``previews cleanup``) talks to, found cheaply.

In order: ``PREFECT_API_URL`` when it is set (nothing to do); else the server of a running ``previews up``,
whose address ``previews up`` keeps in ``<state dir>/prefect-api-url`` while it runs (the state directory is
``PREVIEWS_STATE_DIR``, default ``.state``), when it answers ``/api/health``; else a temporary server, as
Prefect's own ephemeral mode starts one (same app, same database under ``PREFECT_HOME``, no UI), but started
first thing, so that it boots while this process imports the flow and Prefect (seconds each), and stopped on
exit. Imports nothing heavy: it runs before Prefect is imported.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

from previews.errors import PreviewsError

API_URL_FILE = "prefect-api-url"
DEFAULT_STATE_DIR = ".state"


class PrefectApiError(PreviewsError):
    """No Prefect API could be found or started."""


def answers(api_url: str, *, timeout: float = 0.5) -> bool:
    """Whether ``<api_url>/health`` answers 200 within ``timeout`` seconds."""
    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout).status_code == 200
    except (httpx.HTTPError, ValueError):
        return False


def configured_api_url(environ: Mapping[str, str]) -> str | None:
    """``PREFECT_API_URL`` from the environment, else from the active Prefect profile (read without importing
    Prefect: once imported, Prefect's settings are fixed, so this runs first)."""
    if environ.get("PREFECT_API_URL"):
        return environ["PREFECT_API_URL"]
    home = Path(environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    path = Path(environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    active = environ.get("PREFECT_PROFILE") or profiles.get("active")
    value = profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL") if active else None
    return str(value) if value else None


def running_stack_api(environ: Mapping[str, str]) -> str | None:
    """The API URL of a running ``previews up`` (its state directory's note), when it answers."""
    state_dir = Path(environ.get("PREVIEWS_STATE_DIR") or DEFAULT_STATE_DIR)
    try:
        api_url = (state_dir / API_URL_FILE).read_text().strip()
    except OSError:
        return None
    if not api_url.startswith(("http://127.0.0.1:", "http://localhost:")):
        return None  # only a local stack's own server: never send runs to an address a file names
    # A refused connection answers at once; a loaded machine's server can take seconds to say it is healthy.
    return api_url if answers(api_url, timeout=5.0) else None


@contextmanager
def noted(state_dir: Path, api_url: str) -> Iterator[None]:
    """Keep ``api_url`` in ``<state_dir>/prefect-api-url`` while the stack runs (``previews up``)."""
    note = state_dir / API_URL_FILE
    note.write_text(api_url + "\n")
    try:
        yield
    finally:
        with suppress(OSError):
            note.unlink()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_temporary_server(environ: Mapping[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """Start Prefect's API app (as its ephemeral mode does) on a free loopback port; do not wait for it."""
    port = _free_port()
    env = {
        **environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    argv = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"]
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return process, f"http://127.0.0.1:{port}/api"


def wait_until_up(process: subprocess.Popen[bytes], api_url: str, *, timeout: float = 120.0) -> None:
    """Wait until the temporary server answers; a clear error when it exits or does not answer in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answers(api_url, timeout=1.0):
            return
        if process.poll() is not None:
            stderr = process.stderr.read().decode(errors="replace")[-500:] if process.stderr else ""
            raise PrefectApiError(f"the temporary Prefect server exited ({process.returncode}): {stderr}")
        time.sleep(0.05)
    raise PrefectApiError(f"the temporary Prefect server did not answer within {timeout:.0f}s")


_PREFECT_QUEUES = (("prefect.logging.handlers", "APILogWorker"), ("prefect.events.worker", "EventsWorker"))


def drain_prefect(timeout: float = 10.0) -> None:
    """Let Prefect send the logs and events it still holds while the temporary server answers.

    Prefect sends them from background queues drained at interpreter exit; with the server already stopped
    by then, each connection attempt failed and retried, and the command took ~100 s longer to exit.
    """
    for module_name, worker_name in _PREFECT_QUEUES:
        worker = getattr(sys.modules.get(module_name), worker_name, None)
        if worker is not None:
            with suppress(Exception):  # best effort: the run's outcome is already decided and printed
                worker.drain_all(timeout=timeout)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the temporary server (SIGTERM, then SIGKILL after 5 s)."""
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stderr:
        process.stderr.close()


@dataclass(frozen=True)
class OneShotApi:
    """The API a one-shot command uses: ``where`` says which; :meth:`ready` returns once it answers."""

    where: str
    process: subprocess.Popen[bytes] | None = None
    api_url: str = ""

    def ready(self) -> None:
        """Wait for a temporary server to answer (nothing to wait for otherwise)."""
        if self.process is not None:
            wait_until_up(self.process, self.api_url)


@contextmanager
def one_shot_api(environ: MutableMapping[str, str] = os.environ) -> Iterator[OneShotApi]:
    """Point this process at a Prefect API for one command (sets ``PREFECT_API_URL`` before Prefect loads).

    ``PREFECT_API_URL`` when set; else a running ``previews up`` server; else a temporary server, started here
    at once and stopped on exit: call :meth:`OneShotApi.ready` before the first API call.
    """
    configured = configured_api_url(environ)
    if configured is not None:
        yield OneShotApi(f"the Prefect API at {configured}")
        return
    stack_api = running_stack_api(environ)
    if stack_api is not None:
        environ["PREFECT_API_URL"] = stack_api
        try:
            yield OneShotApi(f"the running previews up server at {stack_api}")
        finally:
            environ.pop("PREFECT_API_URL", None)
        return
    process, api_url = start_temporary_server(dict(environ))
    environ["PREFECT_API_URL"] = api_url
    try:
        yield OneShotApi(f"a temporary Prefect server at {api_url}", process, api_url)
    finally:
        drain_prefect()
        stop(process)
        environ.pop("PREFECT_API_URL", None)
