"""Receiver resources (issue 13, item 8): bounded memory under slow unauthenticated connections, a body
read deadline, a concurrency limit, a body limit that real GitHub payloads fit, quiet client disconnects."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from previews.settings import Settings
from tests.support.webhooks import (
    PULL_REQUEST_FIXTURES,
    SECRET,
    WEBHOOKS,
    ReceiverProcess,
    headers,
    run_receiver,
    serve_process,
    synchronize_payload,
)

MIB = 1024 * 1024
# GitHub refuses a pull request description longer than this many characters.
LONGEST_PR_BODY = 65_536


def status_kib(pid: int, field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of a process, in KiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


class RssSampler:
    """Samples a process's resident set every 20 ms in a thread; ``peak_kib`` is the largest seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, status_kib(self.pid, "VmRSS"))
            self._stop.wait(0.02)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def request_head(*, length: int | None, delivery: str = "") -> bytes:
    """The head of an unsigned ``pull_request`` POST; chunked when ``length`` is None."""
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return (
        "POST /webhooks/github HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-GitHub-Event: pull_request\r\nX-GitHub-Delivery: {delivery or uuid.uuid4()}\r\n{framing}\r\n\r\n"
    ).encode()


async def status_of(reader: asyncio.StreamReader) -> int | None:
    """The status code of the answer on ``reader``, or None if the connection closed without one."""
    try:
        line = await reader.readline()
    except (ConnectionError, OSError):
        return None
    parts = line.split()
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None


async def flooder(port: int, total: int, statuses: list[int | None], stop: asyncio.Event) -> None:
    """Streams ``total`` bytes of chunked body, 64 KiB every 20 ms, then holds the connection open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    chunk = b"x" * (64 * 1024)
    framed = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    try:
        writer.write(request_head(length=None))
        for _ in range(total // len(chunk)):
            if reader.at_eof():
                break
            writer.write(framed)
            await writer.drain()
            await asyncio.sleep(0.02)
        await stop.wait()
    except (ConnectionError, OSError):
        pass  # the receiver refused the body and closed the connection
    finally:
        writer.close()
    statuses.append(await status_of(reader))


async def staller(port: int, declared: int, sent: int, ready: list[bool], statuses: list[int | None]) -> None:
    """Declares ``declared`` bytes, sends ``sent`` of them, then waits for the receiver's answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request_head(length=declared) + b"x" * sent)
        await writer.drain()
        ready.append(True)
        try:
            statuses.append(await asyncio.wait_for(status_of(reader), timeout=60))
        except TimeoutError:
            statuses.append(None)  # never answered
    finally:
        writer.close()


def signed_delivery(number: int) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(synchronize_payload(number=number)).encode()
    return body, headers(body)


