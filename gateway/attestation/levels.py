"""Trust levels as policies declare them, and the pure check of verified evidence against one.

    trust_levels:
      confidential-cpu:
        max_age_s: 3600
        sev-snp:
          measurements: [<96 hex digits>, ...]     # launch digests of the images you approved
          min_tcb: {bootloader: 3, tee: 0, snp: 8, microcode: 115}
          products: [Milan, Genoa, Turin]
        # or, for an Intel TDX machine (a level lists one of sev-snp / tdx):
        # tdx: {mrtd: [...], rtmr: {1: [...]}, tcb_statuses: [UpToDate]}
        measurements_from: [...]   # signed releases the machine must be measured as, one
                                   # release as a whole (attestation/releases.py): verified
                                   # when the policy loads
        nvidia-gpu:                                # GPU measurements as NVIDIA's signed RIMs
          rims: {url: https://rim.attestation.nvidia.com/v1/rim/}   # say, or files: [...]
          count: 8                                 # exactly 8 GPUs (or min_count; default 1)
        token:                                     # or an attestation service's verdict
          issuer: https://sharedeus.eus.attest.azure.net
          jwks_url: https://sharedeus.eus.attest.azure.net/certs
          claims: {x-ms-isolation-tee.x-ms-sevsnpvm-launchmeasurement: <hex>}

A backend meets a level when its current verdict is no older than `max_age_s` and every
evidence kind the level lists verified and meets every requirement under it (a GPU level lists
the CPU report and the GPU service's token: both must hold), and every GPU meets the GPU
requirements: one that does not fails the level for the whole machine.

Hand-kept lists (`measurements`, `mrtd`, `rtmr`) allow values register by register. A level with
`measurements_from` also needs ONE release to vouch for the machine as a whole: every register
one of its measurements names must equal that measurement (for TDX, a multiplatform release's
RTMR1 and RTMR2 together; a hardware-measurements platform's MRTD and RTMR0 together), so values
from two releases never combine. Releases of the two predicate types are separate requirements,
each met by one release (Tinfoil's split: the hardware's firmware, the image's code). Hand-kept
values still constrain such a level: a listed register must be in its list as well, so a list
only narrows what the releases allow (a level whose lists no release can satisfy does not load);
a register nothing names is left open, as without releases.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from gateway.attestation.nvidia import GpuEvidence, VerifiedGpu
from gateway.attestation.releases import Measurement, Registers, Release, ReleaseSource
from gateway.attestation.snp import VerifiedSnp
from gateway.attestation.tdx import VerifiedTdx
from gateway.attestation.tokens import ALLOWED_ALGORITHMS, VerifiedToken, claim

TcbComponent = Literal["bootloader", "tee", "snp", "microcode", "fmc"]
Product = Literal["Milan", "Genoa", "Turin"]
KeyKind = Literal["vcek", "vlek"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SnpRequirements(Strict):
    # may be empty when the level's measurements_from supplies them
    measurements: list[Annotated[str, Field(pattern=r"^[0-9a-f]{96}$")]] = Field(
        default_factory=list)
    products: list[Product] = Field(default_factory=lambda: list(get_args(Product)))
    signing_keys: list[KeyKind] = Field(default_factory=lambda: list(get_args(KeyKind)))
    min_tcb: dict[TcbComponent, Annotated[int, Field(ge=0, le=255)]] = Field(
        default_factory=dict)
    allow_debug: bool = False
    allow_migration_agent: bool = False
    max_vmpl: Annotated[int, Field(ge=0, le=3)] = 0
    min_guest_svn: Annotated[int, Field(ge=0)] = 0


Hex48 = Annotated[str, Field(pattern=r"^[0-9a-f]{96}$")]


class TdxRequirements(Strict):
    mrtd: list[Hex48] = Field(default_factory=list)  # the TD's initial contents (firmware)
    rtmr: dict[Literal[0, 1, 2, 3], list[Hex48]] = Field(default_factory=dict)  # allow-lists
    mrseam: list[Hex48] = Field(default_factory=list)  # empty: any module Intel signed
    # Intel's statuses, TDRelaunchAdvised(ConfigurationNeeded) included (attestation/tdx.py)
    tcb_statuses: list[str] = Field(default_factory=lambda: ["UpToDate"])
    qe_tcb_statuses: list[str] = Field(default_factory=lambda: ["UpToDate"])
    allow_debug: bool = False


class RimSource(Strict):
    """Reference values from NVIDIA's signed RIMs for the driver and VBIOS the GPU reports
    (gateway/attestation/rims.py): from `files` (the RIM XML, or the RIM service's JSON),
    else fetched from `url` + the RIM's id and cached until its certificates expire; verified
    to `root` (a PEM file; default: NVIDIA's RIM root, shipped with the package), its signer
    checked by OCSP."""

    files: list[str] = Field(default_factory=list)
    url: Annotated[str, Field(pattern=r"^https?://")] | None = None  # .../v1/rim/
    root: str | None = None

    @model_validator(mode="after")
    def _somewhere(self) -> RimSource:
        if not self.files and self.url is None:
            raise ValueError("rims needs files, a url (https://rim.attestation.nvidia.com/v1/"
                             "rim/), or both")
        return self

    def key(self) -> tuple[tuple[str, ...], str | None, str | None]:
        return tuple(self.files), self.url, self.root


class GpuRequirements(Strict):
    """Genuine NVIDIA GPUs in confidential-computing mode, each of them meeting: optionally,
    allowed values per SPDM measurement index written here, and/or NVIDIA's RIMs for the GPU's
    driver and VBIOS. `count`: exactly that many GPUs attested (a node's GPU left out of the
    evidence is one nobody checked), else at least `min_count`."""

    measurements: dict[Annotated[int, Field(ge=0, le=254)],
                       list[Annotated[str, Field(pattern=r"^[0-9a-f]+$")]]] = Field(
        default_factory=dict)
    rims: RimSource | None = None
    count: Annotated[int, Field(ge=1, le=16)] | None = None
    min_count: Annotated[int, Field(ge=1, le=16)] = 1

    @model_validator(mode="after")
    def _one_count(self) -> GpuRequirements:
        if self.count is not None and "min_count" in self.model_fields_set:
            raise ValueError("nvidia-gpu takes count (exactly) or min_count (at least), "
                             "not both")
        return self


class TokenRequirements(Strict):
    issuer: str
    jwks_url: Annotated[str, Field(pattern=r"^https?://")]
    algorithms: list[Literal[ALLOWED_ALGORITHMS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(ALLOWED_ALGORITHMS))
    nonce_claim: str = "eat_nonce"
    claims: dict[str, str | int | bool] = Field(default_factory=dict)


class TrustLevel(Strict):
    max_age_s: Annotated[int, Field(ge=10, le=7 * 24 * 3600)] = 3600
    sev_snp: SnpRequirements | None = Field(default=None, alias="sev-snp")
    tdx: TdxRequirements | None = None
    nvidia_gpu: GpuRequirements | None = Field(default=None, alias="nvidia-gpu")
    token: TokenRequirements | None = None
    measurements_from: list[ReleaseSource] = Field(default_factory=list)
    _releases: tuple[Release, ...] = PrivateAttr(default=())  # verified, set by with_releases

    @model_validator(mode="after")
    def _some_evidence(self) -> TrustLevel:
        if self.sev_snp is None and self.tdx is None and self.token is None \
                and self.nvidia_gpu is None:
            raise ValueError("a trust level needs at least one evidence kind "
                             "(sev-snp, tdx, nvidia-gpu, token)")
        if self.sev_snp is not None and self.tdx is not None:
            raise ValueError("a machine runs SEV-SNP or TDX, not both: make one level for each")
        if self.measurements_from:
            if self.sev_snp is None and self.tdx is None:
                raise ValueError("measurements_from needs sev-snp or tdx in the level")
        elif self.sev_snp is not None and not self.sev_snp.measurements:
            raise ValueError("sev-snp needs measurements (or the level's measurements_from)")
        elif self.tdx is not None and not self.tdx.mrtd:
            raise ValueError("tdx needs mrtd (or the level's measurements_from)")
        return self

    def with_releases(self, releases: Sequence[Release]) -> TrustLevel:
        """This level resting on the verified releases its measurements_from names."""
        tee, wanted = ("sev-snp", "snp") if self.sev_snp is not None else ("tdx", "mrtd")
        if self.sev_snp is None and self.tdx is None:
            raise ValueError("measurements_from needs sev-snp or tdx in the level")
        if not any(r.for_tee(tee) for r in releases):
            raise ValueError(f"{tee}: no release in measurements_from measures {tee}")
        if wanted not in _listed(self) and not any(r.carries(tee, wanted) for r in releases):
            raise ValueError("sev-snp: no measurement listed, and no release carries one"
                             if tee == "sev-snp" else "tdx: no mrtd listed, and no release "
                             "carries one (a hardware-measurements bundle does)")
        for kind in dict.fromkeys(r.predicate_type for r in releases if r.for_tee(tee)):
            if not any(_within(m, _listed(self)) for r in releases
                       if r.predicate_type == kind for m in r.for_tee(tee)):
                raise ValueError(f"{tee}: the hand-kept lists allow no measurement of the "
                                 f"{kind.rsplit('/', 2)[-2]} releases: the level could never "
                                 "be met")
        level = self.model_copy()
        level._releases = tuple(releases)
        return level

    @property
    def releases(self) -> tuple[Release, ...]:
        return self._releases

    def releases_matched(self, tee: str, measured: Registers
                         ) -> list[tuple[Release, Measurement]] | None:
        """For each predicate type among the releases measuring this TEE, the first release
        one of whose measurements the registers match whole; None when a type has none (or
        the level's measurements_from was never verified)."""
        if self.measurements_from and not self._releases:
            return None
        matched = []
        for kind in dict.fromkeys(r.predicate_type for r in self._releases if r.for_tee(tee)):
            found = next(((r, m) for r in self._releases if r.predicate_type == kind
                          if (m := r.match(tee, measured)) is not None), None)
            if found is None:
                return None
            matched.append(found)
        return matched

    def release_problems(self, tee: str, measured: Registers) -> list[str]:
        if not self.measurements_from:
            return []
        if self.releases_matched(tee, measured) is not None:
            return []
        if not self._releases:
            return ["measurements_from was not verified"]
        names = sorted({name for r in self._releases for m in r.for_tee(tee)
                        for name, _ in m.registers})
        shown = ", ".join(f"{name.upper()} {measured.get(name, '')[:16]}..." for name in names)
        return [f"no one signed release measures {shown} as a whole"]

    def release_labels(self, tee: str, measured: Registers) -> list[str]:
        """The releases the verdict rests on, by name (a hardware platform named too)."""
        return [release.label + (f", platform {m.platform}" if m.platform else "")
                for release, m in self.releases_matched(tee, measured) or []]


def _listed(level: TrustLevel) -> dict[str, list[str]]:
    """The registers the hand-kept lists constrain, as snp_problems and tdx_problems read them
    (an empty `measurements` or `mrtd` constrains nothing; an RTMR listed empty allows none)."""
    snp = level.sev_snp.measurements if level.sev_snp is not None else []
    tdx = level.tdx or TdxRequirements()
    return {**({"snp": snp} if snp else {}), **({"mrtd": tdx.mrtd} if tdx.mrtd else {}),
            **{f"rtmr{i}": v for i, v in tdx.rtmr.items()}}


def _within(measurement: Measurement, listed: dict[str, list[str]]) -> bool:
    return all(name not in listed or value in listed[name]
               for name, value in measurement.registers)


def snp_registers(verified: VerifiedSnp) -> dict[str, str]:
    return {"snp": verified.report.measurement.hex()}


def tdx_registers(verified: VerifiedTdx) -> dict[str, str]:
    report = verified.quote.report
    return {"mrtd": report.mrtd.hex(),
            **{f"rtmr{i}": value.hex() for i, value in enumerate(report.rtmrs)}}


def level_snp_problems(verified: VerifiedSnp, level: TrustLevel) -> list[str]:
    """The report against the level's sev-snp requirements and its signed releases."""
    if level.sev_snp is None:
        return ["the level lists no sev-snp requirements"]
    return snp_problems(verified, level.sev_snp) + \
        level.release_problems("sev-snp", snp_registers(verified))


def level_tdx_problems(verified: VerifiedTdx, level: TrustLevel) -> list[str]:
    """The quote against the level's tdx requirements and its signed releases."""
    if level.tdx is None:
        return ["the level lists no tdx requirements"]
    return tdx_problems(verified, level.tdx) + \
        level.release_problems("tdx", tdx_registers(verified))


def snp_problems(verified: VerifiedSnp, wanted: SnpRequirements) -> list[str]:
    """Everything about the report that the level does not accept (empty: it meets it)."""
    report = verified.report
    problems = []
    # empty only beside measurements_from (TrustLevel's validator): the releases decide then
    if wanted.measurements and report.measurement.hex() not in wanted.measurements:
        problems.append(f"measurement {report.measurement.hex()} is not allowed")
    if verified.product not in wanted.products:
        problems.append(f"product {verified.product} is not allowed")
    if verified.key_kind not in wanted.signing_keys:
        problems.append(f"signing key {verified.key_kind} is not allowed")
    below = verified.reported_tcb.below({str(k): v for k, v in wanted.min_tcb.items()})
    if below:
        problems.append(f"TCB below the minimum: {', '.join(below)}")
    if report.debug and not wanted.allow_debug:
        problems.append("debug is enabled in the guest policy")
    if report.migration_agent and not wanted.allow_migration_agent:
        problems.append("a migration agent is allowed by the guest policy")
    if report.vmpl > wanted.max_vmpl:
        problems.append(f"VMPL {report.vmpl} > {wanted.max_vmpl}")
    if report.guest_svn < wanted.min_guest_svn:
        problems.append(f"guest SVN {report.guest_svn} < {wanted.min_guest_svn}")
    return problems


def tdx_problems(verified: VerifiedTdx, wanted: TdxRequirements) -> list[str]:
    report = verified.quote.report
    problems = []
    if wanted.mrtd and report.mrtd.hex() not in wanted.mrtd:  # empty: as for SNP above
        problems.append(f"MRTD {report.mrtd.hex()} is not allowed")
    for index, allowed in sorted(wanted.rtmr.items()):
        if report.rtmrs[index].hex() not in allowed:
            problems.append(f"RTMR{index} {report.rtmrs[index].hex()} is not allowed")
    if wanted.mrseam and report.mrseam.hex() not in wanted.mrseam:
        problems.append(f"MRSEAM {report.mrseam.hex()} is not allowed")
    if verified.tcb_status not in wanted.tcb_statuses:
        module = verified.module
        problems.append(
            f"TCB status {verified.tcb_status} is not accepted (launched under TDX module "
            f"{module.identity} {module.tcb_status}, since updated: relaunch the TD)"
            if verified.relaunch_advised else
            f"platform TCB status {verified.tcb_status} is not accepted"
            if verified.tcb_status == verified.platform_tcb_status else
            f"TCB status {verified.tcb_status} is not accepted (platform "
            f"{verified.platform_tcb_status}, TDX module {module.identity} {module.tcb_status})")
    if verified.qe_tcb_status not in wanted.qe_tcb_statuses:
        problems.append(f"QE TCB status {verified.qe_tcb_status} is not accepted")
    if report.debug and not wanted.allow_debug:
        problems.append("the TD is debuggable")
    return problems


def gpus_problems(gpus: Sequence[VerifiedGpu], wanted: GpuRequirements) -> list[str]:
    """The count, and every GPU's own problems, each named: none is hidden by another's."""
    return gpu_count_problems(len(gpus), wanted) + [
        f"{gpu.label()}: {problem}" for gpu in gpus
        for problem in gpu_problems(gpu.evidence, wanted)]


def gpu_count_problems(attested: int, wanted: GpuRequirements) -> list[str]:
    if wanted.count is not None and attested != wanted.count:
        return [f"{attested} GPU(s) attested, the level requires {wanted.count}"]
    if attested < wanted.min_count:
        return [f"{attested} GPU(s) attested, the level requires at least {wanted.min_count}"]
    return []


def gpu_problems(evidence: GpuEvidence, wanted: GpuRequirements) -> list[str]:
    problems = []
    for index, allowed in sorted(wanted.measurements.items()):
        value = evidence.measurements.get(index)
        if value is None:
            problems.append(f"GPU measurement {index} is missing")
        elif value.hex() not in allowed:
            problems.append(f"GPU measurement {index} {value.hex()} is not allowed")
    return problems


def token_problems(verified: VerifiedToken, wanted: TokenRequirements) -> list[str]:
    if verified.issuer != wanted.issuer:
        return [f"issuer {verified.issuer!r} is not {wanted.issuer!r}"]
    return [f"claim {path} is {_show(claim(verified.claims, path))}, expected {_show(value)}"
            for path, value in wanted.claims.items()
            if claim(verified.claims, path) != value]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
