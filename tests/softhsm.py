"""A real SoftHSM2 (Debian's `softhsm2`) token for tests, made with `softhsm2-util`.

SoftHSM reads SOFTHSM2_CONF once, at the process's first C_Initialize, and sees only the
tokens that existed then; so the suite has one configuration and token directory (the
session's), made before anything loads the module, and each test keeps to key labels of its
own (`SoftHsm.labels`). `unplugged()` takes the token directory away, as a removed token or a
failed device would, and puts it back; SoftHSM then sees it only after C_Initialize runs again
(what a gateway restarted once the token is back does), so it re-initializes the module.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pkcs11

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
TOKEN = "veil-tests"
SO_PIN = "so-pin-4321"
PIN = "user-pin-1234"
PIN_ENV = "VEIL_TEST_HSM_PIN"
_COUNTER = itertools.count(1)


class SoftHsm:
    def __init__(self, directory: Path) -> None:
        util = shutil.which("softhsm2-util")
        assert util, "softhsm2 is not installed (make test installs Debian's package)"
        assert Path(MODULE).is_file(), f"{MODULE} is missing (Debian's softhsm2 has it)"
        self.tokens = directory / "tokens"
        self.tokens.mkdir(parents=True)
        self.conf = directory / "softhsm2.conf"
        self.conf.write_text(f"directories.tokendir = {self.tokens}\n"
                             "objectstore.backend = file\nlog.level = ERROR\n")
        os.environ["SOFTHSM2_CONF"] = str(self.conf)
        subprocess.run([util, "--init-token", "--free", "--label", TOKEN, "--so-pin", SO_PIN,
                        "--pin", PIN], check=True, capture_output=True)

    def section(self, **overrides: Any) -> dict[str, Any]:
        """The config's `hsm:` section for the suite's token."""
        return {"module": MODULE, "token_label": TOKEN, "pin_env": PIN_ENV, **overrides}

    @staticmethod
    def labels() -> dict[str, str]:
        """Key labels no other test uses: audit, hash, fhe, vault."""
        n = next(_COUNTER)
        return {name: f"t{n}-{os.getpid()}-{name}" for name in ("audit", "hash", "fhe", "vault")}

    @contextmanager
    def unplugged(self) -> Iterator[None]:
        away = self.tokens.with_name("tokens-away")
        self.tokens.rename(away)
        try:
            yield
        finally:
            away.rename(self.tokens)
            pkcs11.lib(MODULE).reinitialize()  # every session of this process ends here
