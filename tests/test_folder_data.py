"""Your own images (issue 40): an image folder as a dataset, its decoding options, its errors,
and the data-derived defaults, on small PNG folders written by the tests."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

import run
from fedisguise.config import Config
from fedisguise.data.datasets import (
    dataset_fingerprint,
    load_dataset,
    read_split,
    shared_split,
)
from fedisguise.resolved import resolve
from tests.conftest import FEDAVG

CLASSES = ("cat", "ant", "bee")  # sorted: ant 0, bee 1, cat 2


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """The decoded copies of these throwaway folders go to the test's own folder."""
    from fedisguise.data import datasets

    monkeypatch.setattr(datasets, "CACHE_DIR", tmp_path / "cache")


def write_images(folder, count, size=(20, 16), mode="RGB", seed=0, start=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    for i in range(start, start + count):
        shape = (h, w, 3) if mode == "RGB" else (h, w)
        Image.fromarray(rng.integers(0, 256, shape).astype(np.uint8), mode).save(
            folder / f"{i:03d}.png")


def image_folder(root, train=6, test=2, size=(20, 16), mode="RGB", classes=CLASSES):
    for k, name in enumerate(classes):
        write_images(root / "train" / name, train, size, mode, seed=k)
        write_images(root / "test" / name, test, size, mode, seed=10 + k)
    return root


def test_an_imagefolder_layout_loads_with_sorted_class_names(tmp_path):
    root = image_folder(tmp_path / "faces")
    train = load_dataset("folder", "train", str(root))
    test = load_dataset("folder", "test", str(root))
    assert train.classes == ("ant", "bee", "cat") and train.num_classes == 3
    assert train.images.shape == (18, 3, 20, 16) and test.images.shape == (6, 3, 20, 16)
    assert train.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    first = np.array(Image.open(root / "train" / "ant" / "000.png")).transpose(2, 0, 1)
    assert torch.equal(train.images[0], torch.from_numpy(first).float() / 255)
    shared = shared_split("folder", "train", str(root))  # the memory-mapped 8-bit copy
    assert shared.classes == train.classes and np.array_equal(shared.images[0], first)


def test_grayscale_folders_are_one_channel_and_options_convert_and_resize(tmp_path):
    gray = image_folder(tmp_path / "xray", mode="L")
    assert load_dataset("folder", "train", str(gray)).images.shape[1] == 1
    rgb = image_folder(tmp_path / "faces")
    small = load_dataset("folder?size=12x10&channels=1", "train", str(rgb))
    assert small.images.shape == (18, 1, 12, 10)
    assert torch.equal(small.images.mul(255).round().div(255), small.images)  # still 8-bit
    synthetic = load_dataset("synthetic?size=32x24&channels=3", "test")
    assert synthetic.images.shape == (600, 3, 32, 24)
    assert synthetic.images.min() >= 0 and synthetic.images.max() <= 1


def test_class_folders_alone_get_a_fixed_stratified_test_split(tmp_path):
    root = tmp_path / "flat"
    for k, name in enumerate(CLASSES):
        write_images(root / name, 10, seed=k)
    source = "folder?test_fraction=0.3"
    train, test = (load_dataset(source, s, str(root)) for s in ("train", "test"))
    assert len(train) == 21 and len(test) == 9
    assert torch.bincount(test.labels).tolist() == [3, 3, 3]
    pixels = {tuple(x.flatten()[:40].tolist()) for x in torch.cat([train.images, test.images])}
    assert len(pixels) == 30  # every image once: no overlap, none lost
    again = read_split(source, "test", str(root))  # uncached: the split is drawn again
    assert torch.equal(again.images, test.images)


def test_labels_csv_names_the_classes_and_its_missing_files(tmp_path):
    root = tmp_path / "csv"
    write_images(root / "img", 8)
    rows = ["file,label,owner"] + [f"img/{i:03d}.png,{'sick' if i % 2 else 'well'},p{i // 4}"
                                   for i in range(8)]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    data = load_dataset("folder?test_fraction=0.25", "train", str(root))
    assert data.classes == ("sick", "well") and len(data) == 6
    (root / "labels.csv").write_text("\n".join(rows + ["img/999.png,sick,p9"]) + "\n")
    with pytest.raises(ValueError, match=r"1 row\(s\) name missing files: img/999.png "
                                         r"\(line 10\)"):
        load_dataset("folder?test_fraction=0.25", "train", str(root))
    (root / "labels.csv").write_text("path,class\nimg/000.png,sick\n")
    with pytest.raises(ValueError, match="header file,label"):
        load_dataset("folder?test_fraction=0.25", "train", str(root))


@pytest.mark.parametrize("case, message", [
    ("empty", "no images"),
    ("one class", "one class only"),
    ("unreadable", r"bee/bad.png: not a readable image"),
    ("not an image", r"notes.txt: not an image file"),
    ("test class", r"test class\(es\) \['dog'\] have no training images"),
    ("mixed sizes", r"images of different sizes: .*ant/000.png is 20×16, .*bee/000.png is "
                    r"24×24; set data.image_size"),
    ("no test split", "set data.test_fraction"),
])
def test_bad_folders_are_one_clear_error(tmp_path, case, message):
    root = tmp_path / "data"
    if case == "empty":
        (root / "train" / "ant").mkdir(parents=True)
        (root / "test" / "ant").mkdir(parents=True)
    elif case == "one class":
        image_folder(root, classes=("ant",))
    elif case == "no test split":
        write_images(root / "ant", 3)
        write_images(root / "bee", 3)
    else:
        image_folder(root)
    if case == "unreadable":
        (root / "train" / "bee" / "bad.png").write_bytes(b"not a png")
    if case == "not an image":
        (root / "train" / "bee" / "notes.txt").write_text("hello")
    if case == "test class":
        write_images(root / "test" / "dog", 1)
    if case == "mixed sizes":
        write_images(root / "train" / "bee", 1, size=(24, 24))
    with pytest.raises(ValueError, match=message):
        load_dataset("folder", "train", str(root))


def test_mixed_sizes_load_once_a_size_is_set(tmp_path):
    root = image_folder(tmp_path / "data")
    write_images(root / "train" / "bee", 1, size=(24, 24))
    assert load_dataset("folder?size=20x16", "train", str(root)).images.shape[-2:] == (20, 16)


def test_an_edited_file_is_decoded_again(tmp_path):
    root = image_folder(tmp_path / "data")
    before = load_dataset("folder", "train", str(root)).images[0].clone()
    path = root / "train" / "ant" / "000.png"
    Image.fromarray(np.zeros((20, 16, 3), np.uint8)).save(path)
    os.utime(path, ns=(1, 1))  # an mtime surely unlike the first write's
    assert str(path) in {f[0] for f in dataset_fingerprint("folder", str(root))}
    after = load_dataset("folder", "train", str(root)).images[0]
    assert after.abs().sum() == 0 and not torch.equal(before, after)


def test_instahide_takes_the_number_of_classes_from_the_data(tmp_path):
    root = image_folder(tmp_path / "data")
    cfg = Config().with_overrides([f"data.data_dir={root}", "data.dataset=folder",
                                   'disguise={"name": "instahide", "k": 2}'])
    cfg.validate()
    assert resolve(cfg).disguise.params["num_classes"] == 3
    given = Config().with_overrides([f"data.data_dir={root}", "data.dataset=folder",
                                     'disguise={"name": "instahide", "k": 2, '
                                     '"num_classes": 5}'])
    given.validate()
    assert resolve(given).disguise.params["num_classes"] == 5  # what the user set stays


def test_a_bad_folder_stops_the_cli_with_one_line(tmp_path, capsys):
    root = image_folder(tmp_path / "data", classes=("ant",))
    code = run.main(["--config", str(FEDAVG), "--set", "data.dataset=folder", "--set",
                     f"data.data_dir={root}", "--clients", "2", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "one class only" in err and "data.data_dir" in err
    assert not (tmp_path / "o").exists()


def test_one_data_preparation_walks_the_folder_once(tmp_path, monkeypatch):
    from fedisguise.data import datasets

    root = image_folder(tmp_path / "data")
    walks = []
    real = datasets._fingerprint
    monkeypatch.setattr(datasets, "_fingerprint", lambda *a: walks.append(a) or real(*a))
    outside = dataset_fingerprint("folder", str(root))
    with datasets.fingerprints_fixed():
        for _ in range(3):
            assert dataset_fingerprint("folder?size=8x8", str(root)) == outside
    assert len(walks) == 2  # one outside, one for the whole block
    with datasets.fingerprints_fixed({("folder", str(root)): outside}):
        dataset_fingerprint("folder", str(root))
    assert len(walks) == 2  # the walk it was handed
    write_images(root / "train" / "ant", 1, start=50)
    assert dataset_fingerprint("folder", str(root)) != outside and len(walks) == 3


def test_a_link_back_up_the_folder_does_not_loop_the_walk(tmp_path):
    root = image_folder(tmp_path / "data")
    (root / "train" / "ant" / "up").symlink_to(root)  # a loop, were links followed
    files = dataset_fingerprint("folder", str(root))
    assert len(files) == 3 * (6 + 2) and not any("/up/" in f[0] for f in files)
