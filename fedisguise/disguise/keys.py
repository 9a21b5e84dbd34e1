"""Secret keys for keyed disguises.

A `DisguiseKey` is 32 random bytes. Every random choice a keyed disguise makes (a permutation,
a matrix, an AES key, a mask) is drawn from a sub-key derived with HMAC-SHA256 under a purpose
label, so one key fixes the whole disguise and different purposes never share randomness.
Key material never appears in repr, logs or results; files are written 0600.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import shlex
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from fedisguise.config import Config

_MAGIC = "fedisguise-key v1"
_KEY_BYTES = 32


class DisguiseKey:
    __slots__ = ("_material",)

    def __init__(self, material: bytes) -> None:
        if not isinstance(material, bytes) or len(material) != _KEY_BYTES:
            raise ValueError(f"a DisguiseKey is exactly {_KEY_BYTES} bytes")
        self._material = material

    # ---- creation and storage -------------------------------------------------------------
    @classmethod
    def generate(cls, seed: int | str | None = None) -> DisguiseKey:
        """A fresh key from OS randomness, or a reproducible one from `seed` (experiments)."""
        if seed is None:
            return cls(secrets.token_bytes(_KEY_BYTES))
        return cls(hashlib.sha256(f"fedisguise-key-seed:{seed}".encode()).digest())

    def save(self, path: str | Path) -> Path:
        """Write the key to `path`, readable by its owner only (mode 0600)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # also when the file already existed with wider rights
            os.write(fd, f"{_MAGIC}\n{self._material.hex()}\n".encode())
        finally:
            os.close(fd)
        return path

    @classmethod
    def load(cls, path: str | Path) -> DisguiseKey:
        """Read a key file as ssh reads a private key: a missing file is FileNotFoundError,
        one that others may read or write (or this process cannot read) PermissionError,
        a damaged one ValueError; each message names the file and what to do."""
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"{path}: is a directory, not a disguise key file")
        if not path.is_file():
            raise FileNotFoundError(f"disguise key file not found: {path}")
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise PermissionError(
                f"{path}: permissions {mode:04o} are too open: a disguise key must be "
                f"readable by its owner only; run `chmod 600 {shlex.quote(str(path))}`")
        try:
            text = path.read_text(errors="replace")
        except OSError as err:
            raise PermissionError(f"{path}: cannot read the key file "
                                  f"({err.strerror or err})") from None
        return cls._parse(text, path)

    @classmethod
    def _parse(cls, text: str, path: Path) -> DisguiseKey:
        lines = text.splitlines()
        while lines and not lines[-1].strip():  # an editor's trailing newlines are harmless
            lines.pop()
        if not lines or lines[0].rstrip() != _MAGIC:
            raise ValueError(f"{path}: not a fedisguise key file (expected '{_MAGIC}' header)")
        if len(lines) < 2:
            raise ValueError(f"{path}: truncated key file (no key after the header)")
        if len(lines) > 2:  # never echo the line: it may be key material pasted twice
            raise ValueError(f"{path}: unexpected content on line 3 (a key file holds the "
                             f"'{_MAGIC}' header and one line of {2 * _KEY_BYTES} hex digits)")
        body = lines[1].strip()
        if len(body) != 2 * _KEY_BYTES:
            raise ValueError(f"{path}: truncated or malformed key ({len(body)} hex digits, "
                             f"expected {2 * _KEY_BYTES})")
        try:
            return cls(bytes.fromhex(body))
        except ValueError:
            raise ValueError(f"{path}: malformed key (not hexadecimal)") from None

    # ---- derivation -----------------------------------------------------------------------
    def derive(self, label: str) -> DisguiseKey:
        """An independent child key, e.g. one per client for key_scope = 'per-client'."""
        return DisguiseKey(hmac.new(self._material, f"derive:{label}".encode(),
                                    hashlib.sha256).digest())

    def for_client(self, partition_id: int) -> DisguiseKey:
        return self.derive(f"client:{int(partition_id)}")

    def secret_bytes(self, purpose: str, length: int = _KEY_BYTES) -> bytes:
        """`length` pseudorandom bytes for one purpose (HMAC-SHA256 in counter mode)."""
        out, counter = b"", 0
        while len(out) < length:
            out += hmac.new(self._material, f"{purpose}:{counter}".encode(),
                            hashlib.sha256).digest()
            counter += 1
        return out[:length]

    def generator(self, purpose: str, device: torch.device | str = "cpu") -> torch.Generator:
        """A torch.Generator seeded for one purpose: same key + purpose, same stream."""
        seed = int.from_bytes(self.secret_bytes(purpose, 8), "big") >> 1
        return torch.Generator(device=device).manual_seed(seed)

    def numpy_rng(self, purpose: str) -> np.random.Generator:
        """A NumPy PCG64 stream for one purpose: twice as fast as torch's CPU generator for
        bulk noise and random bits, and independent of the device the images are on."""
        return np.random.default_rng(int.from_bytes(self.secret_bytes(purpose, 16), "big"))

    def fingerprint(self) -> str:
        """A one-way tag of this key (HMAC under its own label): equal keys, equal tags, so a
        cache of data disguised under a key can tell a replaced key apart without holding it."""
        return self.secret_bytes("cache-fingerprint", 16).hex()

    # ---- hygiene --------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        return isinstance(other, DisguiseKey) and hmac.compare_digest(self._material,
                                                                      other._material)

    def __hash__(self) -> int:
        return hash(self.secret_bytes("hash", 8))

    def __repr__(self) -> str:
        return "DisguiseKey(<secret>)"

    __str__ = __repr__

    def __reduce__(self):  # noqa: D401 - refuse silent serialisation into messages or results
        raise TypeError("DisguiseKey is not serialisable; save it with key.save(path)")


