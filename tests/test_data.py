import gzip
import os

import numpy as np
import pytest
import torch

from fedisguise.data import datasets as data
from fedisguise.data.datasets import load_dataset, read_idx
from fedisguise.data.partitions import client_data, partition_indices
from tests.conftest import DEBIAN_FMNIST


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet"])
def test_partitions_cover_every_sample_exactly_once(partitioner):
    labels = np.repeat(np.arange(10), 100)
    parts = partition_indices(labels, partitioner, 7, seed=3, alpha=0.5)
    assert len(parts) == 7
    joined = np.concatenate(parts)
    assert len(joined) == len(labels)
    assert np.array_equal(np.sort(joined), np.arange(len(labels)))


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet"])
def test_partitions_are_deterministic_per_seed(partitioner):
    labels = np.repeat(np.arange(10), 60)
    a = partition_indices(labels, partitioner, 4, seed=11, alpha=0.3)
    b = partition_indices(labels, partitioner, 4, seed=11, alpha=0.3)
    c = partition_indices(labels, partitioner, 4, seed=12, alpha=0.3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_iid_sizes_are_balanced_and_dirichlet_is_label_skewed():
    labels = np.repeat(np.arange(10), 200)
    iid = partition_indices(labels, "iid", 4, seed=0)
    assert {len(p) for p in iid} == {500}
    skewed = partition_indices(labels, "dirichlet", 4, seed=0, alpha=0.1)
    # With alpha = 0.1 a partition is dominated by few classes; IID ones hold ~10% each.
    top_share = max(np.bincount(labels[p], minlength=10).max() / len(p) for p in skewed)
    iid_share = max(np.bincount(labels[p], minlength=10).max() / len(p) for p in iid)
    assert top_share > 0.4 > iid_share


def test_bad_partition_arguments_raise():
    labels = np.zeros(10, dtype=int)
    with pytest.raises(ValueError, match="unknown partitioner 'shards'.*dirichlet"):
        partition_indices(labels, "shards", 2, seed=0)
    with pytest.raises(ValueError, match="num_partitions"):
        partition_indices(labels, "iid", 11, seed=0)


def test_client_data_is_disjoint_and_test_shards_cover_the_evaluation_set():
    parts = [client_data("synthetic", "", "iid", 0.5, 0, pid, 3, test_samples=300)
             for pid in range(3)]
    rows = lambda d: {tuple(x.flatten()[:40].tolist()) for x in d.images}  # noqa: E731
    assert not rows(parts[0].train) & rows(parts[1].train)
    shards = [rows(p.test) for p in parts]
    assert sum(len(s) for s in shards) == 300 == len(set().union(*shards))
    with pytest.raises(ValueError, match="partition-id 3 outside"):
        client_data("synthetic", "", "iid", 0.5, 0, 3, 3)


def test_a_validation_split_is_held_out_of_the_clients_own_training_images():
    full = client_data("synthetic", "", "iid", 0.5, 0, 1, 3, train_per_client=200)
    held = client_data("synthetic", "", "iid", 0.5, 0, 1, 3, train_per_client=200,
                       validation=0.1)
    rows = lambda d: {tuple(x.flatten()[:40].tolist()) for x in d.images}  # noqa: E731
    assert full.validation is None and len(held.validation) == 20 and len(held.train) == 180
    assert not rows(held.train) & rows(held.validation)  # never trained on
    assert rows(held.train) | rows(held.validation) == rows(full.train)  # its own images
    assert rows(held.test) == rows(full.test)  # the test shard is not touched
    tiny = client_data("synthetic", "", "iid", 0.5, 0, 1, 3, train_per_client=5,
                       validation=0.01)
    assert len(tiny.validation) == 1  # any fraction > 0 holds out at least one image
    with pytest.raises(ValueError, match="no training images"):
        client_data("synthetic", "", "iid", 0.5, 0, 1, 3, train_per_client=1, validation=0.4)


def test_synthetic_images_are_float_in_unit_range():
    ds = load_dataset("synthetic", "train")
    assert ds.images.dtype == torch.float32 and ds.images.shape[1:] == (1, 28, 28)
    assert 0 <= ds.images.min() and ds.images.max() <= 1
    assert set(ds.labels.unique().tolist()) == set(range(10))


@pytest.mark.skipif(not os.path.exists(DEBIAN_FMNIST), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_loads_from_debian_copy():
    train = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion-mnist", "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert np.bincount(train.labels.numpy()).tolist() == [6000] * 10
    assert 0.2 < train.images.mean().item() < 0.4  # Fashion-MNIST's mean pixel is ~0.286


def test_fashion_mnist_prefers_data_dir(tmp_path):
    images = (np.arange(3 * 28 * 28) % 256).astype(np.uint8).reshape(3, 28, 28)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([1, 2, 3], dtype=np.uint8))
    ds = data.load_fashion_mnist("test", str(tmp_path))
    assert ds.labels.tolist() == [1, 2, 3]
    assert torch.allclose(ds.images[0, 0], torch.from_numpy(images[0]).float() / 255)


def test_missing_fashion_mnist_offline_says_how_to_get_it(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.load_fashion_mnist("train", str(tmp_path / "empty"))


def test_truncated_idx_file_is_an_error(tmp_path):
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + bytes(5))
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path)


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.tobytes())


