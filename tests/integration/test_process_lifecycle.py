"""Process lifecycle you can trust: `veil serve --workers 2` with NER on, started and stopped
twenty times (half of the stops while the NER workers are still loading), becomes ready every
time it is given the time to, and leaves no process behind, every time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx2 as httpx

from gateway.demo.upstream import build_demo_app
from tests.integration.test_cli_serve import ROOT, free_port, write_config
from tests.servers import ServerThread

STARTS = 20


def processes_with(marker: str) -> list[int]:
    """Every live process whose environment carries `marker` (the gateway's and all its
    descendants', however deep)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().split()[2]
        except OSError:
            continue
        if marker.encode() in environ and state != "Z":
            found.append(int(entry.name))
    return found


def wait_ready(url: str, process: subprocess.Popen[bytes], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, "veil serve exited during start-up"
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def test_start_and_stop_twenty_times_leaves_nothing_behind(tmp_path: Path) -> None:
    ner_policy = tmp_path / "ner.yaml"
    ner_policy.write_text("version: 1\nname: ner\ndetectors: {builtin: [patterns, presidio]}\n")
    with ServerThread(build_demo_app()) as upstream:
        for start in range(STARTS):
            port = free_port()
            config = write_config(tmp_path / "config.yaml", upstream.url, port)
            text = config.read_text().replace(
                "policies: {files: [", f"privacy: {{ner_workers: 1}}\npolicies: {{files: "
                f"[\"{ner_policy}\", ")
            config.write_text(text)
            marker = f"VEIL_LIFECYCLE_{uuid.uuid4().hex}"
            process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--config", str(config),
                 "--workers", "2"], cwd=ROOT, stderr=subprocess.DEVNULL,
                env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": "", marker: "1"})
            url = f"http://127.0.0.1:{port}"
            try:
                if start % 2:  # stop while the NER workers are still loading
                    time.sleep(0.5)
                else:
                    assert wait_ready(url, process, 90), f"start {start} never became ready"
            finally:
                process.send_signal(signal.SIGTERM)
                assert process.wait(timeout=30) is not None
            deadline = time.monotonic() + 10
            while (left := processes_with(marker)) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not left, f"start {start}: {len(left)} processes left behind"
