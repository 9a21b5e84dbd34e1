"""Secret keys for keyed disguises, and each node's own secret for its random draws.

A `DisguiseKey` is 32 random bytes. A disguise's keyed transform (a permutation, a matrix, an
AES key) is drawn from a sub-key derived with HMAC-SHA256 under a purpose label, so one key
fixes the transform and different purposes never share randomness. Under a federation key
every node holds that key, so nothing a node must keep from the others comes from it: its
random draws (noise, mixing weights and partners, sign masks, per-image shuffles) come from
its node secret (`node_secret`), which no other node and not the server can recompute.
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

KEY_MAGIC = "fedisguise-key v1"
SECRET_MAGIC = "fedisguise-node-secret v1"  # a node's draws secret: never a disguise key
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

    def save(self, path: str | Path, header: str = KEY_MAGIC) -> Path:
        """Write the key to `path`, readable by its owner only (mode 0600); `header` names
        what it is (a disguise key, or with SECRET_MAGIC a node's draws secret)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # also when the file already existed with wider rights
            os.write(fd, f"{header}\n{self._material.hex()}\n".encode())
        finally:
            os.close(fd)
        return path

    @classmethod
    def load(cls, path: str | Path, header: str = KEY_MAGIC) -> DisguiseKey:
        """Read a key file as ssh reads a private key: a missing file is FileNotFoundError,
        one that others may read or write (or this process cannot read) PermissionError,
        a damaged one ValueError; each message names the file and what to do."""
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"{path}: is a directory, not a disguise key file")
        if path.exists() and not path.is_file():  # a FIFO would block the read for ever
            raise ValueError(f"{path}: not a regular file (a FIFO, socket or device); a "
                             f"disguise key is a file")
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
        return cls._parse(text, path, header)

    @classmethod
    def _parse(cls, text: str, path: Path, header: str = KEY_MAGIC) -> DisguiseKey:
        lines = text.splitlines()
        while lines and not lines[-1].strip():  # an editor's trailing newlines are harmless
            lines.pop()
        what = "node secret" if header == SECRET_MAGIC else "key"
        if not lines or lines[0].rstrip() != header:
            raise ValueError(f"{path}: not a fedisguise {what} file (expected '{header}' "
                             f"header)")
        if len(lines) < 2:
            raise ValueError(f"{path}: truncated {what} file (nothing after the header)")
        if len(lines) > 2:  # never echo the line: it may be key material pasted twice
            raise ValueError(f"{path}: unexpected content on line 3 (a {what} file holds the "
                             f"'{header}' header and one line of {2 * _KEY_BYTES} hex digits)")
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

# Key files read once per process: a node's key and its draws secret are read on first use
# and again only when the file changes (its inode, size, mtime or mode, taken by stat, which
# reads no key), so a key rewritten in place, or made readable by others, is still noticed.
_READ: dict[tuple[str, str], tuple[tuple[int, int, int, int], DisguiseKey]] = {}


def read_key_file(path: str | Path, header: str = KEY_MAGIC) -> DisguiseKey:
    """`DisguiseKey.load(path, header)`, read from disk once per process while the file is
    unchanged; every error is `load`'s, for a file that is missing, too open or damaged."""
    try:
        st = os.stat(path)
    except OSError:
        return DisguiseKey.load(path, header)  # its own error, naming the file
    signature = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode)
    entry = (str(path), header)
    cached = _READ.get(entry)
    if cached is not None and cached[0] == signature:
        return cached[1]
    key = DisguiseKey.load(path, header)
    _READ[entry] = (signature, key)
    return key


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
        return read_key_file(node_key_file)
    if c.key_dir:
        return read_key_file(key_path(c.key_dir, partition_id))
    master = read_key_file(c.key_file) if c.key_file else DisguiseKey.generate(
        seed=f"experiment:{cfg.experiment.seed}")
    if c.key_scope == "federation":
        return master
    if c.key_scope == "per-client":
        return master.for_client(partition_id)
    raise ValueError(f"unknown key scope {c.key_scope!r}; valid choices: "
                     "['federation', 'per-client']")


def secret_path(key_file: str | Path, partition_id: int) -> Path:
    """Where node `partition_id` keeps its draws secret: beside the key file it reads, named
    for the node (nodes of one machine may share a federation key file)."""
    key_file = Path(key_file)
    return key_file.with_name(f"{key_file.stem}.node-{int(partition_id)}.secret")


def node_secret_file(cfg: Config, partition_id: int, node_key_file: str = "") -> Path | None:
    """The file of node `partition_id`'s draws secret, beside the key file `node_key` reads;
    None where the key is derived from the experiment seed (then so is the secret)."""
    c = cfg.client
    key_file = node_key_file or (key_path(c.key_dir, partition_id) if c.key_dir else
                                 c.key_file)
    return secret_path(key_file, partition_id) if key_file else None


def node_secret(cfg: Config, partition_id: int, node_key_file: str = "",
                create: bool = False) -> DisguiseKey:
    """The secret node `partition_id` draws its random numbers from: the RMT noise, InstaHide's
    weights, partners and masks, every per-image or per-batch shuffle. The one rule for the
    node (`create`: the node itself, which makes it on first use) and for the experimenter
    of a local run (attack ground truth, privacy figures), so both draw the same numbers.

    - A derived-key experiment (no key file): derived from the experiment seed and the node,
      so runs reproduce; like the derived key, for experiments only.
    - With a key file: 32 bytes of OS entropy that the node writes once, 0600, beside its
      key (`secret_path`) and never sends. Nobody else, not the server and not another node
      holding the federation key, can recompute it. Without `create` a missing file is an
      error: only the node makes its secret.
    """
    path = node_secret_file(cfg, partition_id, node_key_file)
    if path is None:
        return DisguiseKey.generate(
            seed=f"experiment:{cfg.experiment.seed}:node-secret:{int(partition_id)}")
    if create:
        return load_or_create_secret(path)
    if not path.exists():
        raise FileNotFoundError(
            f"node {partition_id}'s draws secret {path} does not exist: a node writes it beside "
            f"its key file the first time it disguises, so this node never disguised here")
    return read_key_file(path, SECRET_MAGIC)


def load_or_create_secret(path: str | Path) -> DisguiseKey:
    """The node secret at `path`, made from OS entropy (0600) if there is none yet. The new
    file appears whole or not at all (written aside, then hard-linked into place), so two
    processes of one node never read a half-written secret or replace each other's."""
    path = Path(path)
    if not path.exists():
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise PermissionError(f"cannot write the node secret {path}: its folder "
                                  f"{path.parent} is not writable by this user")
        aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        DisguiseKey.generate().save(aside, SECRET_MAGIC)
        try:
            os.link(aside, path)
        except FileExistsError:
            pass  # another process of this node made it first: use theirs
        finally:
            aside.unlink()
    return read_key_file(path, SECRET_MAGIC)
