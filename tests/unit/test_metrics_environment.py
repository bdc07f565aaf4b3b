"""An empty PROMETHEUS_MULTIPROC_DIR means unset, for prometheus_client as for the gateway (it
used to switch prometheus_client to files written into the working directory)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_empty_multiprocess_dir_writes_no_files(tmp_path: Path) -> None:
    code = ("from gateway.observability.metrics import Metrics\n"
            "m = Metrics(); m.requests.labels('r', '200').inc(); m.render()\n")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": "",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, timeout=60)
    assert list(tmp_path.iterdir()) == []