def test_fifty_slow_unauthenticated_connections_leave_memory_bounded_and_deliveries_served(
    tmp_path: Path,
) -> None:
    settings = Settings()
    bound_kib = (settings.max_concurrent_deliveries * settings.max_body_bytes + 32 * MIB) // 1024
    with serve_process(tmp_path, env={"PREVIEWS_BODY_READ_TIMEOUT": "5"}) as receiver:
        for number in range(1, 6):  # warm up every code path a delivery takes
            body, sent = signed_delivery(number)
            assert httpx.post(receiver.webhook_url, content=body, headers=sent, timeout=30).status_code == 202
        before_kib = status_kib(receiver.proc.pid, "VmRSS")

        async def attack(
            sampler: RssSampler,
        ) -> tuple[list[int | None], list[int | None], list[httpx.Response], int]:
            stop = asyncio.Event()
            flooded: list[int | None] = []
            stalled: list[int | None] = []
            ready: list[bool] = []
            # 25 connections stream up to 8 MiB each without a length; 25 declare just under the limit,
            # send 900 KB of it and stall.
            tasks = [asyncio.create_task(flooder(receiver.port, 8 * MIB, flooded, stop)) for _ in range(25)]
            tasks += [
                asyncio.create_task(staller(receiver.port, 1_000_000, 900_000, ready, stalled))
                for _ in range(25)
            ]
            while len(ready) < 25:
                await asyncio.sleep(0.05)
            await asyncio.sleep(3)  # the flooders are at full stream by now
            async with httpx.AsyncClient(timeout=30) as client:
                answers = []
                for number in range(100, 110):
                    body, sent = signed_delivery(number)
                    answers.append(await client.post(receiver.webhook_url, content=body, headers=sent))
            peak_kib = sampler.peak_kib
            stop.set()
            await asyncio.gather(*tasks)
            return flooded, stalled, answers, peak_kib

        with RssSampler(receiver.proc.pid) as sampler:
            flooded, stalled, answers, peak_kib = asyncio.run(attack(sampler))
        print(f"receiver RSS {before_kib // 1024} MiB before, peak {peak_kib // 1024} MiB under attack")
        assert [a.status_code for a in answers] == [202] * 10, [a.text for a in answers]
        assert all(a.json()["status"] == "accepted" for a in answers)
        grown_kib = peak_kib - before_kib
        assert grown_kib < bound_kib, (
            f"RSS grew {grown_kib} KiB (bound {bound_kib} KiB) from {before_kib} KiB"
        )
        assert stalled == [408] * 25
        assert set(flooded) <= {413, None}
        assert "Traceback" not in receiver.log_text()


def disconnect_mid_body(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request_head(length=100_000) + b"x" * 1000)


def wait_for_lines(receiver: ReceiverProcess, text: str, count: int) -> str:
    deadline = time.monotonic() + 60
    log = receiver.log_text()
    while log.count(text) < count and time.monotonic() < deadline:
        time.sleep(0.1)
        log = receiver.log_text()
    return log


def test_client_disconnect_mid_body_logs_one_line_and_no_traceback(tmp_path: Path) -> None:
    with serve_process(tmp_path) as receiver:
        for _ in range(3):
            disconnect_mid_body(receiver.port)
        body, sent = signed_delivery(7)
        assert httpx.post(receiver.webhook_url, content=body, headers=sent, timeout=30).status_code == 202
        log = wait_for_lines(receiver, "went away before sending the whole body", 3)
    assert log.count("went away before sending the whole body") == 3, log
    assert "Traceback" not in log
    assert " ERROR " not in log


@contextmanager
def small_receiver(tmp_path: Path, **overrides: Any) -> Iterator[str]:
    values: dict[str, Any] = {
        "webhook_secret": SecretStr(SECRET),
        "outbox_path": tmp_path / "outbox.sqlite3",
        "prefect_api_url": "http://127.0.0.1:9/api",
        **overrides,
    }
    with run_receiver(Settings(**values), forwarder_enabled=False) as receiver:
        yield receiver.url


def stall(port: int, *, declared: int = 1000, sent: int = 10) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(request_head(length=declared) + b"x" * sent)
    return sock


