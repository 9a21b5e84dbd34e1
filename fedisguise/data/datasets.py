"""Datasets with local-first resolution, decoded once per machine into a shared copy
(partitions among clients: fedisguise.data.partitions).

Images are float32 tensors N×C×H×W in [0, 1] (disguises need that range), labels int64.
An explicit `data_dir` is the only place a dataset is read from (or downloaded into); without
one, Fashion-MNIST is looked for in Debian's `dataset-fashion-mnist` copy, then downloaded
through torchvision where the network allows; otherwise the error says how to get it.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedisguise.config_sections import parse_source
from fedisguise.data.folder import read_folder
from fedisguise.data.images import ImageDataset, converted, from_uint8
from fedisguise.plugins import choices, registrar

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path(os.environ.get("FEDISGUISE_DATA", Path.home() / ".cache" / "fedisguise"))
SPLITS = ("train", "test")


# ---- Fashion-MNIST from IDX files -------------------------------------------------------
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): the format of (Fashion-)MNIST."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:  # a cut-off or damaged download
        raise ValueError(f"{path}: truncated or corrupt gzip file ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4).astype(np.int64)
    expected = int(np.prod(dims)) + 4 + 4 * ndim
    if len(raw) != expected:
        raise ValueError(f"{path}: truncated IDX file ({len(raw)} bytes, expected {expected})")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(tuple(dims))


def _find_idx(directory: Path, stem: str) -> Path | None:
    for folder in (directory, directory / "FashionMNIST" / "raw"):
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


def _fashion_mnist_from(directory: Path, split: str) -> ImageDataset | None:
    image_stem, label_stem = _IDX_FILES[split]
    image_path, label_path = _find_idx(directory, image_stem), _find_idx(directory, label_stem)
    if image_path is None or label_path is None:
        return None
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{directory}: IDX image/label files do not match")
    return from_uint8(images[:, None], labels, num_classes=10, source=label_path)


def load_folder(split: str, data_dir: str = "", image_size: tuple[int, int] | None = None,
                channels: int = 0, test_fraction: float = 0.0) -> ImageDataset:
    """Your own images (fedisguise.data.folder): `data_dir` in ImageFolder layout, class
    folders alone or a labels.csv, decoded at `image_size` and `channels`."""
    if not data_dir:
        raise ValueError("the folder dataset reads data.data_dir: set it to your image folder")
    found = read_folder(data_dir, split, image_size, channels, test_fraction)
    return from_uint8(found.images, found.labels, len(found.classes), source=data_dir,
                       classes=found.classes)


load_folder.decodes = True  # takes the decoding options itself (read_split)
load_folder.needs_data_dir = True


def load_fashion_mnist(split: str, data_dir: str = "") -> ImageDataset:
    """From `data_dir` when given (or a download into it), never from elsewhere: the results
    record the folder, so it must be the one read. Otherwise Debian's copy, then a download
    into the cache."""
    searched = []
    for directory in [Path(data_dir)] if data_dir else [DEBIAN_FASHION_MNIST]:
        searched.append(str(directory))
        found = _fashion_mnist_from(directory, split)
        if found is not None:
            return found
    root = Path(data_dir) if data_dir else CACHE_DIR
    return _torchvision_download("FashionMNIST", root, split, searched)


def _torchvision_download(name: str, root: Path, split: str, searched: list[str]) -> ImageDataset:
    import torchvision.datasets as tvd

    cls = getattr(tvd, name)
    try:
        if name == "CIFAR10":
            ds = cls(str(root), train=split == "train", download=True)
            images = np.asarray(ds.data).transpose(0, 3, 1, 2)
        else:
            ds = cls(str(root), train=split == "train", download=True)
            images = ds.data.numpy()[:, None]
    except Exception as err:  # torchvision raises URLError, RuntimeError, OSError, ...
        hint = (
            "install Debian's copy with `apt-get install dataset-fashion-mnist` (read when "
            "data.data_dir is empty), or "
            if name == "FashionMNIST" else ""
        )
        raise FileNotFoundError(
            f"{name} ({split}) not found in {searched or [str(root)]} and the download into "
            f"{root} failed ({type(err).__name__}: {err}). To get it: {hint}run once on a "
            f"machine with network access, or set data.data_dir to a folder with the files."
        ) from err
    return from_uint8(images, np.asarray(ds.targets), num_classes=10)


def load_mnist(split: str, data_dir: str = "") -> ImageDataset:
    root = Path(data_dir) if data_dir else CACHE_DIR
    return _torchvision_download("MNIST", root, split, [str(root)])


def load_cifar10(split: str, data_dir: str = "") -> ImageDataset:
    root = Path(data_dir) if data_dir else CACHE_DIR
    return _torchvision_download("CIFAR10", root, split, [str(root)])


def load_synthetic(split: str, data_dir: str = "") -> ImageDataset:
    """Ten learnable classes of 1×28×28 images: a smooth template per class plus noise.

    For tests and smoke runs: fixed contents (independent of the experiment seed), no files.
    """
    num_classes, size = 10, 28
    gen = torch.Generator().manual_seed(1234)
    coarse = torch.rand(num_classes, 1, 7, 7, generator=gen)
    templates = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    n = 2400 if split == "train" else 600
    split_gen = torch.Generator().manual_seed(1 if split == "train" else 2)
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=split_gen)]
    noise = 0.25 * torch.randn(n, 1, size, size, generator=split_gen)
    images = (templates[labels] + noise).clamp_(0.0, 1.0)
    return ImageDataset(images, labels, num_classes)


TORCHVISION_FOLDERS = {"mnist": "MNIST", "cifar10": "cifar-10-batches-py"}
DATASETS: dict[str, Callable[[str, str], ImageDataset]] = {
    "fashion-mnist": load_fashion_mnist,
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "synthetic": load_synthetic,
    "folder": load_folder,
}


DatasetLoader = Callable[[str, str], ImageDataset]


def register_dataset(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    """Add a dataset: `loader(split, data_dir)` returns the whole "train" or "test" split as
    an ImageDataset (float images N×C×H×W in [0, 1], int64 labels, num_classes)."""
    return registrar(DATASETS, "dataset", name)


def load_dataset(name: str, split: str, data_dir: str = "") -> ImageDataset:
    """Load a whole split once per process (clients reuse it across rounds), again when its
    files change (a long-lived worker must not keep serving a replaced dataset). `name` is a
    config's `data.source`: the dataset, with its decoding options where any is set."""
    if parse_source(name)[0] not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid choices: {choices(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid choices: {list(SPLITS)}")
    return _load_split(name, split, data_dir, dataset_fingerprint(name, data_dir))


@functools.lru_cache(maxsize=8)
def _load_split(name: str, split: str, data_dir: str, fingerprint: tuple) -> ImageDataset:
    return read_split(name, split, data_dir)


def read_split(name: str, split: str, data_dir: str = "") -> ImageDataset:
    """The one call of a registered loader: every image the package reads comes through
    here, by way of `load_dataset` (a whole split, kept per process) or the shared decoded
    copy (`split_subset`, `split_labels`). The source's decoding options are the loader's
    where it takes them (`decodes`), else applied here to its images (`converted`)."""
    dataset, options = parse_source(name)
    loader = DATASETS[dataset]
    if getattr(loader, "decodes", False):
        return loader(split, data_dir, **options)
    if options.get("test_fraction"):
        raise ValueError(f"data.test_fraction splits an image folder; {dataset} has its own "
                         f"test split")
    return converted(loader(split, data_dir), options.get("image_size"),
                     options.get("channels", 0))


# Inside fingerprints_fixed: each dataset's walk, by (dataset, data_dir), taken at most once.
_fixed: dict[tuple[str, str], tuple] | None = None


@contextlib.contextmanager
def fingerprints_fixed(known: dict[tuple[str, str], tuple] | None = None) -> Iterator[None]:
    """Inside, a dataset's files are walked at most once, and not at all where `known`
    ({(source, data_dir): fingerprint}) already holds the walk: one client's data
    preparation calls several loaders, each keyed by the files, and a folder of your own
    images may hold 70 000 of them."""
    global _fixed
    before = _fixed
    _fixed = {(parse_source(s)[0], d): fp for (s, d), fp in (known or {}).items()}
    try:
        yield
    finally:
        _fixed = before


def dataset_fingerprint(name: str, data_dir: str = "") -> tuple:
    """(path, size, mtime) of every file the dataset may be read from: what caches of data
    derived from it are keyed by, so a replaced or re-downloaded file is noticed."""
    name = parse_source(name)[0]
    if _fixed is None:
        return _fingerprint(name, data_dir)
    if (name, data_dir) not in _fixed:
        _fixed[(name, data_dir)] = _fingerprint(name, data_dir)
    return _fixed[(name, data_dir)]


def _fingerprint(name: str, data_dir: str) -> tuple:
    if name == "synthetic":
        return ()
    if data_dir:
        folders = [Path(data_dir)]
    elif name == "fashion-mnist":
        folders = [DEBIAN_FASHION_MNIST, CACHE_DIR / "FashionMNIST"]
    elif name in TORCHVISION_FOLDERS:  # where torchvision downloads them
        folders = [CACHE_DIR / TORCHVISION_FOLDERS[name]]
    else:  # a plugin's dataset without data_dir: its files are its own business
        return ()
    found, decoded = [], str(CACHE_DIR / "decoded")  # our copies (data_dir may hold them)
    for folder in folders:
        found += _files(str(folder), skip=decoded) if folder.is_dir() else []
    return tuple(found)


def _files(folder: str, skip: str) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of every file under `folder` but `skip`'s, sorted: os.scandir, 7×
    faster than pathlib's rglob and a stat each on a folder of 12 000 images (38 ms). Like
    rglob, it does not descend into linked folders (a link loop would never end)."""
    found, stack = [], [folder]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if entry.path != skip:
                        stack.append(entry.path)
                elif entry.is_file():
                    st = entry.stat()
                    found.append((entry.path, st.st_size, st.st_mtime_ns))
    return sorted(found)


# ---- one decoded copy per machine, shared by every process that reads it ----------------
@dataclass(frozen=True)
class SharedSplit:
    """A split's pixels as uint8, memory-mapped from a decoded copy on disk: every process
    (each simulated client's Ray actor, each node's worker) shares the same pages, and a
    client turns only its own images into float tensors."""

    images: np.ndarray  # N×C×H×W uint8, read-only memory map
    labels: np.ndarray  # N int64
    num_classes: int
    classes: tuple[str, ...] = ()

    def subset(self, indices: np.ndarray) -> ImageDataset:
        idx = np.asarray(indices, dtype=np.int64)
        pixels = torch.from_numpy(np.ascontiguousarray(self.images[idx]))
        return ImageDataset(pixels.to(torch.float32).div_(255.0),
                            torch.from_numpy(self.labels[idx].copy()), self.num_classes,
                            self.classes)


def shared_split(name: str, split: str, data_dir: str = "") -> SharedSplit | None:
    """The split's decoded copy in $FEDISGUISE_DATA/decoded (written 0600 in a 0700 folder
    on first use: data_dir may hold a client's own images), keyed by its files'
    fingerprint; None for data that are not 8-bit images (synthetic) or when the copy cannot
    be written (callers then load the split whole)."""
    fingerprint = dataset_fingerprint(name, data_dir)
    if parse_source(name)[0] == "synthetic" or not fingerprint:
        return None
    return _shared_split(name, split, data_dir, fingerprint)


@functools.lru_cache(maxsize=8)
def _shared_split(name: str, split: str, data_dir: str, fingerprint: tuple
                  ) -> SharedSplit | None:
    import hashlib

    tag = hashlib.sha256(repr((name, split, data_dir, fingerprint)).encode()).hexdigest()[:20]
    folder = CACHE_DIR / "decoded"
    images_path, labels_path = folder / f"{tag}-images.npy", folder / f"{tag}-labels.npy"
    meta_path = folder / f"{tag}.classes"
    if not (images_path.is_file() and labels_path.is_file() and meta_path.is_file()):
        full = read_split(name, split, data_dir)  # not load_dataset's: no copy kept here
        pixels = full.images.mul(255.0).round_()
        if not torch.equal(pixels.div(255.0), full.images):
            return None  # not 8-bit data: nothing exact to share
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write_private(images_path, pixels.to(torch.uint8).numpy())
            _write_private(labels_path, full.labels.numpy())
            _write_private(meta_path, json.dumps({"num_classes": full.num_classes,
                                                  "classes": list(full.classes)}))
        except OSError:
            return None
    meta = json.loads(meta_path.read_text())  # a bare count in copies written before
    meta = meta if isinstance(meta, dict) else {"num_classes": meta, "classes": []}
    return SharedSplit(np.load(images_path, mmap_mode="r"), np.load(labels_path),
                       int(meta["num_classes"]), tuple(meta["classes"]))


def _write_private(path: Path, value: np.ndarray | str) -> None:
    """Write `path` atomically (a reader never sees half a file), readable by its owner."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        if isinstance(value, str):
            fh.write(value.encode())
        else:
            np.save(fh, value)
    os.replace(tmp, path)


def split_labels(name: str, split: str, data_dir: str = "") -> np.ndarray:
    """A split's labels, without holding its pixels where a shared copy exists."""
    shared = shared_split(name, split, data_dir)
    return shared.labels if shared is not None else load_dataset(name, split, data_dir
                                                                 ).labels.numpy()


def split_subset(name: str, split: str, data_dir: str, indices: np.ndarray) -> ImageDataset:
    """Images `indices` of a split, from the shared copy where one exists."""
    shared = shared_split(name, split, data_dir)
    if shared is not None:
        return shared.subset(indices)
    return load_dataset(name, split, data_dir).subset(indices)


