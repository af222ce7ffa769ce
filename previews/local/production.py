"""``previews up --production``: Prefect's self-hosted scale-out shape on one machine.

PostgreSQL (Debian's binaries, a cluster in ``<state>/production/postgres`` on a loopback port) and Redis
(``redis-server``, loopback, no persistence) back two Prefect API server processes started with
``--no-services``; one ``prefect server services start`` process runs the background services once (triggers,
actions, event persister, scheduler...). This is the layout of Prefect's "Scale self-hosted Prefect" guide:
``PREFECT_MESSAGING_BROKER``/``PREFECT_MESSAGING_CACHE=prefect_redis.messaging``, Redis causal ordering,
lease storage and Docket, migrations run once before the servers start.

HAProxy (Debian's ``haproxy``) balances the two API servers on one loopback port and takes a server out when
``/api/health`` stops answering: the receiver, the workers and the flow-run containers all talk to it, so one
API server process can die without anyone noticing. The ``previews`` Docker work pool gets a concurrency
limit, ``prefect deploy --all`` deploys prefect.yaml (building the runner image), an automation re-schedules
a Crashed ``preview-image`` run once, and N Docker workers (default 2) poll the pool.

The database and Redis passwords are generated for the state directory (files of mode 0600) and reach only
the server processes: the workers copy their own ``PREFECT_*`` settings into every flow-run container, so
they are started without them.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from previews.local import stack as local

ROOT = Path(__file__).resolve().parents[2]
PG_BIN = Path("/usr/lib/postgresql/15/bin")
POOL = "previews"
RETRY_AUTOMATION = "previews-retry-crashed-once"
# A run that finds no free slot waits this long before it is offered again (Prefect's default is 30 s).
SLOT_WAIT_SECONDS = 3


@dataclass(frozen=True)
class Ports:
    """Where each part listens on 127.0.0.1."""

    postgres: int
    redis: int
    servers: tuple[int, ...]
    api: int
    receiver: int


@dataclass(frozen=True)
class ProductionRunning:
    """A started production-shaped stack: its processes and where its parts answer."""

    stack: local.Stack
    ports: Ports
    api: str
    receiver: str
    outbox: Path
    logs: Path
    workers: tuple[str, ...]

    def part(self, name: str) -> local.Part:
        """The running part called ``name`` (``prefect-api-1``, ``worker-2``, ...)."""
        return next(p for p in self.stack.parts if p.name == name)


def missing_programs(search_path: str | None = None) -> list[str]:
    """What the production stack needs and cannot find on ``search_path`` (PATH and the sbin
    directories), one sentence each."""
    where = search_path if search_path is not None else os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    problems = []
    if not (PG_BIN / "postgres").exists():
        problems.append(f"PostgreSQL 15 is not installed ({PG_BIN}/postgres): apt-get install postgresql")
    for program, package in (("redis-server", "redis-server"), ("haproxy", "haproxy")):
        if shutil.which(program, path=where) is None:
            problems.append(f"{program} is not installed: apt-get install {package}")
    return problems


def _secret(path: Path) -> str:
    """A password generated once for this state directory, kept in ``path`` (mode 0600)."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(24))
    return path.read_text().strip()


# --- PostgreSQL ------------------------------------------------------------------------------------------


def _pg_user() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as when we are root (it refuses root); None: run as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError as exc:
        raise local.StackError(
            "PostgreSQL refuses to run as root and there is no 'postgres' user: apt-get install postgresql"
        ) from exc


def _as_pg(argv: list[str], user: pwd.struct_passwd | None) -> list[str]:
    if user is None:
        return argv
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--", *argv]


