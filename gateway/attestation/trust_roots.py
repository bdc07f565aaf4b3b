"""The roots every chain must end at, as one value handed to whatever verifies evidence: AMD's
per product line (ARK with its ASK and ASVK), the Intel SGX Root CA (PCK certificates and the
signing key of TDX collateral), NVIDIA's device identity root (GPU attestation keys) and its RIM
root (the GPU's signed reference values; a trust level may name another).

`Roots.pinned()` is what the package ships in gateway/attestation/roots/; a test passes its own
private roots instead, so no configuration key exists for replacing them. The one exception is
the operator's `attestation.amd_roots_dir`, for AMD roots that change ahead of a release.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography import x509

from gateway.attestation.nvidia import nvidia_root
from gateway.attestation.rims import nvidia_rim_root
from gateway.attestation.snp import AmdRoots, amd_roots
from gateway.attestation.tdx import intel_root


@dataclass(frozen=True)
class Roots:
    amd: Mapping[str, AmdRoots]  # product line ("Milan", "Genoa", "Turin") -> its roots
    intel: x509.Certificate
    nvidia: x509.Certificate
    nvidia_rim: x509.Certificate = field(default_factory=nvidia_rim_root)  # RIM signers' root

    @classmethod
    def pinned(cls, amd_dir: str | None = None) -> Roots:
        """The shipped roots; AMD's from `amd_dir` instead when the operator names one (the
        same file names: amd_<product>.pem, amd_<product>_vlek.pem)."""
        return cls(amd=amd_roots(amd_dir), intel=intel_root(), nvidia=nvidia_root())
