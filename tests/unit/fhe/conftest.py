from __future__ import annotations

from pathlib import Path

import pytest

from gateway.fhe.keys import FheKeys, KeyStore

MASTER = bytes(range(32))


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> FheKeys:
    store = KeyStore(tmp_path_factory.mktemp("fhe-keys"), MASTER)
    store.init()
    return store.load()


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "keys", MASTER)
