"""One distilled static-embedder table for the whole suite (and later runs on this machine):
distilling takes ~30-40 s, so tests share it instead of each gateway building its own. Every
load still verifies it (gateway/fhe/static_embed.py)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from gateway.fhe.static_embed import distill, table_path

TABLE_DIR = Path(tempfile.gettempdir()) / f"veil-tests-static-table-{os.getuid()}"


def static_table_dir() -> str:
    if not table_path(TABLE_DIR).exists():
        distill(TABLE_DIR)
    return str(TABLE_DIR)
