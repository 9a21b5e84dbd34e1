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
from pathlib import Path

import numpy as np
import torch

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
        """Read a key file; a missing file is FileNotFoundError, a damaged one ValueError."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"disguise key file not found: {path}")
        lines = path.read_text(errors="replace").splitlines()
        if len(lines) != 2 or lines[0] != _MAGIC:
            raise ValueError(f"{path}: not a fedisguise key file (expected '{_MAGIC}' header)")
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


def client_key(scope: str, key_file: str, seed: int, partition_id: int,
               node_key_file: str = "") -> DisguiseKey:
    """The key one client disguises with; resolved inside the client process only.

    A SuperNode's own key file (node_config `disguise-key-file`) is used as it is. Otherwise a
    master key (`key_file`, or one derived from the experiment seed so that runs reproduce)
    is the federation's shared key, or the parent of one derived key per client.
    """
    if node_key_file:
        return DisguiseKey.load(node_key_file)
    master = DisguiseKey.load(key_file) if key_file else DisguiseKey.generate(
        seed=f"experiment:{seed}")
    if scope == "federation":
        return master
    if scope == "per-client":
        return master.for_client(partition_id)
    raise ValueError(f"unknown key scope {scope!r}; valid choices: ['federation', 'per-client']")
