"""Everything a run needs that can be checked before any Flower process starts.

`Config.validate` checks what needs nothing but the config; `preflight` checks it against the
machine: the data (an explicit `data.data_dir` is used or is an error), the key files (read
as the nodes will read them), the disguise on a few real images of the configured dataset,
and the results folder. Every failure is a ConfigError that names the config key, so run.py
exits 2 with one line instead of a finished federation that crashed in every client.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from fedisguise.config import Config, ConfigError
from fedisguise.data.datasets import ImageDataset, load_dataset
from fedisguise.data.partitions import server_test_set
from fedisguise.disguise import DISGUISES, DisguiseKey, DisguiseSpec
from fedisguise.disguise.keys import (
    KEY_MAGIC,
    SECRET_MAGIC,
    key_path,
    node_secret_file,
    read_key_file,
)
from fedisguise.resolved import resolve
from fedisguise.validation import disguise_error

PROBE_IMAGES = 4  # real images the disguise is tried on: enough for InstaHide's mixing
# Free space --out must have before a run starts: a run's metrics, per-round CSV, PNG grids
# and captured updates take a few MB; a disk that fills mid-run leaves no true record.
MIN_FREE_BYTES = 50_000_000
KEYGEN = "python -m fedisguise.disguise.keygen --out DIR --clients N"


def preflight(cfg: Config, remote: bool = False) -> None:
    """Check `cfg` against this machine; `remote` (a `--superlink` run): the data and the
    nodes' keys live elsewhere, so only what this machine does is checked."""
    if remote:
        check_remote(cfg)
    else:
        train = check_data(cfg)
        check_model(cfg, train)
        check_keys(cfg)
        check_disguise(cfg, train)
    check_out(cfg)  # last: it creates the folder, which a failed check must not leave behind


def keys_known(cfg: Config, remote: bool) -> bool:
    """Whether the experimenter can rebuild the nodes' disguised data: always for a disguise
    with neither a key nor random draws; otherwise only when the nodes are local, since
    remote SuperNodes may bring their own `disguise-key-file` and keep their draws secret
    beside it (and another key or secret is not the node's disguise)."""
    cls = DISGUISES[cfg.disguise_name]
    return not remote or not (cls.keyed or cls.draws)


def check_remote(cfg: Config) -> None:
    if cfg.attacks and not keys_known(cfg, remote=True):
        raise ConfigError(
            f"attacks: scoring an attack rebuilds the target node's disguised data under its "
            f"key and its own draws secret, and the SuperNodes of a remote federation "
            f"(--superlink) may use their own disguise-key-file and keep their secret beside "
            f"it, which this machine cannot see; run the attacks on a local federation (no "
            f"--superlink) or remove them (disguise {cfg.disguise_name!r})")


def check_data(cfg: Config) -> ImageDataset:
    """Both splits load from where the config says, and every client gets a test shard."""
    d, clients = cfg.data, cfg.experiment.clients
    if d.data_dir and not Path(d.data_dir).is_dir():
        raise ConfigError(f"data.data_dir {d.data_dir!r} does not exist or is not a folder "
                          f"(leave it empty to use the default places)")
    key = "data.data_dir" if d.data_dir else "data.dataset"
    try:
        train = load_dataset(d.source, "train", d.data_dir)
        test = server_test_set(d.source, d.data_dir, d.test_samples, cfg.experiment.seed)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{key} ({d.dataset}): {err}") from None
    if len(train) < clients:
        raise ConfigError(f"experiment.clients must be <= the {len(train)} training images "
                          f"of {d.dataset}, got {clients}")
    if len(test) < clients:
        raise ConfigError(f"data.test_samples: the evaluation set has {len(test)} images, "
                          f"fewer than experiment.clients ({clients}); every client "
                          f"evaluates on its own shard")
    if d.validation:
        check_validation(cfg)
    return train


def check_validation(cfg: Config) -> None:
    """Every client keeps training images after its validation split is held out."""
    from fedisguise.data.partitions import cached_partitions, held_out

    d = cfg.data
    parts = cached_partitions(d.source, d.data_dir, d.partitioner, d.alpha,
                               cfg.experiment.seed, d.union_of or cfg.experiment.clients)
    sizes = [min(len(p), d.train_per_client) if d.train_per_client else len(p) for p in parts]
    for pid, own in enumerate([sum(sizes)] if d.union_of else sizes):
        if held_out(own, d.validation) >= own:
            raise ConfigError(f"data.validation {d.validation} leaves client {pid} no "
                              f"training images (it has {own})")


