"""TLS certificates and SuperNode key pairs for a deployment that leaves the trusted network.

A SuperLink serves its Control, Fleet and Runtime APIs over HTTPS with a server certificate
signed by a CA that every SuperNode and `flwr` trusts (`--root-certificates`, the connection's
`root-certificates`). With SuperNode authentication each SuperNode signs its requests with its
own EC private key, and the SuperLink accepts only public keys registered beforehand with
`flwr supernode register` (Flower 1.41: `flwr/cli/supernode/register.py` reads an OpenSSH
public key; `flwr/supernode/cli/flower_supernode.py` reads an OpenSSH private key).

    python -m fedisguise.deployment.tls certs certs/ --host superlink.example.org --host 10.0.0.5
    python -m fedisguise.deployment.tls keys keys/ client-0 client-1

`certs` writes `ca.crt`, `server.pem` and `server.key` (0600); the CA's own private key is
never written, so nothing else can be signed with it: to add a host, generate a new set.
`keys` writes `<name>` (private, 0600) and `<name>.pub` for each name. Existing files are
never overwritten.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT, SERVER_CERT, SERVER_KEY = "ca.crt", "server.pem", "server.key"
# The SuperLink starts its own SuperExec against 127.0.0.1, so loopback is always named.
LOOPBACK = ("localhost", "127.0.0.1", "::1")
CURVE = ec.SECP384R1  # the curve Flower's own generate_key_pairs() uses


@dataclass(frozen=True)
class ServerCertificates:
    """The three files a TLS SuperLink needs (its --ssl-ca-certfile, --ssl-certfile, and
    --ssl-keyfile)."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def in_dir(cls, directory: str | Path) -> ServerCertificates:
        directory = Path(directory).expanduser().resolve()
        return cls(directory / CA_CERT, directory / SERVER_CERT, directory / SERVER_KEY)

    def missing(self) -> list[str]:
        return [p.name for p in (self.ca, self.cert, self.key) if not p.is_file()]


def generate_certificates(directory: str | Path, hosts: tuple[str, ...] = (),
                          days: int = 365) -> ServerCertificates:
    """A fresh CA and a server certificate for `hosts` plus loopback, written to `directory`."""
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    names = list(dict.fromkeys([*hosts, *LOOPBACK]))
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(CURVE())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedisguise deployment CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA384())
    )

    server_key = ec.generate_private_key(CURVE())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
        .sign(ca_key, hashes.SHA384())
    )

    certificates = ServerCertificates.in_dir(directory)
    certificates.ca.parent.mkdir(parents=True, exist_ok=True)
    _write_new(certificates.ca, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write_new(certificates.cert, server_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write_new(certificates.key, server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()), 0o600)
    return certificates


def generate_supernode_key(directory: str | Path, name: str) -> tuple[Path, Path]:
    """An EC key pair for one SuperNode: `<name>` (OpenSSH private key, 0600, for
    `flower-supernode --auth-supernode-private-key`) and `<name>.pub` (OpenSSH public key,
    for `flwr supernode register`). Returns (private, public) paths."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"a key name must be a plain file name, got {name!r}")
    directory = Path(directory).expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(CURVE())
    private, public = directory / name, directory / f"{name}.pub"
    _write_new(private, key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()), 0o600)
    _write_new(public, key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH)
               + f" {name}\n".encode(), 0o644)
    return private, public


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False,
                         key_encipherment=False, data_encipherment=False,
                         key_agreement=False, key_cert_sign=cert_sign,
                         crl_sign=cert_sign, encipher_only=False, decipher_only=False)


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode` from the start (a private key is never world-readable, not
    even for a moment); an existing file is an error, never overwritten."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise FileExistsError(f"{path} exists; not overwriting it (remove it first)") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)  # the umask may have taken bits away from a public file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedisguise.deployment.tls",
                                     description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    certs = commands.add_parser("certs", help=f"a CA and a SuperLink certificate: {CA_CERT}, "
                                              f"{SERVER_CERT}, {SERVER_KEY}")
    certs.add_argument("directory", type=Path)
    certs.add_argument("--host", action="append", default=[], metavar="NAME_OR_IP",
                       help="a name or address SuperNodes and `flwr` use to reach the "
                            f"SuperLink (repeatable; {', '.join(LOOPBACK)} are always added)")
    certs.add_argument("--days", type=int, default=365, help="validity (default 365)")
    keys = commands.add_parser("keys", help="an EC key pair per SuperNode: NAME and NAME.pub")
    keys.add_argument("directory", type=Path)
    keys.add_argument("names", nargs="+", metavar="NAME")
    args = parser.parse_args(argv)
    try:
        if args.command == "certs":
            written = generate_certificates(args.directory, tuple(args.host), args.days)
            print(f"CA certificate (give to every SuperNode and `flwr`): {written.ca}\n"
                  f"SuperLink certificate: {written.cert}\n"
                  f"SuperLink private key (0600, stays on the SuperLink): {written.key}")
        else:
            for name in args.names:
                private, public = generate_supernode_key(args.directory, name)
                print(f"{name}: private key (0600, stays on its SuperNode) {private}; "
                      f"public key (register it) {public}")
    except (ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
