"""Bearer tokens (user and admin) and TLS / mutual TLS against a real banditd, with
certificates made here."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import banditd
from banditd import Client, RetryPolicy, Tls

NO_RETRY = RetryPolicy(max_attempts=1)


def test_tokens(start_banditd, tmp_path: Path) -> None:
    """No or an unknown token: UNAUTHENTICATED; a user token decides and rewards but may not
    read models (PERMISSION_DENIED); an admin token may do both."""
    (tmp_path / "tokens").write_text("# user tokens\nuser-secret\n")
    (tmp_path / "admin").write_text("admin-secret\n")
    server = start_banditd(
        {"auth": {"tokens_file": tmp_path / "tokens", "admin_tokens_file": tmp_path / "admin"}}
    )
    with Client(server.target) as anonymous:
        with pytest.raises(banditd.Unauthenticated) as missing:
            anonymous.choose("wheel", [0, 0])
        assert "missing" in missing.value.message
    with Client(server.target, token="guess") as wrong:
        with pytest.raises(banditd.Unauthenticated):
            wrong.choose("wheel", [0, 0])
    with Client(server.target, token="user-secret") as user:
        decision = user.choose("wheel", [0, 0])
        assert not user.reward("wheel", decision.decision_id, 1.0).duplicate
        with pytest.raises(banditd.PermissionDenied) as denied:
            user.get_model("wheel")
        assert "admin" in denied.value.message
    with Client(server.target, token="admin-secret") as admin:
        admin.choose("wheel", [0, 0])
        assert admin.get_model("wheel").rewards == 1
    with pytest.raises(ValueError, match="token"):
        Client(server.target, token=" user-secret")


@dataclass
class Pki:
    ca: bytes
    server: Tuple[bytes, bytes]
    client: Tuple[bytes, bytes]
    rogue_client: Tuple[bytes, bytes]


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: Optional[Tuple[x509.Certificate, ec.EllipticCurvePrivateKey]],
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(signing_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_pki() -> Pki:
    """A CA, a server certificate for 127.0.0.1 and localhost, a client certificate it
    signed, and a client certificate signed by another CA."""
    ca_key, rogue_key = _key(), _key()
    ca = _cert("banditd test CA", ca_key, None, ca=True)
    rogue = _cert("rogue CA", rogue_key, None, ca=True)

    def leaf(name: str, issuer, server: bool = False) -> Tuple[bytes, bytes]:
        key = _key()
        return _pem(_cert(name, key, issuer, server=server)), _pem_key(key)

    return Pki(
        ca=_pem(ca),
        server=leaf("banditd", (ca, ca_key), server=True),
        client=leaf("client", (ca, ca_key)),
        rogue_client=leaf("rogue client", (rogue, rogue_key)),
    )


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def _files(tmp_path: Path, pki: Pki) -> dict:
    (tmp_path / "server.pem").write_bytes(pki.server[0])
    (tmp_path / "server.key").write_bytes(pki.server[1])
    (tmp_path / "ca.pem").write_bytes(pki.ca)
    return {"cert_file": tmp_path / "server.pem", "key_file": tmp_path / "server.key"}


def test_tls(start_banditd, tmp_path: Path, pki: Pki) -> None:
    """TLS with a private CA works; a plaintext client or one that does not trust the CA
    cannot call."""
    server = start_banditd(
        {"tls": _files(tmp_path, pki)}, credentials=grpc.ssl_channel_credentials(pki.ca)
    )
    with Client(server.target, tls=Tls.from_files(ca=tmp_path / "ca.pem")) as bandit:
        decision = bandit.choose("wheel", [0.1, 0.2])
        assert not bandit.reward("wheel", decision.decision_id, 1.0).duplicate
    # The certificate names localhost too.
    localhost = f"localhost:{server.port}"
    with Client(localhost, tls=Tls(root_certificates=pki.ca)) as bandit:
        bandit.choose("wheel", [0.1, 0.2])
    with Client(server.target, retry=NO_RETRY) as plaintext:
        with pytest.raises(banditd.Unavailable):
            plaintext.choose("wheel", [0, 0])
    with Client(server.target, tls=True, retry=NO_RETRY) as untrusting:  # system roots only
        with pytest.raises(banditd.Unavailable):
            untrusting.choose("wheel", [0, 0])


def test_mutual_tls(start_banditd, tmp_path: Path, pki: Pki) -> None:
    """With client_ca_file the server takes only clients with a certificate its CA signed."""
    tls = _files(tmp_path, pki)
    tls["client_ca_file"] = tmp_path / "ca.pem"
    (tmp_path / "client.pem").write_bytes(pki.client[0])
    (tmp_path / "client.key").write_bytes(pki.client[1])
    server = start_banditd(
        {"tls": tls},
        credentials=grpc.ssl_channel_credentials(pki.ca, pki.client[1], pki.client[0]),
    )
    mtls = Tls.from_files(
        ca=tmp_path / "ca.pem", cert=tmp_path / "client.pem", key=tmp_path / "client.key"
    )
    with Client(server.target, tls=mtls) as bandit:
        bandit.choose("wheel", [0.1, 0.2])
    for tls_settings in (
        Tls(root_certificates=pki.ca),
        Tls(pki.ca, certificate_chain=pki.rogue_client[0], private_key=pki.rogue_client[1]),
    ):
        with Client(server.target, tls=tls_settings, retry=NO_RETRY) as refused:
            with pytest.raises(banditd.Unavailable):
                refused.choose("wheel", [0, 0])
    with pytest.raises(ValueError, match="private_key"):
        Client(server.target, tls=Tls(pki.ca, certificate_chain=pki.client[0]))
