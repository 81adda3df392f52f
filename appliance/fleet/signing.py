"""Ed25519 signatures on fleet commands (DESIGN §9, research fleet-ota §4.4). Pure.

A signed `cmd/req` carries `sig`: standard padded base64 of the Ed25519 signature over
`canonical_bytes()` of the request without its `sig` key. The operator signs with
`sign_command` (`fleet cmd --sign-key`); the device checks with `verify_command` against the
fleet's command public keys. This module never reads key files and never logs keys.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIG_KEY = "sig"


def canonical_bytes(obj: Any) -> bytes:
    """The exact bytes that are signed: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def unsigned(request: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `request` without its `sig` key."""
    return {key: value for key, value in request.items() if key != SIG_KEY}


def sign_command(request: Mapping[str, Any], private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """A copy of `request` with `sig` set to the signature over its canonical bytes."""
    body = unsigned(request)
    signature = private_key.sign(canonical_bytes(body))
    return {**body, SIG_KEY: base64.b64encode(signature).decode("ascii")}


def verify_command(request: Mapping[str, Any], public_keys: Iterable[Ed25519PublicKey]) -> bool:
    """Whether `request["sig"]` is a valid signature by any of `public_keys`."""
    encoded = request.get(SIG_KEY)
    if not isinstance(encoded, str):
        return False
    try:
        signature = base64.b64decode(encoded.encode("ascii"), validate=True)
        message = canonical_bytes(unsigned(request))
    except (binascii.Error, UnicodeEncodeError, ValueError, TypeError):
        return False
    if len(signature) != 64:
        return False
    for key in public_keys:
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        return True
    return False


def parse_public_key(data: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM, DER, raw 32 bytes or their base64 text; else ValueError."""
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        key = serialization.load_pem_public_key(text)
    elif len(data) == 32:
        key = Ed25519PublicKey.from_public_bytes(data)
    else:
        try:
            raw = base64.b64decode(text, validate=True)
        except binascii.Error:
            raw = data
        key = (
            Ed25519PublicKey.from_public_bytes(raw)
            if len(raw) == 32
            else serialization.load_der_public_key(raw)
        )
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"not an Ed25519 public key but {type(key).__name__}")
    return key
