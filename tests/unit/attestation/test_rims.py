"""NVIDIA RIMs: a genuine VBIOS RIM verifies to NVIDIA's pinned RIM root and is compared index
by index with genuine H100 evidence; test-signed RIMs are matched against test evidence, and a
broken signature, a measurement moved outside what is signed, another root, an expired signer
and XML tricks are refused."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from lxml import etree

from gateway.attestation.nvidia import GpuEvidence, parse_evidence
from gateway.attestation.rims import (
    gpu_versions,
    nvidia_rim_root,
    rim_problems,
    unwrap,
    verify_rim,
)
from gateway.errors import EvidenceError
from tests.attestation_ca import SHA384_NS, SWID_NS, GpuTestCa, RimTestCa, gpu_opaque

DATA = Path(__file__).parents[2] / "data" / "attestation" / "nvidia"
GENUINE_RIM = DATA / "NV_GPU_VBIOS_1010_0200_882_960074001A.swidtag"
AT = datetime(2025, 1, 1, tzinfo=UTC)
DRIVER = {20: [b"\x20" * 48], 21: [b"\x21" * 48, b"\x22" * 48]}  # RIM index -> allowed
VBIOS = {0: [b"\x01" * 48], 3: [b"\x03" * 48]}


def genuine_report() -> GpuEvidence:
    return parse_evidence(bytes.fromhex((DATA / "hopper_coco_report1.txt").read_text().strip()))


def test_genuine_vbios_rim_verifies_and_is_compared_index_by_index() -> None:
    rim = verify_rim(GENUINE_RIM.read_bytes(), nvidia_rim_root(), AT)
    assert (rim.version, rim.signer) == ("96.00.74.00.1A", "HCC RIM L4 Signer")
    assert sorted(rim.measurements) == [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12]
    report = genuine_report()
    versions = gpu_versions(report)
    assert versions.vbios_rim == "NV_GPU_VBIOS_1010_0200_882_960074001A"
    assert versions.driver_rim == "NV_GPU_DRIVER_GH100_580.95.05"
    problems = rim_problems(report, {"vbios": rim})
    assert len(problems) == 1
    assert problems[0].startswith("GPU measurement index 9 059b32e712a153f4")


def test_genuine_rim_with_a_measurement_changed_is_refused() -> None:
    text = GENUINE_RIM.read_bytes()
    value = b"7f3e9382785513c1932dfcc9e87f6ef6bf5fefe88144c6ea48539e65f937013dd7349144e5f439dc"
    assert value in text
    tampered = text.replace(value, b"059b32e712a153f490dbfb7976a9e275d789e28bd4803c357def2b61"
                                   b"23327c430526bfaecc20")
    with pytest.raises(EvidenceError, match="signature does not verify"):
        verify_rim(tampered, nvidia_rim_root(), AT)


def test_genuine_rim_is_refused_under_another_root_and_after_its_signer_expired() -> None:
    with pytest.raises(EvidenceError, match="does not end at the pinned NVIDIA RIM root"):
        verify_rim(GENUINE_RIM.read_bytes(), RimTestCa().root, AT)
    with pytest.raises(EvidenceError, match="HCC RIM L4 Signer' is not valid"):
        verify_rim(GENUINE_RIM.read_bytes(), nvidia_rim_root(), datetime(2026, 1, 1, tzinfo=UTC))


def test_gpu_versions_of_the_other_genuine_report() -> None:
    raw = bytes.fromhex((DATA / "hopperAttestationReport.txt").read_text().strip())
    versions = gpu_versions(parse_evidence(raw))
    assert (versions.driver, versions.vbios) == ("550.90.07", "96.00.9f.00.01")
    assert versions.rim_ids() == {"driver": "NV_GPU_DRIVER_GH100_550.90.07",
                                  "vbios": "NV_GPU_VBIOS_1010_0200_882_96009F0001"}


def gpu(measurements: dict[int, list[bytes]], **changed: bytes) -> GpuEvidence:
    """Test evidence whose SPDM blocks hold the first allowed value of each RIM index."""
    blocks = {index + 1: values[0] for index, values in measurements.items()}
    blocks.update({int(k[1:]) + 1: v for k, v in changed.items()})
    return parse_evidence(GpuTestCa().evidence(bytes(32), blocks, gpu_opaque()))


def test_test_signed_rims_match_evidence_and_a_wrong_value_names_its_index() -> None:
    ca = RimTestCa()
    driver = verify_rim(ca.rim("550.90.07", DRIVER, inactive=(1, 2)), ca.root, AT)
    vbios = verify_rim(ca.served(ca.rim("96.00.74.00.1A", VBIOS), "id"), ca.root, AT)
    assert driver.measurements == {20: ("20" * 48,), 21: ("21" * 48, "22" * 48)}
    assert rim_problems(gpu({**DRIVER, **VBIOS}), {"driver": driver, "vbios": vbios}) == []
    assert rim_problems(gpu({**DRIVER, **VBIOS}, i21=b"\x22" * 48),
                        {"driver": driver, "vbios": vbios}) == []  # the other alternative
    problems = rim_problems(gpu({**DRIVER, **VBIOS}, i3=b"\x04" * 48),
                            {"driver": driver, "vbios": vbios})
    assert problems == [f"GPU measurement index 3 {'04' * 8}... is not one of the 1 the vbios "
                        "RIM 96.00.74.00.1A allows"]
    both = verify_rim(ca.rim("96.00.74.00.1A", {20: [b"\x20" * 48]}), ca.root, AT)
    assert rim_problems(gpu(DRIVER), {"driver": driver, "vbios": both}) == [
        "GPU measurement index 20 is in both the driver and the vbios RIM"]


def test_a_broken_signature_is_refused() -> None:
    ca = RimTestCa()
    tree = etree.fromstring(ca.rim("550.90.07", DRIVER))
    value = tree.find(".//{http://www.w3.org/2000/09/xmldsig#}SignatureValue")
    value.text = ("A" if value.text[0] != "A" else "B") + value.text[1:]
    with pytest.raises(EvidenceError, match="signature does not verify"):
        verify_rim(etree.tostring(tree), ca.root, AT)
    other = RimTestCa()  # signed by a key the certificate in KeyInfo does not hold
    with pytest.raises(EvidenceError, match="signature does not verify"):
        verify_rim(ca.sign(ca.unsigned("550.90.07", DRIVER), key=other.key), ca.root, AT)


def test_measurements_outside_what_is_signed_are_never_read() -> None:
    ca = RimTestCa()
    # A second Payload added to a document signed as a whole: the digest no longer holds.
    tree = etree.fromstring(ca.rim("550.90.07", DRIVER))
    extra = etree.SubElement(tree, f"{{{SWID_NS}}}Payload")
    etree.SubElement(extra, f"{{{SWID_NS}}}Resource", type="Measurement", index="20",
                     active="True", alternatives="1",
                     **{f"{{{SHA384_NS}}}Hash0": "ee" * 48})
    with pytest.raises(EvidenceError, match="signature does not verify"):
        verify_rim(etree.tostring(tree), ca.root, AT)
    # The signed document wrapped in an unsigned one carrying other measurements.
    wrapper = ca.unsigned("550.90.07", {20: [b"\xee" * 48]})
    wrapper.append(etree.fromstring(ca.rim("550.90.07", DRIVER)))
    with pytest.raises(EvidenceError, match="no signature with its certificate directly under"):
        verify_rim(etree.tostring(wrapper), ca.root, AT)
    # A signature over the Payload element only, beside an unsigned Payload read first.
    tree = ca.unsigned("550.90.07", DRIVER)
    tree.find(f"{{{SWID_NS}}}Payload").set("Id", "signed")
    signed = etree.fromstring(ca.sign(tree, reference_uri="#signed"))
    forged = etree.Element(f"{{{SWID_NS}}}Payload")
    etree.SubElement(forged, f"{{{SWID_NS}}}Resource", type="Measurement", index="20",
                     active="True", alternatives="1", **{f"{{{SHA384_NS}}}Hash0": "ee" * 48})
    signed.insert(1, forged)
    with pytest.raises(EvidenceError, match="does not cover the whole RIM"):
        verify_rim(etree.tostring(signed), ca.root, AT)


def test_a_rim_under_another_root_or_past_its_signer_is_refused() -> None:
    ca = RimTestCa(days=30)
    rim = ca.rim("550.90.07", DRIVER)
    with pytest.raises(EvidenceError, match="does not end at the pinned NVIDIA RIM root"):
        verify_rim(rim, RimTestCa().root, AT.replace(year=2024))
    with pytest.raises(EvidenceError, match="'Test RIM signer' is not valid"):
        verify_rim(rim, ca.root, AT)


def test_xml_tricks_and_garbage_are_refused() -> None:
    ca = RimTestCa()
    rim = ca.rim("550.90.07", DRIVER)
    laughs = b'<!ENTITY a "lol"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
    for dtd in (b'<!ENTITY e SYSTEM "file:///etc/passwd">', laughs):
        entity = (b'<?xml version="1.0"?><!DOCTYPE SoftwareIdentity [' + dtd + b']>'
                  + rim.replace(b'name="GH100"', b'name="&b;"', 1))
        with pytest.raises(EvidenceError, match=r"DOCTYPE is not allowed|not well-formed"):
            verify_rim(entity, ca.root, AT)
    entity = b'<!DOCTYPE SoftwareIdentity [' + laughs + b']>' + rim
    with pytest.raises(EvidenceError, match="DOCTYPE is not allowed"):
        verify_rim(entity, ca.root, AT)
    with pytest.raises(EvidenceError, match="larger than"):
        verify_rim(rim + b" " * (1024 * 1024), ca.root, AT)
    with pytest.raises(EvidenceError, match="not well-formed"):
        verify_rim(b"<SoftwareIdentity", ca.root, AT)
    with pytest.raises(EvidenceError, match="no base64 'rim'"):
        unwrap(b'{"rim": 3}')
    with pytest.raises(EvidenceError, match="no signature with its certificate"):
        verify_rim(etree.tostring(ca.unsigned("550.90.07", DRIVER)), ca.root, AT)


def test_evidence_without_the_version_fields_names_them() -> None:
    evidence = parse_evidence(GpuTestCa().evidence(bytes(32), {1: bytes(48)}))
    with pytest.raises(EvidenceError, match="opaque data field"):
        gpu_versions(evidence)
    evidence = parse_evidence(GpuTestCa().evidence(bytes(32), {1: bytes(48)},
                                                   gpu_opaque()[:-1]))
    with pytest.raises(EvidenceError, match="runs past its end"):
        gpu_versions(evidence)
