"""``previews up``: the whole stack on one machine, on embedded defaults.

A Prefect server on SQLite (state under ``.state/``), the webhook receiver, and the deployments served by a
local runner polling every second. ``--demo`` adds a throwaway registry and sample repository and sends one
signed ``pull_request`` delivery through the whole chain. Every process is stopped by its PID on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from previews.errors import PreviewsError
from previews.local import demo


class StackError(PreviewsError):
    """A part of the local stack did not start."""


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise StackError(f"{log.stem} exited with status {proc.returncode}; last log lines:\n{tail}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise StackError(f"{log.stem} did not answer at {url} within {timeout:.0f}s (log: {log})")


@dataclass
class Stack:
    """The processes of a running stack, stopped in reverse order."""

    state_dir: Path
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(
        self, name: str, argv: list[str], env: Mapping[str, str]
    ) -> tuple[subprocess.Popen[bytes], Path]:
        """Start ``argv`` with its output in ``.state/logs/<name>.log``."""
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=dict(env), start_new_session=True
            )
        self.processes.append((name, proc))
        return proc, log

    def stop(self) -> None:
        """SIGINT then SIGTERM then SIGKILL each process, newest first, by PID."""
        for _name, proc in reversed(self.processes):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            for _name, proc in reversed(self.processes):
                try:
                    proc.wait(timeout=wait)
                except subprocess.TimeoutExpired:
                    proc.send_signal(sig)
        for _name, proc in self.processes:
            proc.wait()


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


@contextmanager
def run_stack(
    *, state_dir: Path, receiver_port: int, prefect_port: int, extra_env: Mapping[str, str]
) -> Iterator[dict[str, str]]:
    """Start server, runner and receiver; yield the URLs; stop everything on exit."""
    for port, what in ((prefect_port, "--prefect-port"), (receiver_port, "--port")):
        if not _port_free(port):
            raise StackError(f"port {port} is already in use on 127.0.0.1; choose another with {what}")
    stack = Stack(state_dir)
    api_url = f"http://127.0.0.1:{prefect_port}/api"
    base_env = {
        **os.environ,
        "PREFECT_HOME": str(state_dir / "prefect"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": api_url,
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREVIEWS_UI_URL": f"http://127.0.0.1:{prefect_port}",
        **extra_env,
    }
    try:
        server, log = stack.start(
            "prefect-server",
            [_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
            base_env,
        )
        _wait_http(f"http://127.0.0.1:{prefect_port}/api/health", server, log, timeout=180)
        runner, log = stack.start("flows", [sys.executable, "-m", "flows.serve"], base_env)
        receiver, rlog = stack.start(
            "receiver",
            [_bin("previews"), "serve", "--host", "127.0.0.1", "--port", str(receiver_port)],
            base_env,
        )
        _wait_http(f"http://127.0.0.1:{receiver_port}/healthz", receiver, rlog, timeout=60)
        _wait_for_deployments(api_url, runner, log, timeout=120)
        yield {
            "ui": f"http://127.0.0.1:{prefect_port}",
            "api": api_url,
            "receiver": f"http://127.0.0.1:{receiver_port}/webhooks/github",
            "logs": str(state_dir / "logs"),
        }
    finally:
        stack.stop()


def _wait_for_deployments(
    api_url: str, runner: subprocess.Popen[bytes], log: Path, *, timeout: float
) -> None:
    """Wait until the runner has registered the deployments and their trigger automations."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if runner.poll() is not None:
            raise StackError(f"the flow runner exited with status {runner.returncode} (log: {log})")
        try:
            deployments = httpx.post(f"{api_url}/deployments/filter", json={}, timeout=5).json()
            automations = httpx.post(f"{api_url}/automations/filter", json={}, timeout=5).json()
            names = {d["name"] for d in deployments}
            if {"preview-image", "preview-teardown"} <= names and len(automations) >= 2:
                return
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            pass
        time.sleep(0.5)
    raise StackError(f"the deployments were not served within {timeout:.0f}s (log: {log})")


def webhook_secret(state_dir: Path, environ: Mapping[str, str]) -> tuple[str, str]:
    """The stack's webhook secret and where it comes from.

    ``PREVIEWS_WEBHOOK_SECRET`` if set; otherwise the one generated for this state directory on its first
    ``previews up`` and kept in ``<state>/webhook-secret`` (mode 0600), so GitHub's side stays valid across
    restarts.
    """
    if environ.get("PREVIEWS_WEBHOOK_SECRET"):
        return environ["PREVIEWS_WEBHOOK_SECRET"], "from PREVIEWS_WEBHOOK_SECRET"
    path = state_dir / "webhook-secret"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32))
    return path.read_text().strip(), f"generated for this stack, kept in {path}"


def _up(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    secret, secret_origin = webhook_secret(state_dir, os.environ)
    with ExitStack() as stack:
        extra_env: dict[str, str] = {"PREVIEWS_WEBHOOK_SECRET": secret}
        sample: demo.DemoProject | None = None
        if args.demo:
            registry = stack.enter_context(demo.run_registry(state_dir / "demo" / "registry"))
            sample = demo.make_project(state_dir / "demo" / "remotes")
            extra_env |= {
                "PREVIEWS_REGISTRY": registry.host,
                "PREVIEWS_REGISTRY_USERNAME": registry.username,
                "PREVIEWS_REGISTRY_TOKEN": registry.password,
                "PREVIEWS_GIT_URL_TEMPLATE": sample.git_url_template,
                "PREVIEWS_ALLOWED_REPOSITORIES": sample.repository,
                "PREVIEWS_OUTBOX_PATH": str(state_dir / "demo" / "outbox.sqlite3"),
            }
        urls = stack.enter_context(
            run_stack(
                state_dir=state_dir,
                receiver_port=args.port,
                prefect_port=args.prefect_port,
                extra_env=extra_env,
            )
        )
        print(f"Prefect UI:        {urls['ui']}")
        print(f"Webhook receiver:  {urls['receiver']}")
        if secret_origin.startswith("generated"):  # the user needs it for GitHub's webhook settings
            print(f"Webhook secret:    {secret}  ({secret_origin})")
        else:
            print(f"Webhook secret:    {secret_origin}")
        print(f"Logs:              {urls['logs']}")
        if args.demo and sample is not None:
            print("Demo: sending a signed pull_request delivery built from a real GitHub payload ...")
            outcome = demo.send_and_wait(
                sample,
                receiver_url=urls["receiver"],
                api_url=urls["api"],
                ui_url=urls["ui"],
                registry=registry,
                secret=secret,
                timeout=args.timeout,
            )
            for key, value in outcome.items():
                print(f"{key + ':':19}{value}")
            if args.exit_after_demo:
                return 0
        print("Press Ctrl-C to stop.")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("\nStopping ...")
    return 0


def register(sub: Any) -> None:
    """Add ``previews up`` to the CLI."""
    up = sub.add_parser("up", help="run Prefect, the receiver and the flows locally (--demo: end to end)")
    up.add_argument("--port", type=int, default=8787, help="receiver port (default 8787)")
    up.add_argument("--prefect-port", type=int, default=4200, help="Prefect server port (default 4200)")
    up.add_argument("--demo", action="store_true", help="also run a demo registry, repository and delivery")
    up.add_argument("--state-dir", default=".state", help="where the stack keeps its state (default .state)")
    up.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the demo image")
    up.add_argument(
        "--exit-after-demo", action="store_true", help="stop the stack once the demo image exists"
    )
    up.set_defaults(handler=_up)
