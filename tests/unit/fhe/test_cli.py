"""`veil keys` and `veil scorer bench` as operators run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.fhe.scoring import load_model
from gateway.fhe.static_embed import NAME as STATIC
from tests.static_table import static_table_dir

ROOT = Path(__file__).parents[3]


def veil(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300, check=False,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_keys_init_rotate_show(tmp_path: Path) -> None:
    (tmp_path / "master.key").write_text("ab" * 32)
    (tmp_path / "policy.yaml").write_text("version: 1\nname: p\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"""
fhe: {{keys_dir: "{tmp_path / 'keys'}", master_key_file: "{tmp_path / 'master.key'}"}}
policies: {{files: ["{tmp_path / 'policy.yaml'}"]}}
backends: []
models: {{}}
""")
    first = veil("keys", "init", "--config", str(config))
    assert first.returncode == 0, first.stderr
    assert veil("keys", "init", "--config", str(config)).returncode == 1  # never overwrites
    assert veil("keys", "rotate", "--config", str(config)).returncode == 0
    shown = veil("keys", "show", "--config", str(config)).stdout.splitlines()
    assert len(shown) == 2
    assert sum("current=true" in line for line in shown) == 1


def test_scorer_bench_prints_the_documented_columns() -> None:
    result = veil("scorer", "bench", "--k", "10")
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.split("\n")[:2]
    assert header.split() == ["k", "numpy_ms", "matmul_ms", "veil_ms", "max_abs_err"]
    values = row.split()
    assert values[0] == "10"
    assert float(values[4]) < 1e-5


@pytest.mark.parametrize(("embedder", "recorded"), [("static", STATIC), ("minilm", "minilm")])
def test_scorer_build_makes_the_out_folder_and_reports_progress(
        tmp_path: Path, embedder: str, recorded: str) -> None:
    examples = tmp_path / "examples.yaml"
    examples.write_text("kind: reference_set\nlabels:\n  m-and-a: [" + ", ".join(
        f'"acquire company {i}"' for i in range(30)) + "]\n  weather: [sunny, rainy]\n")
    out = tmp_path / "models" / "new" / "deals.npz"
    result = veil("scorer", "build", "--examples", str(examples), "--out", str(out),
                  "--embedder", embedder, "--cache", static_table_dir())
    assert result.returncode == 0, result.stderr
    assert out.is_file()
    assert result.stdout.startswith(f"wrote {out}: reference_set, 32 rows")
    assert f"embedder {recorded} (" in result.stdout
    assert load_model(out).embedder == recorded
    progress = result.stderr.splitlines()
    assert progress[0] == "veil: loading the embedding model"
    assert progress[1].startswith("veil: embedding model loaded (")
    assert progress[-1].startswith("veil: embedded 32/32 (")


def test_scorer_build_refuses_a_folder_as_out(tmp_path: Path) -> None:
    examples = tmp_path / "examples.yaml"
    examples.write_text("labels: {a: [x]}\n")
    result = veil("scorer", "build", "--examples", str(examples), "--out", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"veil scorer build: --out {tmp_path} is a folder; give "
                                     "the model file's path")
