"""Benchmark the webhook receiver: signed deliveries/s and p50/p99 latency with the durable outbox.

Starts ``previews serve`` as a separate process (its own interpreter, a fresh SQLite outbox in WAL mode with
``synchronous=FULL``), then offers signed ``pull_request`` deliveries (a real GitHub ``synchronize`` payload,
~25 KB) from an asyncio httpx client:

- fixed offered load: an open loop sending at R deliveries/s (latency includes any queueing at the server);
- saturation: C concurrent clients sending back to back.

The forwarder points at ``--prefect-api-url`` (default: a port where nothing listens, so only the ingest path
is measured; pass a live Prefect server to measure with forwarding running too). Prints one table.

    python bench/receiver.py [--duration 10] [--rates 25,50,100] [--concurrency 1,8,32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from importlib import resources
from pathlib import Path

import httpx

from previews.signature import sign

SECRET = "bench-secret"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _body() -> bytes:
    raw = resources.files("previews.local.demo_data").joinpath("synchronize.payload.json").read_text()
    return json.dumps(json.loads(raw)).encode()


def _request(body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": "pull_request",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(body, SECRET),
    }


class Result:
    def __init__(self, label: str, offered: str) -> None:
        self.label = label
        self.offered = offered
        self.latencies: list[float] = []
        self.errors = 0
        self.elapsed = 0.0

    def row(self) -> str:
        ok = len(self.latencies)
        lat = sorted(self.latencies)

        def pct(p: float) -> str:
            if not lat:
                return "-"
            return f"{lat[min(len(lat) - 1, int(p * len(lat)))] * 1000:8.1f}"

        rate = ok / self.elapsed if self.elapsed else 0.0
        mean = f"{statistics.fmean(lat) * 1000:8.1f}" if lat else "-"
        return (
            f"| {self.label:<22} | {self.offered:>9} | {ok:>6} | {self.errors:>4} | {rate:>10.1f} "
            f"| {pct(0.50):>8} | {pct(0.99):>8} | {mean:>8} |"
        )


async def _send(client: httpx.AsyncClient, url: str, body: bytes, result: Result, started: float) -> None:
    try:
        resp = await client.post(url, content=body, headers=_request(body))
        if resp.status_code == 202 and resp.json().get("status") == "accepted":
            result.latencies.append(time.perf_counter() - started)
        else:
            result.errors += 1
    except httpx.HTTPError:
        result.errors += 1


async def fixed_rate(url: str, body: bytes, rate: float, duration: float) -> Result:
    """Open loop: one delivery every 1/rate seconds, whatever the answers do."""
    result = Result("fixed offered load", f"{rate:g}/s")
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        tasks = []
        start = time.perf_counter()
        n = int(rate * duration)
        for i in range(n):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_send(client, url, body, result, due)))
        await asyncio.gather(*tasks)
        result.elapsed = time.perf_counter() - start
    return result


async def saturation(url: str, body: bytes, concurrency: int, duration: float) -> Result:
    """Closed loop: ``concurrency`` clients, each sending its next delivery when the last one is answered."""
    result = Result("saturation", f"c={concurrency}")
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        stop_at = time.perf_counter() + duration
        start = time.perf_counter()

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                await _send(client, url, body, result, time.perf_counter())

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.elapsed = time.perf_counter() - start
    return result


def _start_receiver(workdir: Path, port: int, api_url: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PREVIEWS_WEBHOOK_SECRET": SECRET,
        "PREVIEWS_OUTBOX_PATH": str(workdir / "outbox.sqlite3"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    log = (workdir / "receiver.log").open("wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "previews"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the receiver exited: see {workdir / 'receiver.log'}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit("the receiver did not start within 60 s")


def _forwarding_lags(path: Path, *, wait: bool) -> list[float]:
    """Seconds from outbox commit to Prefect's 2xx, per delivered entry (waits up to 60 s for the backlog)."""
    from previews.ingress.outbox import Outbox

    with Outbox(path) as outbox:
        deadline = time.monotonic() + (60 if wait else 0)
        while outbox.stats().pending and time.monotonic() < deadline:
            time.sleep(0.5)
        return sorted(
            e.delivered_at - e.received_at
            for e in outbox.entries(state="delivered")
            if e.delivered_at is not None
        )


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario")
    parser.add_argument("--rates", default="25,50,100", help="offered loads, deliveries/s")
    parser.add_argument("--concurrency", default="1,8,32", help="saturation client counts")
    parser.add_argument("--prefect-api-url", default=None, help="forward to this Prefect API (default: none)")
    args = parser.parse_args()

    body = _body()
    api_url = args.prefect_api_url or f"http://127.0.0.1:{_free_port()}/api"
    with tempfile.TemporaryDirectory(prefix="previews-bench-") as tmp:
        workdir = Path(tmp)
        port = _free_port()
        proc = _start_receiver(workdir, port, api_url)
        url = f"http://127.0.0.1:{port}/webhooks/github"
        try:
            asyncio.run(saturation(url, body, 4, 2.0))  # warm-up, not reported
            results = [
                asyncio.run(fixed_rate(url, body, float(r), args.duration)) for r in args.rates.split(",")
            ]
            results += [
                asyncio.run(saturation(url, body, int(c), args.duration)) for c in args.concurrency.split(",")
            ]
            health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json()
            lags = _forwarding_lags(workdir / "outbox.sqlite3", wait=bool(args.prefect_api_url))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    forwarding = "on (live Prefect)" if args.prefect_api_url else "no Prefect (ingest path only)"
    print(f"receiver: previews serve, SQLite WAL outbox synchronous=FULL, forwarding: {forwarding}")
    print(f"body: {len(body)} bytes, signed HMAC-SHA256; {os.cpu_count()} CPUs; {args.duration:g} s per row")
    print(
        "| scenario               |   offered |     ok |  err | accepted/s |   p50 ms |   p99 ms |  mean ms |"
    )
    print("|" + "|".join("-" * n for n in (24, 11, 8, 6, 12, 10, 10, 10)) + "|")
    for result in results:
        print(result.row())
    print(f"outbox after the run: {health['outbox']}")
    if lags:
        print(
            f"accepted -> Prefect accepted the event (outbox delivered_at - received_at), {len(lags)} deliveries: "
            f"p50 {lags[len(lags) // 2] * 1000:.0f} ms, p99 {lags[int(0.99 * len(lags))] * 1000:.0f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
