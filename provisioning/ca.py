"""The fleet CA: broker, device and operator certificates, and the command signing key (DESIGN §11).

ECDSA P-256 with SHA-256 throughout the X.509 side: Mosquitto 2.0 on OpenSSL 3 accepts it at
Debian's default security level, and so does every MQTT 5 broker and the Pi's OpenSSL. The
command signing key is a separate Ed25519 pair (`appliance.fleet.signing`); its private half
never goes to a device or the broker.

Layout of a CA directory (private keys 0600, the rest 0644):

    ca.crt ca.key                    the fleet CA (CN "appliance fleet <id> CA", O = fleet id)
    broker.crt broker.key            the broker's server certificate (serverAuth)
    command-signing.key/.pub         Ed25519, PEM (PKCS#8 / SubjectPublicKeyInfo)
    devices/<id>.crt/.key            CN = device id, clientAuth
    operators/<name>.crt/.key        CN = operator-<name>, clientAuth

Certificate building is pure (keys and `now` in, PEM out); `FleetCA` reads and writes the
directory with blocking I/O, so async callers use a thread. Nothing here logs key material.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.errors import ApplianceError
from appliance.fleet.topics import check_id
from provisioning.broker_config import OPERATOR_PREFIX, operator_username
from provisioning.files import PRIVATE, PUBLIC, refuse_existing, write_atomic

log = logging.getLogger(__name__)

CA_DAYS = 3650
LEAF_DAYS = 825
# Clock skew between the operator's laptop and a freshly booted Pi without RTC.
BACKDATE = dt.timedelta(hours=1)
DEFAULT_BROKER_NAMES = ("localhost", "127.0.0.1", "::1")


class CAError(ApplianceError, ValueError):
    """A CA directory, certificate request or name that cannot be used."""

    code = "ca_invalid"


@dataclass(frozen=True)
class KeyAndCert:
    """A private key and its certificate as PEM bytes."""

    key_pem: bytes
    cert_pem: bytes


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey) -> bytes:
    """PKCS#8 PEM without encryption (the file mode protects it)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str, fleet: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if fleet is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, fleet))
    return x509.Name(attributes)


