"""Measurement specs in the JSON format of Flashbots' cvm-reverse-proxy: both examples of a public BuilderNet post on
addressing TEE web services (the JSON list and the gzip+base64 userinfo it proposes, copied below) decode, specs
round-trip through JSON and the inline form, matching reports every mismatch, and malformed specs are SpecFormatErrors
naming the field. The decoders are fuzzed."""

import base64
import contextlib
import gzip
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ikecommon.attestation.envelope import EvidenceKind
from ikecommon.attestation.errors import AttestationError
from ikecommon.attestation.spec import MAX_INLINE, MAX_SPEC, MeasurementEntry, MeasurementSpec, SpecFormatError

# The two examples of a public post by the BuilderNet (Flashbots) team on addressing TEE web services, unchanged: the
# measurements file of their attested-TLS proxy, and a spec passed gzipped and base64-encoded as the userinfo of
# https://<spec>@host.domain.
EXAMPLE_JSON = """[
{
"measurement_id": "azure-tdx-example-01",
"attestation_type": "azure-tdx",
"measurements": {
"4": {
"expected": "ea92ff762767eae6316794f1641c485d4846bc2b9df2eab6ba7f630ce6f4d66f"
},
"9": {
"expected": "c9f429296634072d1063a03fb287bed0b2d177b0a504755ad9194cffd90b2489"
},
"11": {
"expected": "efa43e0beff151b0f251c4abf48152382b1452b4414dbd737b4127de05ca31f7"
}
}
}
]"""
EXAMPLE_INLINE = (
    "H4sIAAAAAAAAA82QTWoDMQyF9zlFmHUCsmxZnl6llCBZMhSaNjRTSCm5e53ZJKGQdFOoFsbo93vvcbHs8TW/pxi2LvuPd9/667R5"
    "tuFhOViV3Xqyw9oPst29+BpwWJ0HZJp8P8n0/Pa6mT53fjly2XexeN97zifnKvxIzWk/7LxOPnOQUYYCrqO3Uh1UpWW1amLuCtm5"
    "koIkC15DVi+5SCEZKaqoQyWnZBBqcSAQSs1DFeASGSmC4XB1/ri6Bgz3AROG7CNS4zG35FiwNulYaKkyS4HOPxaWJjgGIsmhWY1R"
    "TLsqUbAUAooaYSzs5NhboGtrWoSw8G1A/A0gd9VNeYQRu0cJAJQ4aE5eNUXsZJG4A3UpzcJMnTnkYmzcuHnBrq0brHLawN3YSLWl"
    "2Mgr0W3AeB8Q/jhuA6Z/B7i4/h0XT4tv+8/CCrEDAAA=")

MRTD = bytes.fromhex(
    "5d56080eb9ef8ce0bbaf6bdcdadeeb06e7c5b0a4d1ec16be868a85a953babe0c5e54d01c8e050a54fe1ca078372530d2")
RTMR0 = bytes.fromhex(
    "4216e925f796f4e282cfa6e72d4c77a80560987afa29155a61fdc33adb80eab0d4112abd52387e5e25a60deefb8a5287")
RTMR1 = bytes.fromhex(
    "4274fefb79092c164000b571b64ecb432fa2357adb421fd1c77a867168d7d7f7fe82796d1eba092c7bab35cf43f5ec55")
EXAMPLE_REGISTERS = {0: MRTD, 1: RTMR0, 2: RTMR1, 3: bytes(48), 4: bytes(48)}


def entry(**fields: Any) -> bytes:
    base: dict[str, Any] = {"measurement_id": "m", "attestation_type": "dcap-tdx",
                            "measurements": {"0": {"expected": "00" * 48}}}
    return json.dumps([{**base, **fields}]).encode()


def spec_error(data: bytes) -> SpecFormatError:
    with pytest.raises(SpecFormatError) as error:
        MeasurementSpec.decode(data)
    return error.value


# --- the post's examples -------------------------------------------------------------------------------------


def test_json_example_decodes() -> None:
    spec = MeasurementSpec.decode(EXAMPLE_JSON.encode())
    [only] = spec.entries
    assert (only.measurement_id, only.attestation_type) == ("azure-tdx-example-01", "azure-tdx")
    assert [index for index, _ in only.expected] == [4, 9, 11]
    assert only.expected[0][1].hex() == "ea92ff762767eae6316794f1641c485d4846bc2b9df2eab6ba7f630ce6f4d66f"


def test_azure_example_never_matches_our_evidence() -> None:
    match = MeasurementSpec.decode(EXAMPLE_JSON.encode()).match(EvidenceKind.TDX, EXAMPLE_REGISTERS)
    assert match.measurement_id is None
    assert [m.field for m in match.mismatches] == ["spec.attestation_type"]