def _check_reachable(path: Path, user: pwd.struct_passwd) -> None:
    """Every directory above ``path`` must let ``user`` pass, or PostgreSQL cannot open its data."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if parent.stat().st_uid != user.pw_uid and not mode & 0o001:
            raise local.StackError(
                f"PostgreSQL (user {user.pw_name}) cannot reach {path} because {parent} is not searchable "
                f"by others: chmod o+x {parent}, or choose another --state-dir"
            )


def _init_postgres(root: Path, password: str, user: pwd.struct_passwd | None) -> Path:
    """``initdb`` a cluster under ``root`` once (superuser ``prefect``, password auth on TCP)."""
    data, sockets = root / "data", root / "run"
    for path in (root, sockets):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if user is not None:
            os.chown(path, user.pw_uid, user.pw_gid)
    if user is not None:
        _check_reachable(root, user)
    if (data / "PG_VERSION").exists():
        return data
    pwfile = root / "initdb-password"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    if user is not None:
        os.chown(pwfile, user.pw_uid, user.pw_gid)
    try:
        argv = [str(PG_BIN / "initdb"), "-D", str(data), "-U", "prefect", f"--pwfile={pwfile}"]
        argv += ["--auth-host=scram-sha-256", "--auth-local=peer", "-E", "UTF8", "--no-instructions"]
        done = subprocess.run(_as_pg(argv, user), capture_output=True, text=True, timeout=300, cwd=root)
    finally:
        pwfile.unlink()
    if done.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        raise local.StackError(f"initdb failed: {done.stderr.strip()[-1000:]}")
    return data


def _start_postgres(stack: local.Stack, root: Path, port: int, password: str) -> str:
    """Start the cluster on 127.0.0.1:``port``; create the ``prefect`` database; return its URL."""
    user = _pg_user()
    data = _init_postgres(root, password, user)
    argv = [str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port), "-k", str(root / "run")]
    argv += ["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200", "-c", "fsync=off"]
    proc, log = stack.start("postgres", _as_pg(argv, user), os.environ, grace=10, tier=0)
    env = {**os.environ, "PGPASSWORD": password}
    connect = ["-h", "127.0.0.1", "-p", str(port), "-U", "prefect"]
    deadline = time.monotonic() + 60
    while subprocess.run([str(PG_BIN / "pg_isready"), *connect], capture_output=True).returncode != 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-1500:]
            raise local.StackError(f"PostgreSQL did not start on port {port}; last log lines:\n{tail}")
        time.sleep(0.3)
    exists = subprocess.run(
        [
            str(PG_BIN / "psql"),
            *connect,
            "-d",
            "postgres",
            "-tAc",
            "SELECT 1 FROM pg_database WHERE datname='prefect'",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if exists != "1":
        subprocess.run(
            [str(PG_BIN / "createdb"), *connect, "prefect"], env=env, check=True, capture_output=True
        )
    return f"postgresql+asyncpg://prefect:{password}@127.0.0.1:{port}/prefect"


# --- Redis and HAProxy -------------------------------------------------------------------------------------


def _start_redis(stack: local.Stack, root: Path, port: int, password: str) -> None:
    """``redis-server`` on 127.0.0.1:``port``, password from a 0600 config file, nothing saved to disk."""
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "redis.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(
            f"port {port}\nbind 127.0.0.1\nprotected-mode yes\nsave ''\nappendonly no\n"
            f"dir {root}\nrequirepass {password}\n"
        )
    proc, log = stack.start("redis", ["redis-server", str(conf)], os.environ, grace=5, tier=0)
    deadline = time.monotonic() + 30
    while not _answers(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise local.StackError(f"redis-server did not start on port {port}; log: {log}")
        time.sleep(0.2)


def _answers(port: int) -> bool:
    return not local._port_free(port)


def _start_haproxy(stack: local.Stack, root: Path, port: int, servers: tuple[int, ...]) -> None:
    """HAProxy on 127.0.0.1:``port`` in front of ``servers``: health-checked, a refused connection retried."""
    backends = "".join(
        f"    server api{i} 127.0.0.1:{p} check inter 1s fall 2 rise 2\n" for i, p in enumerate(servers, 1)
    )
    conf = root / "haproxy.cfg"
    conf.write_text(
        "global\n    maxconn 2000\n"
        "defaults\n    mode http\n    timeout connect 2s\n    timeout client 120s\n"
        "    timeout server 120s\n    timeout tunnel 1h\n    retries 3\n    option redispatch\n"
        "    retry-on conn-failure\n"
        f"frontend prefect\n    bind 127.0.0.1:{port}\n    default_backend servers\n"
        "backend servers\n    balance roundrobin\n    option httpchk GET /api/health\n" + backends
    )
    haproxy = shutil.which("haproxy", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or "haproxy"
    proc, log = stack.start("haproxy", [haproxy, "-db", "-f", str(conf)], os.environ, grace=3, tier=2)
    local._wait_http(f"http://127.0.0.1:{port}/api/health", proc, log, timeout=30)


# --- Prefect ---------------------------------------------------------------------------------------------


def server_environment(root: Path, db_url: str, redis_port: int, redis_password: str) -> dict[str, str]:
    """The settings of the API servers and the services process (Prefect's self-hosted scaling guide)."""
    return {
        "PREFECT_HOME": str(root / "prefect-server"),
        "PREFECT_API_DATABASE_CONNECTION_URL": db_url,
        "PREFECT_API_DATABASE_MIGRATE_ON_START": "false",
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_REDIS_MESSAGING_HOST": "127.0.0.1",
        "PREFECT_REDIS_MESSAGING_PORT": str(redis_port),
        "PREFECT_REDIS_MESSAGING_DB": "0",
        "PREFECT_REDIS_MESSAGING_PASSWORD": redis_password,
        "PREFECT_SERVER_DOCKET_URL": f"redis://:{redis_password}@127.0.0.1:{redis_port}/1",
        "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": str(SLOT_WAIT_SECONDS),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
    }


def _plain_environment() -> dict[str, str]:
    """This environment without Prefect's settings (the stack sets its own) nor ``PREVIEWS_`` secrets."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "PREVIEWS_", "PG")) and k != "PYTHON"
    }


def client_environment(root: Path, api_url: str, name: str) -> dict[str, str]:
    """What a client of the API gets: no database or Redis password, its own ``PREFECT_HOME``."""
    keep = _plain_environment()
    home = root / "clients" / name
    home.mkdir(parents=True, exist_ok=True)
    return {
        **keep,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


def _prefect(argv: list[str], env: Mapping[str, str], *, timeout: float = 900) -> str:
    done = subprocess.run(
        [local._bin("prefect"), "--no-prompt", *argv],
        env={**env, "PYTHON": sys.executable},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip()[-1500:]
        raise local.StackError(f"prefect {' '.join(argv[:3])} failed:\n{tail}")
    return done.stdout


def _start_servers(stack: local.Stack, env: Mapping[str, str], ports: tuple[int, ...]) -> None:
    """Migrate once, then start the API servers (no services) and the one services process."""
    _prefect(["server", "database", "upgrade", "-y"], env)
    for index, port in enumerate(ports, 1):  # one at a time: each registers the block types at startup
        argv = [local._bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        proc, log = stack.start(f"prefect-api-{index}", [*argv, "--no-services"], env, grace=5, tier=1)
        local._wait_http(f"http://127.0.0.1:{port}/api/health", proc, log, timeout=240)
    argv = [local._bin("prefect"), "server", "services", "start"]
    proc, log = stack.start("prefect-services", argv, env, grace=5, tier=1)
    deadline = time.monotonic() + 60
    while "Starting services" not in log.read_text(errors="replace") and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise local.StackError(f"prefect server services exited with {proc.returncode} (log: {log})")
        time.sleep(0.3)


def prepare_pool(api: str, env: Mapping[str, str], *, limit: int) -> None:
    """The Docker pool, the block types, ``prefect deploy --all``, then the pool limit as a hard cap.

    ``previews pool-limit`` sets the pool's limit and the shared deployment limit of the same size
    (:mod:`previews.pool`): the pool's own limit is applied when a worker polls, so two workers polling
    together could both take its last slot. It comes after the deploy, which clears deployment limits.
    """
    if httpx.get(f"{api}/work_pools/{POOL}", timeout=10).status_code == 404:
        _prefect(["work-pool", "create", POOL, "--type", "docker"], env)
    _prefect(["block", "register", "-m", "blocks"], env)
    _prefect(["deploy", "--all"], env, timeout=1800)
    done = subprocess.run(
        [local._bin("previews"), "pool-limit", str(limit), "--pool", POOL],
        env=dict(env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise local.StackError(f"previews pool-limit {limit} failed: {(done.stdout + done.stderr).strip()}")


def retry_crashed_automation(deployment_id: str) -> dict[str, Any]:
    """An automation that re-schedules a Crashed run of ``deployment_id`` once (on its first attempt only).

    The run keeps its id and creation time, so cancel-in-progress still orders it among the PR's runs;
    ``prefect.run-count`` is 1 on the first attempt's Crashed event and 2 on the retry's, which stays Crashed.
    """
    return {
        "name": RETRY_AUTOMATION,
        "description": "A preview-image run that crashed (its worker, container or API server died) runs once more.",
        "enabled": True,
        "trigger": {
            "type": "event",
            "posture": "Reactive",
            "expect": ["prefect.flow-run.Crashed"],
            "match": {"prefect.resource.id": "prefect.flow-run.*", "prefect.run-count": "1"},
            "match_related": {"prefect.resource.id": f"prefect.deployment.{deployment_id}"},
            "for_each": ["prefect.resource.id"],
            "threshold": 1,
            "within": 0,
        },
        "actions": [
            {
                "type": "change-flow-run-state",
                "source": "inferred",
                "state": "SCHEDULED",
                "name": "AwaitingRetry",
                "message": "Crashed on its first attempt; retried once by the previews-retry-crashed-once automation",
                "force": True,
            }
        ],
    }


def install_retry_automation(api: str) -> None:
    deployment = httpx.get(f"{api}/deployments/name/preview-image/preview-image", timeout=10)
    deployment.raise_for_status()
    existing = httpx.post(
        f"{api}/automations/filter", json={"automations": {"name": {"any_": [RETRY_AUTOMATION]}}}, timeout=10
    ).json()
    for automation in existing:
        httpx.delete(f"{api}/automations/{automation['id']}", timeout=10).raise_for_status()
    body = retry_crashed_automation(deployment.json()["id"])
    httpx.post(f"{api}/automations/", json=body, timeout=10).raise_for_status()


def start_workers(stack: local.Stack, root: Path, api: str, count: int) -> tuple[str, ...]:
    """``count`` Docker workers on the pool, polling every 2 s, without the servers' settings."""
    names = []
    for index in range(1, count + 1):
        name = f"worker-{index}"
        env = {**client_environment(root, api, name), "PREFECT_WORKER_QUERY_SECONDS": "2"}
        argv = [local._bin("prefect"), "worker", "start", "--pool", POOL, "--type", "docker"]
        argv += [
            "--name",
            f"{root.name}-{name}",
            "--install-policy",
            "never",
            "--no-create-pool-if-not-found",
        ]
        stack.start(name, argv, env, grace=20, tier=3)
        names.append(name)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        online = httpx.post(f"{api}/work_pools/{POOL}/workers/filter", json={}, timeout=10).json()
        if len({w["name"] for w in online} & {f"{root.name}-{n}" for n in names}) == count:
            return tuple(names)
        time.sleep(1)
    raise local.StackError(
        f"the {count} workers did not register with the pool within 120s (logs: {root}/logs)"
    )


@contextmanager
def run_production(
    *,
    state_dir: Path,
    ports: Ports,
    workers: int = 2,
    pool_limit: int = 4,
    receiver_env: Mapping[str, str],
    progress: Callable[[str], None] = lambda _text: None,
) -> Iterator[ProductionRunning]:
    """Start the production-shaped stack under ``<state_dir>/production``; stop everything on exit."""
    root = state_dir / "production"
    root.mkdir(parents=True, exist_ok=True)
    stack = local.Stack(root)
    api = f"http://127.0.0.1:{ports.api}/api"
    try:
        progress(
            f"Starting PostgreSQL on 127.0.0.1:{ports.postgres} and Redis on 127.0.0.1:{ports.redis} ..."
        )
        redis_password = _secret(root / "redis-password")
        _start_redis(stack, root / "redis", ports.redis, redis_password)
        db_url = _start_postgres(
            stack, root / "postgres", ports.postgres, _secret(root / "postgres-password")
        )
        progress(f"Migrating, then starting {len(ports.servers)} Prefect API servers and the services ...")
        env = {**_plain_environment(), **server_environment(root, db_url, ports.redis, redis_password)}
        _start_servers(stack, env, ports.servers)
        _start_haproxy(stack, root, ports.api, ports.servers)
        progress("Deploying prefect.yaml to the Docker pool (builds the runner image when it changed) ...")
        client = client_environment(root, api, "deploy")
        prepare_pool(api, client, limit=pool_limit)
        install_retry_automation(api)
        progress(
            f"Starting {workers} Docker workers and the webhook receiver on 127.0.0.1:{ports.receiver} ..."
        )
        names = start_workers(stack, root, api, workers)
        outbox = root / "outbox.sqlite3"
        renv = {
            **client_environment(root, api, "receiver"),
            **receiver_env,
            "PREVIEWS_OUTBOX_PATH": str(outbox),
        }
        argv = [local._bin("previews"), "serve", "--host", "127.0.0.1", "--port", str(ports.receiver)]
        proc, log = stack.start("receiver", argv, renv, grace=3, tier=3)
        local._wait_http(f"http://127.0.0.1:{ports.receiver}/healthz", proc, log, timeout=60)
        yield ProductionRunning(
            stack=stack,
            ports=ports,
            api=api,
            receiver=f"http://127.0.0.1:{ports.receiver}/webhooks/github",
            outbox=outbox,
            logs=root / "logs",
            workers=names,
        )
    finally:
        stack.stop()


def free_port() -> int:
    """A loopback port nothing listens on now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_up(args: Any, state_dir: Path, *, on_ready: Callable[[], None]) -> int:
    """``previews up --production`` once the preflight passed: start, print where things are, wait."""
    secret, secret_origin = local.webhook_secret(state_dir, os.environ)
    ports = Ports(
        postgres=free_port(),
        redis=free_port(),
        servers=(free_port(), free_port()),
        api=args.prefect_port,
        receiver=args.port,
    )
    receiver_env = {k: v for k, v in os.environ.items() if k.startswith("PREVIEWS_")}
    receiver_env["PREVIEWS_WEBHOOK_SECRET"] = secret
    with run_production(
        state_dir=state_dir,
        ports=ports,
        workers=args.workers,
        pool_limit=args.pool_limit,
        receiver_env=receiver_env,
        progress=lambda text: print(text, flush=True),
    ) as running:
        print(f"Prefect API:       {running.api} (HAProxy over ports {', '.join(map(str, ports.servers))})")
        print(f"Webhook receiver:  {running.receiver}")
        print(
            f"Webhook secret:    {secret if secret_origin.startswith('generated') else ''}  ({secret_origin})"
        )
        print(f"Workers:           {len(running.workers)} on pool {POOL!r}, pool limit {args.pool_limit}")
        print(f"Logs:              {running.logs}")
        print("Blocks:            save the 'previews' PreviewsCredentials and PreviewsConfig blocks (README)")
        on_ready()
        print("Press Ctrl-C to stop.", flush=True)
        while True:
            time.sleep(3600)
