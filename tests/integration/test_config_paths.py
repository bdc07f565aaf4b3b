"""`veil serve --config DIR/config.yaml` from another working directory: every relative path
in the file is found next to it, and what the gateway writes goes there too."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2 as httpx
import yaml

from gateway.demo.upstream import build_demo_app
from gateway.ingress.auth import hash_api_key
from tests.servers import TEST_KEY, TEST_POLICY, ServerThread

ROOT = Path(__file__).parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def environment(**extra: str) -> dict[str, str]:
    """This checkout's code, whatever the working directory."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "PROMETHEUS_MULTIPROC_DIR": "", **extra}


@contextmanager
def serving(config: Path, cwd: Path, port: int,
            **extra: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(config)],
                               cwd=cwd, stderr=subprocess.PIPE, text=True,
                               env=environment(**extra))
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert process.poll() is None, process.communicate(timeout=5)[1]
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)


def test_serve_finds_everything_next_to_its_config(tmp_path: Path) -> None:
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / "policies").mkdir(parents=True)
    (project / "secrets").mkdir()
    elsewhere.mkdir()
    (project / "policies" / "test.yaml").write_text(yaml.safe_dump(TEST_POLICY))
    (project / "secrets" / "audit.key").write_text("k" * 64)
    (project / "keys.yaml").write_text(
        f"api_keys: [{{name: k, tenant: t, hash: '{hash_api_key(TEST_KEY)}'}}]\n")
    port = free_port()
    with ServerThread(build_demo_app()) as upstream:
        (project / "config.yaml").write_text(f"""
listen: {{host: 127.0.0.1, port: {port}}}
tenants: {{t: {{}}}}
api_keys_file: keys.yaml
backends: [{{name: demo, url: "{upstream.url}"}}]
models: {{m: [demo]}}
policies: {{files: [policies/test.yaml], watch_interval_s: 0}}
audit: {{enabled: true, path: var/audit.jsonl, key_file: secrets/audit.key}}
""")
        with serving(project / "config.yaml", elsewhere, port):
            r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                           headers={"Authorization": f"Bearer {TEST_KEY}"},
                           json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200, r.text  # the key came from keys.yaml beside the config
    assert list((project / "var").glob("audit*.jsonl"))  # written beside the config
    assert list(elsewhere.iterdir()) == []  # nothing in the working directory


def test_the_repository_config_serves_from_another_directory(tmp_path: Path) -> None:
    """The repository's own config.yaml, copied with what it names, started from elsewhere
    (what used to fail on `policies/default.yaml` relative to the working directory)."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    shutil.copy(ROOT / "config.yaml", project)
    shutil.copytree(ROOT / "policies", project / "policies")
    (project / "var").mkdir()
    for key in ("audit.key", "fhe-master.key"):
        (project / "var" / key).write_text("k" * 64)
    port = free_port()
    with serving(project / "config.yaml", elsewhere, port, VEIL__LISTEN__PORT=str(port),
                 VEIL__PRIVACY__NER_WORKERS="1"):
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200


def test_a_bad_override_is_reported_as_the_variable(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("limits:\n  max_body_bytes: 1000\nbackends: []\nmodels: {}\n"
                      "policies: {files: [p.yaml]}\n")
    result = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=60, check=False,
                            cwd="/", env=environment(VEIL__LIMITS__MAX_BODY_BYTES="abc"))
    assert result.returncode == 2
    assert "$VEIL__LIMITS__MAX_BODY_BYTES: limits.max_body_bytes: Input should be a valid " \
           "integer" in result.stderr
    assert f"{config}:2" not in result.stderr
