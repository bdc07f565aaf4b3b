"""GPU evidence from inside the confidential VM, through NVIDIA's `nvattest` CLI (the NVIDIA
Attestation SDK's command line, which asks each GPU over NVML):

    nvattest collect-evidence --device gpu --nonce <64 hex digits>

prints {"evidences": [{"arch": ..., "nonce": <hex>, "evidence": <base64 SPDM GET_MEASUREMENTS
request+response>, "certificate": <base64 PEM device chain>}, ...], "result_code": 0,
"result_message": "Ok"}. Each GPU becomes one "nvidia-gpu" part of the evidence document, in
the format gateway/attestation/evidence.py verifies (hex evidence, PEM chain).

The agent does not judge the evidence: the gateway verifies the signature, the chain to
NVIDIA's root and the nonce. It only refuses output it cannot translate, so an operator sees a
broken tool at the agent instead of a vague refusal at the gateway.
"""

from __future__ import annotations

import base64
import binascii
import json
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.errors import EvidenceError

TOOL = "nvattest"
TIMEOUT_S = 60.0  # NVML asks each GPU in turn; an SPDM exchange takes a few seconds at most
MAX_OUTPUT = 4 * 1024 * 1024
SPDM_GET_MEASUREMENTS = b"\xe0"  # the request code, second byte of the evidence


class GpuSource(Protocol):
    def parts(self, nonce: bytes) -> list[dict[str, str]]:
        """The GPUs' evidence parts, asked with this 32-byte SPDM nonce."""
        ...


@dataclass(frozen=True)
class Nvattest:
    path: str
    timeout_s: float = TIMEOUT_S

    def parts(self, nonce: bytes) -> list[dict[str, str]]:
        command = [self.path, "collect-evidence", "--device", "gpu", "--nonce", nonce.hex()]
        try:
            # A fixed argv; the tool is the one the operator installed.
            done = subprocess.run(command, capture_output=True,  # noqa: S603
                                  timeout=self.timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise EvidenceError(f"nvattest: no answer within {self.timeout_s:.0f} s") from None
        except OSError as exc:
            raise EvidenceError(f"nvattest: cannot run {self.path} ({exc.strerror})") from None
        if done.returncode != 0:
            said = done.stderr.decode(errors="replace").strip().splitlines()
            raise EvidenceError(f"nvattest exited with {done.returncode}"
                                + (f": {said[-1][:200]}" if said else ""))
        return parts_from_output(done.stdout)


def parts_from_output(stdout: bytes) -> list[dict[str, str]]:
    """`nvattest collect-evidence` output as evidence parts, one per GPU."""
    if len(stdout) > MAX_OUTPUT:
        raise EvidenceError("nvattest: output larger than 4 MiB")
    try:
        document = json.loads(stdout)
    except ValueError:
        raise EvidenceError("nvattest printed no JSON (an nvattest that prints text needs "
                            "a newer release)") from None
    if not isinstance(document, dict):
        raise EvidenceError("nvattest: output is not a JSON object")
    if document.get("result_code") != 0:
        raise EvidenceError(f"nvattest: result {document.get('result_code')!r} "
                            f"({str(document.get('result_message'))[:200]})")
    evidences = document.get("evidences")
    if not isinstance(evidences, list) or not evidences:
        raise EvidenceError("nvattest: no GPU evidence in its output")
    return [_part(entry, index) for index, entry in enumerate(evidences)]


def _part(entry: Any, index: int) -> dict[str, str]:
    try:
        raw = base64.b64decode(entry["evidence"], validate=True)
        chain = base64.b64decode(entry["certificate"], validate=True).decode("ascii")
    except (KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise EvidenceError(f"nvattest: GPU {index} has no base64 evidence and "
                            "certificate") from None
    if raw[1:2] != SPDM_GET_MEASUREMENTS or "BEGIN CERTIFICATE" not in chain:
        raise EvidenceError(f"nvattest: GPU {index}'s evidence is not an SPDM measurement "
                            "transcript with a PEM chain")
    return {"format": "nvidia-gpu", "evidence": raw.hex(), "certificates": chain}


def find_nvattest(search_path: str | None = None) -> Nvattest | None:
    """nvattest on PATH (or `search_path`), if NVIDIA's tools are installed here."""
    path = shutil.which(TOOL, path=search_path)
    return Nvattest(path) if path else None