NODE_KEY_FILE = "disguise-key-file"  # node_config entry: a SuperNode's own key file


def key_path(key_dir: str | Path, partition_id: int) -> Path:
    """Node `partition_id`'s key file in a key folder (`client.key_dir`)."""
    return Path(key_dir) / f"client-{int(partition_id)}.key"


def write_key_dir(path: str | Path, clients: int, seed: int | str | None = None,
                  overwrite: bool = False) -> list[Path]:
    """A key folder for `clients` nodes: client-0.key … client-<clients-1>.key, each 0600 in
    a 0700 folder; fresh OS randomness, or reproducible keys from `seed` (tests only).
    Existing key files are kept (FileExistsError) unless `overwrite`: a lost key is lost data."""
    if clients < 1:
        raise ValueError(f"clients must be >= 1, got {clients}")
    folder = Path(path)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths = [key_path(folder, i) for i in range(clients)]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"key files exist already: {existing}; remove them first")
    for i, file in enumerate(paths):
        DisguiseKey.generate(None if seed is None else f"{seed}:client-{i}").save(file)
    return paths


def node_key(cfg: Config, partition_id: int, node_key_file: str = "") -> DisguiseKey:
    """The key node `partition_id` disguises with: the one rule for the ClientApp (inside the
    node), and for the experimenter's attack suite and privacy figures, so both rebuild a
    node's disguised data under exactly the key that node used. In order:

    1. the SuperNode's own key file (node_config `disguise-key-file`), as it is;
    2. `client.key_dir`: the node's file `<key_dir>/client-<i>.key`;
    3. a master key (`client.key_file`, or one derived from the experiment seed so that runs
       reproduce): the federation's shared key (key_scope `federation`), or the parent of
       one derived key per client (`per-client`).
    """
    c = cfg.client
    if node_key_file:
        return DisguiseKey.load(node_key_file)
    if c.key_dir:
        return DisguiseKey.load(key_path(c.key_dir, partition_id))
    master = DisguiseKey.load(c.key_file) if c.key_file else DisguiseKey.generate(
        seed=f"experiment:{cfg.experiment.seed}")
    if c.key_scope == "federation":
        return master
    if c.key_scope == "per-client":
        return master.for_client(partition_id)
    raise ValueError(f"unknown key scope {c.key_scope!r}; valid choices: "
                     "['federation', 'per-client']")


def key_fingerprint(cfg: Config, partition_id: int, node_key_file: str = "") -> str:
    """The fingerprint of the key node `partition_id` disguises with (see `node_key`)."""
    return node_key(cfg, partition_id, node_key_file).fingerprint()
