import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from appliance.fleet.signing import (
    canonical_bytes,
    parse_public_key,
    sign_command,
    verify_command,
)

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()


def request(**changes: Any) -> dict[str, Any]:
    base = {
        "v": 1,
        "id": "c-1",
        "cmd": "reboot",
        "args": {"delay_s": 5, "why": "grüße"},
        "ts": 1_800_000_000_000,
        "expires": None,
        "sig": None,
    }
    return {**base, **changes}


def test_canonical_bytes_are_sorted_compact_utf8() -> None:
    assert canonical_bytes({"b": 1, "a": {"d": "é", "c": [1, 2]}}) == (
        '{"a":{"c":[1,2],"d":"é"},"b":1}'.encode()
    )


def test_a_signed_request_verifies_and_keeps_its_fields() -> None:
    signed = sign_command(request(), KEY)
    assert {k: v for k, v in signed.items() if k != "sig"} == {
        k: v for k, v in request().items() if k != "sig"
    }
    assert len(base64.b64decode(signed["sig"], validate=True)) == 64
    assert verify_command(signed, [KEY.public_key()])
    assert verify_command(signed, [OTHER.public_key(), KEY.public_key()])


def test_the_signature_covers_the_canonical_bytes_without_sig() -> None:
    signed = sign_command(request(), KEY)
    body = {k: v for k, v in signed.items() if k != "sig"}
    KEY.public_key().verify(base64.b64decode(signed["sig"]), canonical_bytes(body))


def test_a_signature_survives_a_json_round_trip_with_other_key_order() -> None:
    signed = sign_command(request(), KEY)
    reordered = json.loads(json.dumps(dict(reversed(list(signed.items())))))
    assert verify_command(reordered, [KEY.public_key()])


def test_tampering_or_the_wrong_key_fails() -> None:
    signed = sign_command(request(), KEY)
    assert not verify_command({**signed, "cmd": "factory_reset"}, [KEY.public_key()])
    assert not verify_command({**signed, "args": {}}, [KEY.public_key()])
    assert not verify_command(signed, [OTHER.public_key()])
    assert not verify_command(signed, [])


def test_missing_or_garbled_signatures_fail() -> None:
    keys = [KEY.public_key()]
    assert not verify_command(request(), keys)
    assert not verify_command(request(sig=""), keys)
    assert not verify_command(request(sig="not base64!"), keys)
    assert not verify_command(request(sig=base64.b64encode(b"short").decode()), keys)
    assert not verify_command(request(sig=12), keys)
    assert not verify_command(request(sig="é"), keys)


@given(
    st.dictionaries(
        st.text(max_size=8),
        st.recursive(st.none() | st.integers() | st.text(), st.lists, max_leaves=8),
        max_size=6,
    ),
    st.none() | st.text() | st.binary().map(lambda b: base64.b64encode(b).decode()),
)
def test_verification_never_raises(document: dict[str, Any], sig: Any) -> None:
    assert verify_command({**document, "sig": sig}, [KEY.public_key()]) is False


def test_public_keys_parse_from_pem_raw_and_base64() -> None:
    public = KEY.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signed = sign_command(request(), KEY)
    for data in (pem, raw, base64.b64encode(raw) + b"\n"):
        assert verify_command(signed, [parse_public_key(data)])


def test_other_keys_and_garbage_are_not_public_keys() -> None:
    x25519 = X25519PrivateKey.generate().public_key()
    pem = x25519.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    der = KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert verify_command(sign_command(request(), KEY), [parse_public_key(der)])
    for data in (pem, b"not a key", b""):
        with pytest.raises(ValueError):
            parse_public_key(data)
