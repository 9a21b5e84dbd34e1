"""Certificates and SuperNode keys from fedisguise.deployment.tls, read the way Flower 1.41
reads them."""

import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from flwr.cli.supernode.register import try_load_public_key
from flwr.supercore.primitives.asymmetric import public_key_to_bytes

from fedisguise.deployment import tls


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def handshake(certs: tls.ServerCertificates, server_hostname: str) -> str:
    """A TLS handshake over a socket pair: the server presents server.pem, the client trusts
    only ca.crt and checks the host name. Returns the negotiated protocol."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(certs.cert, certs.key)
    client_ctx = ssl.create_default_context(cafile=str(certs.ca))
    left, right = socket.socketpair()
    errors = []

    def serve():
        try:
            with server_ctx.wrap_socket(left, server_side=True) as conn:
                conn.recv(1)
        except (ssl.SSLError, OSError) as err:
            errors.append(err)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(right, server_hostname=server_hostname) as conn:
            conn.sendall(b"x")
            return conn.version()
    finally:
        thread.join(timeout=10)


def test_certificates_pass_a_real_handshake_for_loopback_and_the_named_host(tmp_path):
    certs = tls.generate_certificates(tmp_path, hosts=("superlink.example.org", "10.1.2.3"))
    assert certs == tls.ServerCertificates.in_dir(tmp_path) and certs.missing() == []
    assert mode(certs.key) == 0o600 and mode(certs.ca) == 0o644
    for host in ("127.0.0.1", "localhost", "superlink.example.org", "10.1.2.3"):
        assert handshake(certs, host).startswith("TLS")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(certs, "elsewhere.example.org")
    server = x509.load_pem_x509_certificate(certs.cert.read_bytes())
    server.verify_directly_issued_by(x509.load_pem_x509_certificate(certs.ca.read_bytes()))


def test_a_certificate_from_another_ca_is_not_trusted(tmp_path):
    ours = tls.generate_certificates(tmp_path / "ours")
    theirs = tls.generate_certificates(tmp_path / "theirs")
    mixed = tls.ServerCertificates(ours.ca, theirs.cert, theirs.key)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(mixed, "127.0.0.1")


def test_supernode_keys_load_as_flower_loads_them(tmp_path):
    private, public = tls.generate_supernode_key(tmp_path / "keys", "client-0")
    assert mode(private) == 0o600 and public.name == "client-0.pub"
    # flower-supernode --auth-supernode-private-key: an OpenSSH EC private key
    key = load_ssh_private_key(private.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    # flwr supernode register: an OpenSSH EC public key on a NIST curve
    assert try_load_public_key(public) == public_key_to_bytes(key.public_key())
    assert b"PRIVATE" not in public.read_bytes()


def test_existing_files_are_never_overwritten(tmp_path):
    private, _ = tls.generate_supernode_key(tmp_path, "n")
    before = private.read_bytes()
    with pytest.raises(FileExistsError, match="not overwriting"):
        tls.generate_supernode_key(tmp_path, "n")
    assert private.read_bytes() == before
    tls.generate_certificates(tmp_path)
    with pytest.raises(FileExistsError, match="ca.crt exists"):
        tls.generate_certificates(tmp_path)


def test_cli_writes_both_kinds_and_prints_no_key_material(tmp_path, capsys):
    assert tls.main(["certs", str(tmp_path / "c"), "--host", "a.example.org"]) == 0
    assert tls.main(["keys", str(tmp_path / "k"), "n0", "n1"]) == 0
    out = capsys.readouterr().out
    assert "BEGIN" not in out and "server.key" in out and "n1.pub" in out
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["n0", "n0.pub", "n1", "n1.pub"]
    assert tls.main(["keys", str(tmp_path / "k"), "n0"]) == 2
    assert tls.main(["keys", str(tmp_path / "k"), "../escape"]) == 2