def make_ca(fleet: str, now: dt.datetime) -> KeyAndCert:
    """A self-signed fleet CA that may sign leaf certificates only (path length 0)."""
    check_id(fleet, "fleet id")
    key = new_key()
    name = _name(f"appliance fleet {fleet} CA", fleet)
    cert = (
        _builder(name, name, key.public_key(), now, CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyAndCert(key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


def sign_leaf(
    ca: KeyAndCert,
    cn: str,
    public_key: ec.EllipticCurvePublicKey,
    now: dt.datetime,
    *,
    server: bool = False,
    names: Sequence[str] = (),
) -> bytes:
    """A leaf certificate for `public_key` (clientAuth, or serverAuth for `names`), as PEM."""
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise CAError("The CA key is not an ECDSA key; was the CA made by `fleet ca init`?")
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _builder(_name(cn), ca_cert.subject, public_key, now, LEAF_DAYS)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    # Clients get their CN as the SAN too: strict RFC 5280 verifiers require a SAN, and
    # brokers that map identities from the SAN (EMQX, HiveMQ) see the same id.
    sans = list(names) if server else list(dict.fromkeys([*names, cn]))
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in sans]), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def issue(
    ca: KeyAndCert, cn: str, now: dt.datetime, *, server: bool = False, names: Sequence[str] = ()
) -> KeyAndCert:
    """A new P-256 key and its leaf certificate signed by `ca`."""
    key = new_key()
    cert = sign_leaf(ca, cn, key.public_key(), now, server=server, names=names)
    return KeyAndCert(key_pem(key), cert)


def sign_device_csr(ca: KeyAndCert, csr_pem: bytes, now: dt.datetime) -> tuple[str, bytes]:
    """The device id and a clientAuth certificate for a device's own CSR (the key stays on it)."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as err:
        raise CAError(f"The certificate request is not PEM: {err}") from err
    if not csr.is_signature_valid:
        raise CAError("The certificate request's signature is invalid; nothing was signed")
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise CAError("The certificate request must carry an ECDSA (P-256) key")
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1 or not isinstance(cns[0].value, str):
        raise CAError("The certificate request must have exactly one CN (the device id)")
    device = check_device_id(cns[0].value)
    return device, sign_leaf(ca, device, public_key, now)


def check_device_id(device: str) -> str:
    """`device` when it is a valid device id that cannot pass for an operator."""
    check_id(device, "device id")
    if device.startswith(OPERATOR_PREFIX):
        raise CAError(f"Device ids must not start with {OPERATOR_PREFIX!r}: {device!r}")
    return device


def make_signing_key() -> tuple[bytes, bytes]:
    """A fresh Ed25519 command signing pair as (private PKCS#8 PEM, public SPKI PEM)."""
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key_pem(key), public


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 command signing key in `path` (PEM); CAError when it is not one."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise CAError(f"Cannot load the command signing key {path}: {err}") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise CAError(f"{path} is not an Ed25519 private key (see `fleet ca init`)")
    return key


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: dt.datetime,
    days: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


class FleetCA:
    """A CA directory on disk (layout in the module docstring). Blocking I/O."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

        self.ca_cert = directory / "ca.crt"
        self.ca_key = directory / "ca.key"
        self.broker_cert = directory / "broker.crt"
        self.broker_key = directory / "broker.key"
        self.signing_key = directory / "command-signing.key"
        self.signing_pub = directory / "command-signing.pub"

    def device_files(self, device: str) -> tuple[Path, Path]:
        """(certificate, key) paths of a device."""
        base = self.directory / "devices" / check_device_id(device)
        return base.with_suffix(".crt"), base.with_suffix(".key")

    def operator_files(self, name: str) -> tuple[Path, Path]:
        """(certificate, key) paths of an operator."""
        base = self.directory / "operators" / check_id(name, "operator name")
        return base.with_suffix(".crt"), base.with_suffix(".key")

    @classmethod
    def init(
        cls,
        directory: Path,
        fleet: str,
        *,
        broker_names: Sequence[str] = (),
        now: dt.datetime | None = None,
        force: bool = False,
    ) -> FleetCA:
        """Create the CA, the broker certificate and the command signing pair in `directory`."""
        ca = cls(directory)
        now = now or _utcnow()
        targets = [ca.ca_cert, ca.ca_key, ca.broker_cert, ca.broker_key]
        refuse_existing([*targets, ca.signing_key, ca.signing_pub], force=force)
        root = make_ca(fleet, now)
        names = list(dict.fromkeys([*DEFAULT_BROKER_NAMES, *broker_names]))
        cn = broker_names[0] if broker_names else "localhost"
        broker = issue(root, cn, now, server=True, names=names)
        signing_private, signing_public = make_signing_key()
        ca._write_pair(ca.ca_cert, ca.ca_key, root, force)
        ca._write_pair(ca.broker_cert, ca.broker_key, broker, force)
        write_atomic(ca.signing_key, signing_private, mode=PRIVATE, force=force)
        write_atomic(ca.signing_pub, signing_public, mode=PUBLIC, force=force)
        log.info("Fleet %s CA created in %s", fleet, directory)
        return ca

    def load(self) -> KeyAndCert:
        """The CA's key and certificate; CAError when the directory holds no CA."""
        try:
            return KeyAndCert(self.ca_key.read_bytes(), self.ca_cert.read_bytes())
        except FileNotFoundError as err:
            raise CAError(
                f"No fleet CA in {self.directory}; create one with `fleet ca init`"
            ) from err

    def fleet(self) -> str:
        """The fleet id recorded in the CA certificate (its O attribute)."""
        cert = x509.load_pem_x509_certificate(self.load().cert_pem)
        values = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        if not values or not isinstance(values[0].value, str):
            raise CAError(f"{self.ca_cert} names no fleet; pass --fleet")
        return values[0].value

    def issue_device(
        self, device: str, *, now: dt.datetime | None = None, force: bool = False
    ) -> tuple[Path, Path]:
        """A new key and clientAuth certificate with CN = `device`; returns their paths."""
        cert_path, key_path = self.device_files(device)
        refuse_existing([cert_path, key_path], force=force)
        self._write_pair(cert_path, key_path, issue(self.load(), device, now or _utcnow()), force)
        log.info("Issued a certificate for device %s", device)
        return cert_path, key_path

    def sign_device_csr(
        self, csr_pem: bytes, *, now: dt.datetime | None = None, force: bool = False
    ) -> Path:
        """Sign a device's CSR; the certificate goes to devices/<id>.crt, the key stays put."""
        device, cert = sign_device_csr(self.load(), csr_pem, now or _utcnow())
        cert_path, _ = self.device_files(device)
        write_atomic(cert_path, cert, mode=PUBLIC, force=force)
        log.info("Signed the certificate request of device %s", device)
        return cert_path

    def issue_operator(
        self, name: str, *, now: dt.datetime | None = None, force: bool = False
    ) -> tuple[Path, Path]:
        """A new key and clientAuth certificate with CN = operator-<name>."""
        cert_path, key_path = self.operator_files(name)
        refuse_existing([cert_path, key_path], force=force)
        pair = issue(self.load(), operator_username(name), now or _utcnow())
        self._write_pair(cert_path, key_path, pair, force)
        log.info("Issued a certificate for operator %s", name)
        return cert_path, key_path

    def operators(self) -> list[str]:
        """The names of the operators issued from this CA, sorted."""
        folder = self.directory / "operators"
        return sorted(p.stem for p in folder.glob("*.crt")) if folder.is_dir() else []

    @staticmethod
    def _write_pair(cert_path: Path, key_path: Path, pair: KeyAndCert, force: bool) -> None:
        # The key first: a certificate without its key is useless, the reverse is harmless.
        write_atomic(key_path, pair.key_pem, mode=PRIVATE, force=force)
        write_atomic(cert_path, pair.cert_pem, mode=PUBLIC, force=force)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