@pytest.mark.skipif(not os.path.exists(DEBIAN_FMNIST), reason="dataset-fashion-mnist not installed")
def test_an_explicit_data_dir_is_used_or_an_error_never_the_debian_copy(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(FileNotFoundError, match=f"not found in \\['{tmp_path}'\\]"):
        data.load_fashion_mnist("test", str(tmp_path))  # Debian's copy exists: not read


def test_clients_read_a_private_shared_copy_and_get_the_same_images(tmp_path, monkeypatch):
    """Simulated clients share one decoded, memory-mapped copy of the split (0600: data_dir
    may hold a client's own images) instead of each holding the whole split in floats; what
    a client gets is exactly what the whole-split path gives."""
    monkeypatch.setattr(data, "CACHE_DIR", tmp_path / "cache")
    folder = tmp_path / "fmnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for stem, n in (("train", 50), ("t10k", 20)):
        _write_idx(folder / f"{stem}-images-idx3-ubyte.gz",
                   rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    shared = data.shared_split("fashion-mnist", "train", str(folder))
    assert isinstance(shared.images, np.memmap) and shared.images.dtype == np.uint8
    files = list((tmp_path / "cache" / "decoded").iterdir())
    assert files and all(f.stat().st_mode & 0o077 == 0 for f in files)
    assert (tmp_path / "cache" / "decoded").stat().st_mode & 0o077 == 0
    whole = load_dataset("fashion-mnist", "train", str(folder))
    picked = np.array([3, 7, 41])
    got = data.split_subset("fashion-mnist", "train", str(folder), picked)
    assert torch.equal(got.images, whole.subset(picked).images)
    assert torch.equal(got.labels, whole.subset(picked).labels)
    assert data.shared_split("synthetic", "train") is None  # not 8-bit images: loaded whole


def test_the_shared_copy_does_not_count_as_a_change_of_the_data_it_copies(tmp_path, monkeypatch):
    """data_dir may be the cache folder itself: writing the decoded copy there must not make
    the next read see new data files (and write the copy again, forever)."""
    monkeypatch.setattr(data, "CACHE_DIR", tmp_path)
    rng = np.random.default_rng(1)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz",
               rng.integers(0, 256, (20, 28, 28), dtype=np.uint8))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", (np.arange(20) % 10).astype(np.uint8))
    before = data.dataset_fingerprint("fashion-mnist", str(tmp_path))
    assert data.shared_split("fashion-mnist", "train", str(tmp_path)) is not None
    assert any((tmp_path / "decoded").iterdir())
    assert data.dataset_fingerprint("fashion-mnist", str(tmp_path)) == before
