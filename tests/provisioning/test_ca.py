"""The fleet CA: certificates chain to the CA with the right names, usages and file modes."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import (
    DNSName,
    IPAddress,
    PolicyBuilder,
    Store,
    VerificationError,
)

from appliance.fleet.signing import parse_public_key, sign_command, verify_command
from appliance.fleet.topics import TopicError
from provisioning.ca import CAError, FleetCA, load_signing_key
from provisioning.files import FileExists

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def ca(tmp_path: Path) -> FleetCA:
    return FleetCA.init(tmp_path / "ca", "shop-eu", broker_names=["mqtt.example.net"], now=NOW)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def cn(cert: x509.Certificate) -> str:
    value = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(value, str)
    return value


def store(ca: FleetCA) -> PolicyBuilder:
    return PolicyBuilder().store(Store([load(ca.ca_cert)])).time(NOW)


def test_init_writes_every_file_with_private_keys_0600(ca: FleetCA) -> None:
    for key in (ca.ca_key, ca.broker_key, ca.signing_key):
        assert mode(key) == 0o600, key
    for public in (ca.ca_cert, ca.broker_cert, ca.signing_pub):
        assert mode(public) == 0o644, public
    assert not list(ca.directory.glob(".*.tmp"))


def test_the_ca_is_a_p256_ca_that_signs_only_leaves(ca: FleetCA) -> None:
    cert = load(ca.ca_cert)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert ca.fleet() == "shop-eu"


def test_the_broker_certificate_verifies_for_every_name(ca: FleetCA) -> None:
    broker = load(ca.broker_cert)
    for name in ("localhost", "mqtt.example.net"):
        store(ca).build_server_verifier(DNSName(name)).verify(broker, [])
    for address in ("127.0.0.1", "::1"):
        verifier = store(ca).build_server_verifier(IPAddress(ipaddress.ip_address(address)))
        verifier.verify(broker, [])
    with pytest.raises(VerificationError):
        store(ca).build_server_verifier(DNSName("evil.example")).verify(broker, [])
    eku = broker.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_a_device_certificate_has_the_device_id_as_cn_and_client_auth(ca: FleetCA) -> None:
    cert_path, key_path = ca.issue_device("kitchen-1", now=NOW)
    cert = load(cert_path)
    assert cn(cert) == "kitchen-1"
    assert mode(key_path) == 0o600
    verified = store(ca).build_client_verifier().verify(cert, [])
    assert verified.chain[-1] == load(ca.ca_cert)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert key.public_key() == cert.public_key()  # type: ignore[union-attr]
    # A device certificate cannot act as a server.
    with pytest.raises(VerificationError):
        store(ca).build_server_verifier(DNSName("kitchen-1")).verify(cert, [])


def test_an_operator_certificate_is_named_operator_name(ca: FleetCA) -> None:
    cert_path, _ = ca.issue_operator("alice", now=NOW)
    assert cn(load(cert_path)) == "operator-alice"
    store(ca).build_client_verifier().verify(load(cert_path), [])
    assert ca.operators() == ["alice"]


def test_a_certificate_from_another_ca_does_not_verify(ca: FleetCA, tmp_path: Path) -> None:
    other = FleetCA.init(tmp_path / "other", "shop-eu", now=NOW)
    cert_path, _ = other.issue_device("kitchen-1", now=NOW)
    with pytest.raises(VerificationError):
        store(ca).build_client_verifier().verify(load(cert_path), [])


@pytest.mark.parametrize("device", ["operator-bob", "Kitchen", "a/b", "+", "-x", ""])
def test_device_ids_that_could_break_the_acl_are_refused(ca: FleetCA, device: str) -> None:
    with pytest.raises((CAError, TopicError)):
        ca.issue_device(device)


def test_nothing_is_overwritten_without_force(ca: FleetCA, tmp_path: Path) -> None:
    before = ca.ca_key.read_bytes()
    with pytest.raises(FileExists):
        FleetCA.init(ca.directory, "shop-eu")
    assert ca.ca_key.read_bytes() == before
    ca.issue_device("kitchen-1")
    with pytest.raises(FileExists):
        ca.issue_device("kitchen-1")
    FleetCA.init(ca.directory, "shop-eu", force=True)
    assert ca.ca_key.read_bytes() != before
    assert mode(ca.ca_key) == 0o600


def test_issue_without_a_ca_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(CAError, match="fleet ca init"):
        FleetCA(tmp_path / "none").issue_device("kitchen-1")


def csr_for(device: str, key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device)])
    algorithm = None if isinstance(key, Ed25519PrivateKey) else hashes.SHA256()
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, algorithm)
    return csr.public_bytes(serialization.Encoding.PEM)


def test_a_device_csr_is_signed_for_the_devices_own_key(ca: FleetCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert_path = ca.sign_device_csr(csr_for("kitchen-2", key), now=NOW)
    cert = load(cert_path)
    assert cn(cert) == "kitchen-2"
    assert cert.public_key() == key.public_key()
    assert not cert_path.with_suffix(".key").exists()
    store(ca).build_client_verifier().verify(cert, [])


@pytest.mark.parametrize(
    "csr",
    [
        b"not a csr",
        csr_for("kitchen-2", Ed25519PrivateKey.generate()),
        csr_for("operator-x", ec.generate_private_key(ec.SECP256R1())),
    ],
)
def test_a_bad_csr_is_refused(ca: FleetCA, csr: bytes) -> None:
    with pytest.raises(CAError):
        ca.sign_device_csr(csr)


def test_the_command_signing_pair_works_with_the_devices_verifier(ca: FleetCA) -> None:
    private = serialization.load_pem_private_key(ca.signing_key.read_bytes(), None)
    assert isinstance(private, Ed25519PrivateKey)
    public = parse_public_key(ca.signing_pub.read_bytes())
    request = sign_command({"v": 1, "id": "c", "cmd": "reboot", "args": {}, "ts": 1}, private)
    assert verify_command(request, [public])


def test_only_an_ed25519_key_signs_commands(ca: FleetCA) -> None:
    assert isinstance(load_signing_key(ca.signing_key), Ed25519PrivateKey)
    with pytest.raises(CAError, match="not an Ed25519"):
        load_signing_key(ca.ca_key)  # the CA's P-256 key
    with pytest.raises(CAError, match="Cannot load"):
        load_signing_key(ca.directory / "missing.key")
