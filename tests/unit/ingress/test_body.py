from __future__ import annotations

import pytest

from gateway.errors import InvalidRequest
from gateway.ingress.body import decode_json_object

SECRET = "sk-live-SECRETVALUE"


@pytest.mark.parametrize(("raw", "code"), [
    (b"", "invalid_request"),
    (b'{"k": "' + SECRET.encode() + b'"', "invalid_json"),
    (b'{"k": "' + SECRET.encode() + b'\xc3\x28"}', "invalid_encoding"),
    (b'"' + SECRET.encode() + b'"', "invalid_json"),
    (b'{"k": Infinity}', "invalid_json"),
    (b"[" * 50_000, "invalid_json"),
])
def test_errors_never_quote_the_body(raw: bytes, code: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        decode_json_object(raw)
    assert info.value.code == code
    assert SECRET not in info.value.message


def test_valid_object() -> None:
    assert decode_json_object('{"a": "é"}'.encode()) == {"a": "é"}
