"""ikecommon.strictjson: one document, one reading. Each reader that uses it (the envelope, measurement specs,
governance feeds, Intel's signed collateral, Azure's HCL runtime data) turns its JsonError into its own error."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ikecommon import strictjson
from ikecommon.attestation.envelope import Envelope, EnvelopeFormatError
from ikecommon.attestation.errors import EvidenceFormatError
from ikecommon.attestation.signed_json import parse_signed
from ikecommon.attestation.spec import MeasurementSpec, SpecFormatError


@pytest.mark.parametrize(("text", "detail", "offset", "member"), [
    (b'{"a": 1, "a": 2}', "duplicate member", None, "a"),
    (b'{"x": {"b": [1, {"c": 1, "c": 1}]}}', "duplicate member", None, "c"),  # nested as well
    (b"[1, NaN]", "NaN is not JSON", None, None),
    (b"-Infinity", "-Infinity is not JSON", None, None),
    (b"[1,", "not JSON: Expecting value", 3, None),
    (b'"\xff"', "not UTF-8", 1, None),
    (b"[" * 100_000, "nested too deeply", None, None),
])
def test_refusals(text, detail, offset, member):
    with pytest.raises(strictjson.JsonError) as caught:
        strictjson.loads(text)
    assert (caught.value.detail, caught.value.offset, caught.value.member) == (detail, offset, member)


def test_an_integer_too_long_to_convert_is_not_json():
    with pytest.raises(strictjson.JsonError, match=r"^not JSON: Exceeds the limit"):
        strictjson.loads(b"1" * 5000)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=20))
def test_what_json_dumps_reads_back(value):
    assert strictjson.loads(json.dumps(value).encode()) == value


def test_every_reader_refuses_a_member_named_twice():
    with pytest.raises(EnvelopeFormatError, match=r"envelope\.nonce.*duplicate member"):
        Envelope.decode(b'{"nonce": ["a", "AA"], "nonce": ["a", "AA"]}')
    with pytest.raises(SpecFormatError, match=r"spec\.measurement_id.*duplicate field"):
        MeasurementSpec.decode(b'[{"measurement_id": "a", "measurement_id": "b"}]')
    with pytest.raises(EvidenceFormatError, match=r"tcb_info\.tcbLevels.*duplicate member"):
        parse_signed(b'{"tcbInfo": {"tcbLevels": [], "tcbLevels": [1]}, "signature": "00"}', "tcbInfo", "tcb_info")
