"""Datasets with local-first resolution, and deterministic partitioners.

Images are float32 tensors N×C×H×W in [0, 1] (disguises need that range), labels int64.
An explicit `data_dir` is the only place a dataset is read from (or downloaded into); without
one, Fashion-MNIST is looked for in Debian's `dataset-fashion-mnist` copy, then downloaded
through torchvision where the network allows; otherwise the error says how to get it.
"""

from __future__ import annotations

import functools
import gzip
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedisguise.plugins import choices, registrar

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path(os.environ.get("FEDISGUISE_DATA", Path.home() / ".cache" / "fedisguise"))
SPLITS = ("train", "test")


@dataclass(frozen=True)
class ImageDataset:
    images: torch.Tensor  # N×C×H×W float32 in [0, 1]
    labels: torch.Tensor  # N int64
    num_classes: int

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, indices: np.ndarray | torch.Tensor) -> ImageDataset:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return ImageDataset(self.images[idx], self.labels[idx], self.num_classes)


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
    return _from_uint8(images[:, None], labels, num_classes=10, source=label_path)


def _from_uint8(images: np.ndarray, labels: np.ndarray, num_classes: int,
                source: Path | str = "labels") -> ImageDataset:
    """Images in [0, 1] and int64 labels; labels outside [0, num_classes) are an error here,
    not an index error in every client's loss after Flower has started."""
    labels = np.asarray(labels)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise ValueError(f"{source}: {int(bad.sum())} labels outside [0, {num_classes}) "
                         f"(e.g. {int(labels[bad][0])} at index {int(np.flatnonzero(bad)[0])})")
    tensor = torch.from_numpy(np.array(images, dtype=np.float32)).div_(255.0)
    return ImageDataset(tensor, torch.from_numpy(np.asarray(labels, dtype=np.int64)), num_classes)


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
    return _from_uint8(images, np.asarray(ds.targets), num_classes=10)


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
}


DatasetLoader = Callable[[str, str], ImageDataset]