def answer_then_close(sock: socket.socket) -> tuple[str, bytes]:
    """The status line of the answer on ``sock`` and what followed once the receiver closed it."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data.split(b"\r\n", 1)[0].decode(), data


def test_a_stalled_body_is_answered_408_and_the_connection_closed(tmp_path: Path) -> None:
    with small_receiver(tmp_path, body_read_timeout=0.5) as url:
        with stall(int(url.rsplit(":", 1)[1])) as sock:
            status, data = answer_then_close(sock)
        assert status == "HTTP/1.1 408 Request Timeout"
        assert b"body not received within 0.5 s" in data
        assert httpx.get(f"{url}/healthz", timeout=10).json()["outbox"]["pending"] == 0


def wait_for_load(url: str, **expected: int) -> None:
    """Wait until ``/healthz`` reports these delivery counts (in_flight, waiting)."""
    deadline = time.monotonic() + 30
    while True:
        load = httpx.get(f"{url}/healthz", timeout=10).json()["deliveries"]
        if all(load[key] == value for key, value in expected.items()):
            return
        assert time.monotonic() < deadline, load
        time.sleep(0.05)


def test_a_delivery_beyond_the_concurrency_limit_waits_for_a_slot(tmp_path: Path) -> None:
    with small_receiver(tmp_path, max_concurrent_deliveries=2, body_read_timeout=3) as url:
        port = int(url.rsplit(":", 1)[1])
        stalled = [stall(port), stall(port)]
        try:
            wait_for_load(url, in_flight=2)
            body, sent = signed_delivery(3)
            with ThreadPoolExecutor(1) as pool:
                waiting = pool.submit(
                    httpx.post, f"{url}/webhooks/github", content=body, headers=sent, timeout=60
                )
                wait_for_load(url, waiting=1)
                assert [answer_then_close(sock)[0] for sock in stalled] == [
                    "HTTP/1.1 408 Request Timeout"
                ] * 2
                accepted = waiting.result()
        finally:
            for sock in stalled:
                sock.close()
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["status"] == "accepted"


def test_when_as_many_wait_as_are_in_flight_the_next_delivery_gets_503(tmp_path: Path) -> None:
    with small_receiver(tmp_path, max_concurrent_deliveries=1, body_read_timeout=30) as url:
        port = int(url.rsplit(":", 1)[1])
        stalled = [stall(port)]
        try:
            wait_for_load(url, in_flight=1)
            stalled.append(stall(port))
            wait_for_load(url, in_flight=1, waiting=1)
            body, sent = signed_delivery(3)
            refused = httpx.post(f"{url}/webhooks/github", content=body, headers=sent, timeout=30)
        finally:
            for sock in stalled:
                sock.close()
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["connection"] == "close"
        assert "in flight" in refused.json()["error"]


def test_default_body_limit_fits_githubs_real_pull_request_payloads_with_margin() -> None:
    limit = Settings().max_body_bytes
    largest = max(len(path.read_bytes()) for path in PULL_REQUEST_FIXTURES)
    raw = WEBHOOKS / "signature" / "taskcluster-derived-raw"
    largest = max(largest, *(len(p.read_bytes()) for p in raw.glob("webhook.pull_request.*.body")))
    assert 25_000 < largest < 40_000  # the fixtures are what the README's figure is based on
    assert limit >= 25 * largest
    assert limit <= 25 * 1000 * 1000  # never above GitHub's own cap of 25 MB


def test_the_longest_pr_description_github_allows_is_accepted_under_the_default_limit(tmp_path: Path) -> None:
    payload = synchronize_payload()
    # every character JSON-escaped to six bytes: the largest a description of that length can be on the wire
    payload["pull_request"]["body"] = "\x01" * LONGEST_PR_BODY
    body = json.dumps(payload).encode()
    assert len(body) > 6 * LONGEST_PR_BODY
    settings = Settings(
        webhook_secret=SecretStr(SECRET),
        outbox_path=tmp_path / "outbox.sqlite3",
        prefect_api_url="http://127.0.0.1:9/api",
    )
    with run_receiver(settings, forwarder_enabled=False) as receiver:
        resp = httpx.post(receiver.webhook_url, content=body, headers=headers(body), timeout=30)
    assert resp.status_code == 202, resp.text


@pytest.mark.parametrize("framing", ["declared", "chunked"])
def test_a_body_over_the_limit_is_refused_and_the_connection_closed(tmp_path: Path, framing: str) -> None:
    with small_receiver(tmp_path, max_body_bytes=4096) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            if framing == "declared":
                sock.sendall(request_head(length=10 * MIB))
            else:
                sock.sendall(request_head(length=None) + b"2000\r\n" + b"x" * 0x2000 + b"\r\n")
            status, _ = answer_then_close(sock)
        assert status == "HTTP/1.1 413 Request Entity Too Large"
