"""``previews up --demo``, the README's "run it" command, end to end on this machine."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

import docker
import httpx
import pytest

from tests.support.console import PREVIEWS
from tests.support.services import free_port

pytestmark = pytest.mark.slow


def test_up_demo_builds_a_pr_image_through_the_whole_chain(tmp_path: Path) -> None:
    prefect_port, receiver_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PREVIEWS_"))}
    proc = subprocess.run(
        [
            PREVIEWS,
            "up",
            "--demo",
            "--exit-after-demo",
            "--state-dir",
            str(tmp_path / "state"),
            "--prefect-port",
            str(prefect_port),
            "--port",
            str(receiver_port),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    secret_file = tmp_path / "state" / "webhook-secret"
    assert re.search(
        rf"^Webhook secret:\s+\S{{32,}}  \(generated for this stack, kept in {secret_file}\)$", out, re.M
    )
    assert secret_file.read_text() in out
    image = re.search(r"^image:\s+(\S+)$", out, re.M)
    digest = re.search(r"^digest:\s+(sha256:[0-9a-f]{64})$", out, re.M)
    run_url = re.search(
        rf"^flow run:\s+http://127.0.0.1:{prefect_port}/runs/flow-run/[0-9a-f-]{{36}}$", out, re.M
    )
    assert image, out
    assert digest, out
    assert run_url, out
    assert re.fullmatch(r"127\.0\.0\.1:\d+/demo-org/preview-demo:pr-2-[0-9a-f]{40}", image.group(1))
    assert re.search(r"^accepted->running:\s+\d+\.\d+s$", out, re.M)

    # Everything it started is stopped: nothing answers on its ports any more, and no `previews build` is sent
    # to its server any more (the note naming it is gone).
    assert not (tmp_path / "state" / "prefect-api-url").exists()
    for port in (prefect_port, receiver_port):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{image.group(1).split('/')[0]}/v2/", timeout=2)
    # and the engine forgets the image of a registry port that is never used again
    assert docker.from_env(timeout=30).images.list(name=image.group(1)) == []