def register_dataset(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    """Add a dataset: `loader(split, data_dir)` returns the whole "train" or "test" split as
    an ImageDataset (float images N×C×H×W in [0, 1], int64 labels, num_classes)."""
    return registrar(DATASETS, "dataset", name)


def load_dataset(name: str, split: str, data_dir: str = "") -> ImageDataset:
    """Load a whole split once per process (clients reuse it across rounds), again when its
    files change (a long-lived worker must not keep serving a replaced dataset)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid choices: {choices(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid choices: {list(SPLITS)}")
    return _load_split(name, split, data_dir, dataset_fingerprint(name, data_dir))


@functools.lru_cache(maxsize=8)
def _load_split(name: str, split: str, data_dir: str, fingerprint: tuple) -> ImageDataset:
    return DATASETS[name](split, data_dir)


def dataset_fingerprint(name: str, data_dir: str = "") -> tuple:
    """(path, size, mtime) of every file the dataset may be read from: what caches of data
    derived from it are keyed by, so a replaced or re-downloaded file is noticed."""
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
    found, decoded = [], CACHE_DIR / "decoded"  # our own copies (data_dir may hold them)
    for folder in folders:
        for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if path.is_file() and decoded not in path.parents:
                st = path.stat()
                found.append((str(path), st.st_size, st.st_mtime_ns))
    return tuple(found)


# ---- one decoded copy per machine, shared by every process that reads it ----------------
@dataclass(frozen=True)
class SharedSplit:
    """A split's pixels as uint8, memory-mapped from a decoded copy on disk: every process
    (each simulated client's Ray actor, each node's worker) shares the same pages, and a
    client turns only its own images into float tensors."""

    images: np.ndarray  # N×C×H×W uint8, read-only memory map
    labels: np.ndarray  # N int64
    num_classes: int

    def subset(self, indices: np.ndarray) -> ImageDataset:
        idx = np.asarray(indices, dtype=np.int64)
        pixels = torch.from_numpy(np.ascontiguousarray(self.images[idx]))
        return ImageDataset(pixels.to(torch.float32).div_(255.0),
                            torch.from_numpy(self.labels[idx].copy()), self.num_classes)


def shared_split(name: str, split: str, data_dir: str = "") -> SharedSplit | None:
    """The split's decoded copy in $FEDISGUISE_DATA/decoded (written 0600 in a 0700 folder
    on first use: data_dir may hold a client's own images), keyed by its files'
    fingerprint; None for data that are not 8-bit images (synthetic) or when the copy cannot
    be written (callers then load the split whole)."""
    fingerprint = dataset_fingerprint(name, data_dir)
    if name == "synthetic" or not fingerprint:
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
        full = DATASETS[name](split, data_dir)  # not load_dataset's: no copy kept here
        pixels = full.images.mul(255.0).round_()
        if not torch.equal(pixels.div(255.0), full.images):
            return None  # not 8-bit data: nothing exact to share
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write_private(images_path, pixels.to(torch.uint8).numpy())
            _write_private(labels_path, full.labels.numpy())
            _write_private(meta_path, str(full.num_classes))
        except OSError:
            return None
    return SharedSplit(np.load(images_path, mmap_mode="r"), np.load(labels_path),
                       int(meta_path.read_text()))


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


# ---- partitioners -----------------------------------------------------------------------
def partition_iid(labels: np.ndarray, num_partitions: int, seed: int, alpha: float = 0.0
                  ) -> list[np.ndarray]:
    """Shuffle once with the seed, then cut into near-equal parts."""
    order = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, num_partitions)]


def partition_dirichlet(labels: np.ndarray, num_partitions: int, seed: int, alpha: float,
                        min_size: int = 10, max_tries: int = 100) -> list[np.ndarray]:
    """Label skew: each class is split over partitions by proportions ~ Dir(alpha).

    Redraws (deterministically) until every partition holds at least `min_size` samples,
    as Flower Datasets' DirichletPartitioner does, so no client ends up empty.
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    min_size = min(min_size, len(labels) // num_partitions)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
        for cls in classes:
            idx = rng.permutation(np.flatnonzero(labels == cls))
            proportions = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(idx)).astype(int)
            for pid, chunk in enumerate(np.split(idx, cuts)):
                parts[pid].append(chunk)
        result = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in result) >= min_size:
            return result
    raise ValueError(
        f"dirichlet partitioner: could not give each of {num_partitions} partitions "
        f">= {min_size} samples with alpha={alpha} in {max_tries} draws; raise alpha"
    )


PARTITIONERS: dict[str, Callable[..., list[np.ndarray]]] = {
    "iid": partition_iid,
    "dirichlet": partition_dirichlet,
}


def partition_indices(labels: torch.Tensor | np.ndarray, partitioner: str, num_partitions: int,
                      seed: int, alpha: float = 0.5) -> list[np.ndarray]:
    """Indices of every partition; each sample lands in exactly one."""
    if partitioner not in PARTITIONERS:
        raise ValueError(f"unknown partitioner {partitioner!r}; valid: {sorted(PARTITIONERS)}")
    labels = np.asarray(labels)
    if not 1 <= num_partitions <= len(labels):
        raise ValueError(f"num_partitions must be in [1, {len(labels)}], got {num_partitions}")
    return PARTITIONERS[partitioner](labels, num_partitions, seed, alpha)


@dataclass(frozen=True)
class ClientData:
    train: ImageDataset  # the client's partition of the training split
    test: ImageDataset  # the client's IID shard of the evaluation set (disguised like train)
    validation: ImageDataset | None = None  # held out of its own training images (tuning)