def check_keys(cfg: Config) -> None:
    """Read every key file the nodes will read, as they will read it (a keyless disguise has
    none: Config.validate refuses them), and each node's draws secret beside it: one that is
    there already is read as the node will read it; where there is none yet, its folder must
    let the node write it."""
    c = cfg.client
    if c.key_file:
        _load("client.key_file", c.key_file)
    if c.key_dir:
        if not Path(c.key_dir).is_dir():
            raise ConfigError(f"client.key_dir {c.key_dir!r} does not exist or is not a "
                              f"folder; make one with `{KEYGEN}`")
        for i in range(cfg.experiment.clients):
            _load("client.key_dir", key_path(c.key_dir, i), f" (node {i}'s key)")
    config_key = "client.key_dir" if c.key_dir else "client.key_file"
    for i in range(cfg.experiment.clients):
        secret = node_secret_file(cfg, i)
        if secret is None:
            break
        if secret.exists():
            _load(config_key, secret, f" (node {i}'s draws secret)", SECRET_MAGIC)
        elif not os.access(secret.parent, os.W_OK | os.X_OK):
            raise ConfigError(f"{config_key}: node {i} writes its draws secret {secret} "
                              f"beside its key on first use, but {secret.parent} is not "
                              f"writable")


def _load(config_key: str, path: str | Path, what: str = "", header: str = KEY_MAGIC
          ) -> None:
    try:
        read_key_file(path, header)  # the read the experimenter's copies then reuse
    except (OSError, ValueError) as err:
        raise ConfigError(f"{config_key}{what}: {err}") from None


def check_model(cfg: Config, train: ImageDataset) -> None:
    """The model takes the data's images: at least its minimum size, and a forward pass of a
    few real ones gives one logit per class (a plugin model that does not is named here)."""
    import torch

    from fedisguise.models import build_model, min_size

    name, (c, h, w) = cfg.model.name, train.image_shape
    min_h, min_w = min_size(name)
    if h < min_h or w < min_w:
        raise ConfigError(f"model.name: {name} needs images of at least {min_h}×{min_w}; "
                          f"{cfg.data.dataset} images are {c}×{h}×{w}")
    probe = train.images[:2]
    try:
        with torch.no_grad():
            logits = build_model(name, c, train.num_classes, (h, w)).eval()(probe)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"model.name: {name} does not take {cfg.data.dataset} images "
                          f"({c}×{h}×{w}): {err}") from None
    if tuple(logits.shape) != (len(probe), train.num_classes):
        raise ConfigError(f"model.name: {name} maps {c}×{h}×{w} images to logits of shape "
                          f"{tuple(logits.shape)}, not (N, {train.num_classes})")


def check_disguise(cfg: Config, train: ImageDataset) -> None:
    """Build the disguise under a throwaway key and apply it to a few real images, for what
    only the data decides: block divisibility, AES block bytes, channels, windows."""
    spec = resolve(cfg).disguise
    if not spec.buildable():
        return
    probe = train.subset(range(min(PROBE_IMAGES, len(train))))
    try:
        _try(spec, probe)
    except ValueError as err:
        c, h, w = probe.image_shape
        raise disguise_error(cfg.disguise, ValueError(
            f"on {cfg.data.dataset} images ({c}×{h}×{w}): {err}"
            f"{sizes_that_work(spec, probe)}")) from None


def _try(spec: DisguiseSpec, probe: ImageDataset) -> None:
    disguise = spec.build(DisguiseKey.generate(seed="preflight") if spec.keyed else None)
    disguise.apply(probe.images, probe.labels)
    disguise.apply_eval(probe.images, probe.labels)


SIZE_PARAMETERS = ("block_size", "window")  # a defence's tile side, which must divide H and W


def sizes_that_work(spec: DisguiseSpec, probe: ImageDataset) -> str:
    """For a defence that tiles the image: the tile sizes that divide H×W and with which it
    does disguise these images (AES also needs whole cipher blocks), for its error."""
    import inspect
    import math

    names = [n for n in SIZE_PARAMETERS
             if n in inspect.signature(spec.defence.__init__).parameters]
    _, h, w = probe.image_shape
    common = math.gcd(h, w)
    hints = []
    for name in names:
        works = []
        for size in (d for d in range(2, common + 1) if common % d == 0):
            try:
                _try(DisguiseSpec.parse({"name": spec.name, **spec.params, name: size}), probe)
            except ValueError:
                continue
            works.append(size)
        hints.append(f"{name} values that work on {h}×{w}: "
                     f"{works if works else 'none (set data.image_size)'}")
    return "".join(f"; {hint}" for hint in hints)


def check_out(cfg: Config) -> None:
    """The results folder exists as a writable folder or is created now; the run's own folder
    is not a file."""
    out = Path(cfg.experiment.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"experiment.out {str(out)!r} is a file, not a folder") from None
    except OSError as err:
        raise ConfigError(f"experiment.out {str(out)!r}: cannot create the results folder "
                          f"({err.strerror or err})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"experiment.out {str(out)!r} is not writable")
    free = shutil.disk_usage(out).free
    if free < MIN_FREE_BYTES:
        raise ConfigError(f"experiment.out {str(out)!r}: {free / 1e6:.1f} MB free, below the "
                          f"{MIN_FREE_BYTES / 1e6:.0f} MB a run's results need; free space "
                          f"or choose another --out")
    run_dir = cfg.run_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"experiment.name: {str(run_dir)!r} is a file, not a folder")
    if run_dir.is_dir() and not os.access(run_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"experiment.out: the run folder {str(run_dir)!r} is not writable")
