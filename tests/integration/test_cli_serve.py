"""`veil serve` as an operator runs it: a real process, several workers sharing one port."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from gateway.demo.upstream import build_demo_app
from gateway.ingress.auth import hash_api_key
from tests.attestation_ca import tls_context
from tests.servers import TEST_KEY, TEST_POLICY, ServerThread, write_policy

ROOT = Path(__file__).parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def veil(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60, check=False, **kwargs)  # type: ignore[call-overload]


def write_config(path: Path, upstream: str, port: int) -> Path:
    path.write_text(f"""
listen: {{host: 127.0.0.1, port: {port}}}
tenants: {{t: {{}}}}
api_keys: [{{name: k, tenant: t, hash: "{hash_api_key(TEST_KEY)}"}}]
backends: [{{name: demo, url: "{upstream}"}}]
models: {{m: [demo]}}
policies: {{files: ["{write_policy(TEST_POLICY, path.parent)}"], watch_interval_s: 0}}
""")
    return path


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    with ServerThread(build_demo_app()) as upstream:
        port = free_port()
        config = write_config(tmp_path / "config.yaml", upstream.url, port)
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--workers", "2"],
            cwd=ROOT, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": ""})
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            yield url, process
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=20)


def test_workers_share_the_port_and_metrics(served: tuple[str, subprocess.Popen[str]]) -> None:
    url, process = served
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
    for _ in range(40):
        # a new connection each time, so the kernel can hand it to either worker
        with httpx.Client() as c:
            r = c.post(url + "/v1/chat/completions", json=body,
                       headers={"Authorization": f"Bearer {TEST_KEY}"})
            assert r.status_code == 200
    # Aggregated across workers; each worker publishes its request-path tallies once a second.
    deadline = time.monotonic() + 5
    while True:
        metrics = httpx.get(url + "/metrics").text
        total = sum(float(v) for v in re.findall(
            r'veil_requests_total\{route="chat_completions",status="200"\} ([0-9.]+)', metrics))
        if total == 40 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert total == 40
    # One series each, whatever the number of workers (summed, or the smallest: metrics.py).
    lines = metrics.splitlines()
    for name in ("veil_build_info", "process_cpu_seconds_total",
                 "process_resident_memory_bytes", "process_open_fds", "process_max_fds"):
        assert len([line for line in lines if line.startswith(name)]) == 1, name
    assert "_created" not in metrics
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=20)
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    pids = {line["pid"] for line in lines if line["event"] == "listening"}
    assert len(pids) == 2
    served_by = {line["pid"] for line in lines if line["event"] == "request"}
    assert served_by == pids  # 40 fresh connections: both workers took some
    for event in ("stopping", "stopped"):  # each worker says it is going, then that it went
        assert {line["pid"] for line in lines if line["event"] == event} == pids


def test_sighup_reloads_every_worker(served: tuple[str, subprocess.Popen[str]],
                                     tmp_path: Path) -> None:
    url, process = served

    def digests(n: int = 20) -> set[str]:
        found = set()
        for _ in range(n):
            with httpx.Client() as c:  # fresh connections reach both workers
                r = c.post(url + "/v1/chat/completions", headers={
                    "Authorization": f"Bearer {TEST_KEY}"}, json={
                    "model": "m", "messages": [{"role": "user", "content": "hi"}]})
                found.add(r.headers["X-Veil-Policy"])
        return found

    (old,) = digests()
    write_policy({**TEST_POLICY, "default_action": "redact"}, tmp_path)
    time.sleep(0.2)
    assert digests() == {old}  # no watcher in this config: nothing changes by itself
    process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    now = digests()
    while len(now) != 1 or old in now:  # every worker on the one new policy
        assert time.monotonic() < deadline, now
        time.sleep(0.2)
        now = digests()
    assert process.poll() is None  # SIGHUP reloads, it does not stop


def test_unsigned_policy_refuses_start(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.yaml", "http://127.0.0.1:9", free_port())
    key = tmp_path / "policy.pub"
    assert veil("policy", "keygen", "--private", str(tmp_path / "policy.key"),
                "--public", str(key)).returncode == 0
    config.write_text(config.read_text().replace(
        "watch_interval_s: 0", f"require_signed_policies: true, public_key_file: '{key}'"))
    result = veil("serve", "--config", str(config))
    assert result.returncode == 2
    assert f"{tmp_path}/test.yaml: unsigned (no test.yaml.sig)" in result.stderr


def test_bad_config_exits_2_with_position(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("listen:\n  prot: 1\nbackends: []\nmodels: {}\n")
    result = veil("serve", "--config", str(config))
    assert result.returncode == 2
    assert f"{config}:2:3: listen.prot: unknown key (did you mean port?)" in result.stderr


def test_apikey_new_prints_a_matching_hash() -> None:
    result = veil("apikey", "new", "--name", "ci", "--tenant", "t")
    key = re.search(r"API key .*: (\S+)", result.stdout)
    assert key is not None
    assert f"hash: {hash_api_key(key.group(1))}" in result.stdout
    hashed = veil("apikey", "hash", input=key.group(1) + "\n")
    assert hashed.stdout.strip() == hash_api_key(key.group(1))


def test_host_and_port_flags_override_listen_and_the_start_line_shows_them(
        tmp_path: Path) -> None:
    configured, flagged = free_port(), free_port()
    config = write_config(tmp_path / "config.yaml", "http://127.0.0.1:9", configured)
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config),
         "--host", "127.0.0.1", "--port", str(flagged)],
        cwd=ROOT, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": ""})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{flagged}/healthz", timeout=1).is_success
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{configured}/healthz", timeout=1)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    (listening,) = [line for line in lines if line["event"] == "listening"]
    assert listening["listen"] == f"127.0.0.1:{flagged}"  # configuration, not redacted
    assert "REDACTED" not in json.dumps(listening)


def with_tls(config: Path, extra: str = "") -> Path:
    """The config serving HTTPS with a fresh certificate (gw.crt, gw.key beside it)."""
    tls_context(config.parent, "gw")
    config.write_text(config.read_text().replace(
        "port:", "tls_cert_file: gw.crt, tls_key_file: gw.key, port:") + extra)
    return config


def test_serve_over_tls(tmp_path: Path) -> None:
    port = free_port()
    config = with_tls(write_config(tmp_path / "config.yaml", "http://127.0.0.1:9", port))
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        cwd=ROOT, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": ""})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"https://127.0.0.1:{port}/healthz", timeout=1,
                                     verify=False)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert response.is_success
        with pytest.raises(httpx.HTTPError):  # no plain HTTP on the TLS port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
        not_configured = httpx.get(f"https://127.0.0.1:{port}/.well-known/veil-attestation",
                                   params={"nonce": "00" * 32}, timeout=1, verify=False)
        assert not_configured.status_code == 404
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    (listening,) = [line for line in lines if line["event"] == "listening"]
    assert listening["tls"] is True


def test_self_attestation_without_configfs_tsm_refuses_start(tmp_path: Path) -> None:
    config = with_tls(write_config(tmp_path / "config.yaml", "http://127.0.0.1:9", free_port()),
                      f"self_attestation: {{enabled: true, tsm_root: '{tmp_path}/no-tsm'}}\n")
    result = veil("serve", "--config", str(config))
    assert result.returncode == 2
    assert f"self_attestation: {tmp_path}/no-tsm not found" in result.stderr


def test_a_key_that_is_not_the_certificates_refuses_start(tmp_path: Path) -> None:
    config = with_tls(write_config(tmp_path / "config.yaml", "http://127.0.0.1:9", free_port()))
    tls_context(tmp_path, "other")
    (tmp_path / "gw.key").write_bytes((tmp_path / "other.key").read_bytes())
    result = veil("serve", "--config", str(config))
    assert result.returncode == 2
    assert "listen: TLS certificate or key" in result.stderr