def client_data(dataset: str, data_dir: str, partitioner: str, alpha: float, seed: int,
                partition_id: int, num_partitions: int, train_per_client: int = 0,
                test_samples: int = 0, validation: float = 0.0, union_of: int = 0
                ) -> ClientData:
    """One client's share of the training split, and its shard of the evaluation set.

    With `validation` > 0 that fraction of the client's own images (at least one) is held
    out of its training data as its validation split, for choosing hyper-parameters
    without looking at the test set. With `union_of` = N (and one partition) the client holds
    the union of what N clients would hold: centralised training on the federation's images.

    The shards of all clients together are exactly the server's evaluation set, so clients
    that evaluate on disguised shards measure the same images the server holds in plain.
    """
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} outside [0, {num_partitions})")
    own = train_indices(dataset, data_dir, partitioner, alpha, seed, partition_id,
                        num_partitions, train_per_client, union_of)
    test_indices = server_test_indices(dataset, data_dir, test_samples, seed)
    shard = test_indices[partition_iid(split_labels(dataset, "test", data_dir)[test_indices],
                                       num_partitions, seed)[partition_id]]
    held = held_out(len(own), validation)
    if held >= len(own):
        raise ValueError(f"data.validation {validation} leaves client {partition_id} no "
                         f"training images (it has {len(own)})")
    return ClientData(
        train=split_subset(dataset, "train", data_dir, own[held:]),
        test=split_subset(dataset, "test", data_dir, shard),
        validation=split_subset(dataset, "train", data_dir, own[:held]) if held else None)


def held_out(images: int, validation: float) -> int:
    """How many of a client's `images` its validation split holds: that fraction, at least
    one when the fraction is > 0."""
    return max(1, round(validation * images)) if validation > 0 else 0


def train_indices(dataset: str, data_dir: str, partitioner: str, alpha: float, seed: int,
                  partition_id: int, num_partitions: int, train_per_client: int = 0,
                  union_of: int = 0) -> np.ndarray:
    """The training-split indices a client holds, in a seeded order; with `union_of` = N,
    those of all N clients of the federation it stands for (see `client_data`)."""
    if union_of:
        if num_partitions != 1:
            raise ValueError(f"union_of = {union_of} is one client holding the federation's "
                             f"images; it needs 1 partition, got {num_partitions}")
        parts = _cached_partitions(dataset, data_dir, partitioner, alpha, seed, union_of)
        union = np.concatenate([_own_indices(part, seed, pid, train_per_client)
                                for pid, part in enumerate(parts)])
        return np.random.default_rng([seed, union_of]).permutation(union)
    parts = _cached_partitions(dataset, data_dir, partitioner, alpha, seed, num_partitions)
    return _own_indices(parts[partition_id], seed, partition_id, train_per_client)


def unassigned_train_indices(dataset: str, data_dir: str, partitioner: str, alpha: float,
                             seed: int, num_partitions: int,
                             train_per_client: int = 0, union_of: int = 0) -> np.ndarray:
    """Training-split indices no client trains on (what a coordinator may use without
    touching client data); empty when the clients hold the whole split. One client holding
    the union of N clients' images leaves what those N leave."""
    n = len(split_labels(dataset, "train", data_dir))
    num_partitions = union_of or num_partitions
    parts = _cached_partitions(dataset, data_dir, partitioner, alpha, seed, num_partitions)
    used = np.zeros(n, dtype=bool)
    for pid, part in enumerate(parts):
        used[_own_indices(part, seed, pid, train_per_client)] = True
    return np.flatnonzero(~used)


def _own_indices(part: np.ndarray, seed: int, partition_id: int,
                 train_per_client: int) -> np.ndarray:
    """The training indices a client keeps from its partition: a seeded shuffle, cut to
    `train_per_client` when set (0 keeps all)."""
    own = np.random.default_rng([seed, partition_id]).permutation(part)
    return own[:train_per_client] if train_per_client else own


@functools.lru_cache(maxsize=8)
def _cached_partitions(dataset: str, data_dir: str, partitioner: str, alpha: float, seed: int,
                       num_partitions: int) -> list[np.ndarray]:
    labels = split_labels(dataset, "train", data_dir)
    return partition_indices(labels, partitioner, num_partitions, seed, alpha)


def server_test_set(dataset: str, data_dir: str, test_samples: int, seed: int) -> ImageDataset:
    """The server's evaluation set: the whole test split, or a seeded subset of it."""
    full = load_dataset(dataset, "test", data_dir)
    if not test_samples or test_samples >= len(full):
        return full
    return full.subset(server_test_indices(dataset, data_dir, test_samples, seed))


def server_test_indices(dataset: str, data_dir: str, test_samples: int, seed: int
                        ) -> np.ndarray:
    """Which test-split images the server's evaluation set holds (sorted)."""
    n = len(split_labels(dataset, "test", data_dir))
    if not test_samples or test_samples >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:test_samples])