def test_inline_example_decodes() -> None:
    """The example's userinfo uses the standard alphabet with padding; it is accepted as is."""
    spec = MeasurementSpec.from_inline(EXAMPLE_INLINE)
    [only] = spec.entries
    assert (only.measurement_id, only.attestation_type) == ("dcap-tdx-example-02", "dcap-tdx")
    assert dict(only.expected) == EXAMPLE_REGISTERS
    assert spec.match(EvidenceKind.TDX, EXAMPLE_REGISTERS).measurement_id == "dcap-tdx-example-02"


def test_inline_round_trip_is_base64url_without_padding() -> None:
    spec = MeasurementSpec.from_inline(EXAMPLE_INLINE)
    inline = spec.to_inline()
    assert re.fullmatch(r"[A-Za-z0-9_-]+", inline) and inline.startswith("H4sI")
    assert MeasurementSpec.from_inline(inline) == spec
    assert MeasurementSpec.from_inline(inline + "=" * (-len(inline) % 4)) == spec


def test_json_round_trip_and_file(tmp_path: Path) -> None:
    spec = MeasurementSpec.from_inline(EXAMPLE_INLINE)
    path = tmp_path / "spec.json"
    path.write_bytes(spec.encode())
    assert MeasurementSpec.load(path) == spec
    assert json.loads(spec.encode())[0]["measurements"]["1"] == {"expected": RTMR0.hex()}


def test_a_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(SpecFormatError) as error:
        MeasurementSpec.load(tmp_path / "absent.json")
    assert error.value.field.endswith("absent.json")


# --- matching -------------------------------------------------------------------------------------------------


def test_every_mismatched_register_is_reported_with_expected_and_actual() -> None:
    spec = MeasurementSpec.from_inline(EXAMPLE_INLINE)
    actual = {**EXAMPLE_REGISTERS, 1: bytes(48), 3: b"\x01" * 48}
    match = spec.match(EvidenceKind.TDX, actual)
    assert match.measurement_id is None
    assert [(m.field, m.expected, m.actual) for m in match.mismatches] == [
        ("spec[dcap-tdx-example-02].measurements.1", f"{RTMR0.hex()} (RTMR0)", "00" * 48),
        ("spec[dcap-tdx-example-02].measurements.3", f"{'00' * 48} (RTMR2)", "01" * 48),
    ]


def test_any_one_entry_matching_is_enough() -> None:
    spec = MeasurementSpec((MeasurementEntry("old", "dcap-tdx", ((0, bytes(48)),)),
                            MeasurementEntry("new", "dcap-tdx", ((0, MRTD),))))
    assert spec.match(EvidenceKind.TDX, EXAMPLE_REGISTERS).measurement_id == "new"
    assert len(spec.match(EvidenceKind.TDX, {0: b"\x02" * 48}).mismatches) == 2  # both candidates, each named


def test_an_entry_for_another_kind_of_evidence_does_not_match() -> None:
    spec = MeasurementSpec((MeasurementEntry("snp", "sev-snp", ((0, MRTD),)),))
    [mismatch] = spec.match(EvidenceKind.TDX, EXAMPLE_REGISTERS).mismatches
    assert mismatch.field == "spec.attestation_type" and "dcap-tdx" in mismatch.expected


def test_a_register_the_evidence_lacks_is_a_mismatch() -> None:
    spec = MeasurementSpec((MeasurementEntry("sim", "sim", ((5, bytes(48)),)),))
    [mismatch] = spec.match(EvidenceKind.SIM, {0: bytes(48)}).mismatches
    assert mismatch.actual.startswith("absent")


# --- malformed specs, each its own test -----------------------------------------------------------------------


def test_bad_json() -> None:
    assert spec_error(b"[{").field == "spec"


def test_not_utf8() -> None:
    assert "UTF-8" in spec_error(b"\xff[]").detail


def test_an_object_instead_of_a_list() -> None:
    assert spec_error(b'{"measurement_id": "m"}').field == "spec"


def test_an_empty_list() -> None:
    assert spec_error(b"[]").field == "spec"


def test_unknown_field() -> None:
    assert spec_error(entry(comment="hi")).field == "spec[0].comment"


def test_missing_field() -> None:
    data = json.dumps([{"measurement_id": "m", "attestation_type": "dcap-tdx"}]).encode()
    assert spec_error(data).field == "spec[0].measurements"


def test_wrong_type_of_id() -> None:
    assert spec_error(entry(measurement_id=7)).field == "spec[0].measurement_id"


def test_bad_attestation_type() -> None:
    assert spec_error(entry(attestation_type="DCAP TDX")).field == "spec[0].attestation_type"


def test_bad_hex() -> None:
    assert spec_error(entry(measurements={"0": {"expected": "zz" * 48}})).field == "spec[0].measurements.0.expected"


def test_odd_length_hex() -> None:
    assert spec_error(entry(measurements={"0": {"expected": "0" * 95}})).field == "spec[0].measurements.0.expected"


def test_register_of_the_wrong_size() -> None:
    error = spec_error(entry(measurements={"1": {"expected": "00" * 32}}))
    assert error.field == "spec[0].measurements.1.expected" and "RTMR0 is 48 bytes" in error.detail


def test_register_index_beyond_the_type() -> None:
    error = spec_error(entry(measurements={"5": {"expected": "00" * 48}}))
    assert error.field == "spec[0].measurements.5" and "RTMR3" in error.detail


@pytest.mark.parametrize("index", ["01", "-1", "x", "64", " 1"])
def test_register_index_not_canonical(index: str) -> None:
    assert spec_error(entry(attestation_type="other", measurements={index: {"expected": "00"}})).field.startswith(
        "spec[0].measurements.")


def test_extra_field_beside_expected() -> None:
    error = spec_error(entry(measurements={"0": {"expected": "00" * 48, "note": "x"}}))
    assert error.field == "spec[0].measurements.0"


def test_empty_measurements() -> None:
    assert spec_error(entry(measurements={})).field == "spec[0].measurements"


def test_duplicate_ids() -> None:
    one = json.loads(entry())[0]
    assert spec_error(json.dumps([one, one]).encode()).field == "spec[1].measurement_id"


def test_duplicate_keys() -> None:
    data = b'[{"measurement_id": "a", "measurement_id": "b", "attestation_type": "sim", "measurements": {}}]'
    assert spec_error(data).field == "spec.measurement_id"


def test_oversize_spec() -> None:
    assert "more than" in spec_error(b" " * (MAX_SPEC + 1)).detail


def inline_error(text: str) -> SpecFormatError:
    with pytest.raises(SpecFormatError) as error:
        MeasurementSpec.from_inline(text)
    assert error.value.field == "spec.inline"
    return error.value


def test_inline_that_inflates_past_the_limit() -> None:
    bomb = base64.urlsafe_b64encode(gzip.compress(b"[" + b" " * (MAX_SPEC * 4))).decode().rstrip("=")
    assert "inflates" in inline_error(bomb).detail


def test_inline_truncated_gzip() -> None:
    assert "truncated" in inline_error(MeasurementSpec.from_inline(EXAMPLE_INLINE).to_inline()[:-8]).detail


def test_inline_not_gzip_is_not_a_governance_feed_yet() -> None:
    feed = "aHR0cHM6Ly9idWlsZGVybmV0LmZsYXNoYm90cy5uZXQvbWVhc3VyZW1lbnRzCg=="  # the post's second URL
    assert "governance feed" in inline_error(feed).detail


def test_inline_with_data_after_the_gzip_member() -> None:
    raw = gzip.compress(MeasurementSpec.from_inline(EXAMPLE_INLINE).encode()) + b"junk"
    assert "after the gzip" in inline_error(base64.urlsafe_b64encode(raw).decode()).detail


@pytest.mark.parametrize("text", ["", "H4sI!", "H4sIA", "=", "a" * (MAX_INLINE + 1)])
def test_inline_that_is_not_base64url(text: str) -> None:
    inline_error(text)


# --- fuzz -----------------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20)


def decodes_or_spec_error(data: bytes) -> None:
    with contextlib.suppress(AttestationError):
        MeasurementSpec.decode(data)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    decodes_or_spec_error(data)


@settings(max_examples=1000, deadline=None)
@given(json_values)
def test_fuzz_random_json(value: object) -> None:
    decodes_or_spec_error(json.dumps(value).encode())


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["measurement_id", "attestation_type", "measurements"]), json_values,
       st.sampled_from([EXAMPLE_JSON.encode(), entry()]))
def test_fuzz_one_field_replaced(name: str, value: object, base: bytes) -> None:
    document = json.loads(base)
    document[0][name] = value
    decodes_or_spec_error(json.dumps(document).encode())


@settings(max_examples=1000, deadline=None)
@given(st.data())
def test_fuzz_mutated_example_json(data: st.DataObject) -> None:
    raw = bytearray(EXAMPLE_JSON.encode())
    for _ in range(data.draw(st.integers(1, 6))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    decodes_or_spec_error(bytes(raw))


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/=", max_size=200))
def test_fuzz_inline(text: str) -> None:
    with contextlib.suppress(AttestationError):
        MeasurementSpec.from_inline("H4sI" + text)


registers = st.dictionaries(st.integers(0, 4), st.binary(min_size=48, max_size=48), min_size=1, max_size=5)
entries = st.builds(lambda mid, regs: MeasurementEntry(mid, "dcap-tdx", tuple(sorted(regs.items()))),
                    st.text(st.characters(codec="ascii", categories=["L", "N", "P"]), min_size=1, max_size=20),
                    registers)


@settings(max_examples=300, deadline=None)
@given(st.lists(entries, min_size=1, max_size=5, unique_by=lambda e: e.measurement_id))
def test_any_spec_round_trips(spec_entries: list[MeasurementEntry]) -> None:
    spec = MeasurementSpec(tuple(spec_entries))
    assert MeasurementSpec.decode(spec.encode()) == spec
    assert MeasurementSpec.from_inline(spec.to_inline()) == spec
