"""Your own images: a folder, decoded with Pillow into 8-bit N×C×H×W arrays.

Layouts (`data.dataset = "folder"`, `data.data_dir = DIR`):
- DIR/train/<class>/* and DIR/test/<class>/*: torchvision's ImageFolder layout;
- DIR/<class>/* alone, with `data.test_fraction`: a stratified test split, drawn with a
  fixed seed, so every process and every run of any seed gets the same one;
- DIR/labels.csv (`file,label[,owner]`, files relative to DIR), with `data.test_fraction`.

Class names are sorted and numbered 0..K-1 (train's classes; a test class train lacks is an
error). `image_size` (H, W) resizes (bilinear); `channels` 1 or 3 converts, else the folder
decides (1 where every image is grayscale). Without `image_size`, images of two sizes are an
error that names one file of each. The decoded arrays go into the shared copy that the
built-in datasets use (fedisguise.data.datasets), keyed by the folder's file names, sizes and
mtimes: an edited file is decoded again.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LABELS_FILE = "labels.csv"
SPLIT_SEED = 0  # the test split of a folder without one: fixed, never the experiment's seed
GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "F"}  # a palette image counts as colour


@dataclass(frozen=True)
class FolderSplit:
    images: np.ndarray  # N×C×H×W uint8
    labels: np.ndarray  # N int64
    classes: tuple[str, ...]


def read_folder(root: str | Path, split: str, image_size: tuple[int, int] | None = None,
                channels: int = 0, test_fraction: float = 0.0) -> FolderSplit:
    """Split `split` ("train" or "test") of the image folder `root`; ValueError naming the
    file, class or setting where the folder cannot be read as one."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    files, names = _listing(root, test_fraction)
    classes = tuple(sorted(set(names["train"])))
    if not files["train"]:
        raise ValueError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    if len(classes) < 2:
        raise ValueError(f"{root}: one class only ({classes[0]!r}); classification needs two "
                         f"or more")
    unknown = sorted(set(names["test"]) - set(classes))
    if unknown:
        raise ValueError(f"{root}: test class(es) {unknown} have no training images; the "
                         f"training classes are {list(classes)}")
    if not files["test"]:
        raise ValueError(f"{root}: no test images")
    index = {name: i for i, name in enumerate(classes)}
    size, channels = _decoding(files["train"] + files["test"], image_size, channels)
    images = _decode(files[split], size, channels)
    labels = np.array([index[n] for n in names[split]], dtype=np.int64)
    return FolderSplit(images, labels, classes)


def _listing(root: Path, test_fraction: float) -> tuple[dict, dict]:
    """Per split, the image files and their class names, sorted by path."""
    if (root / "train").is_dir():
        if test_fraction:
            raise ValueError(f"{root} has a train/ folder (and its own test split); "
                             f"data.test_fraction splits a folder of class folders or a "
                             f"{LABELS_FILE}: set it to 0")
        if not (root / "test").is_dir():
            raise ValueError(f"{root} has train/ but no test/ folder (or use class folders "
                             f"alone with data.test_fraction)")
        found = {split: _class_folders(root / split) for split in ("train", "test")}
        return ({s: [p for p, _ in found[s]] for s in found},
                {s: [c for _, c in found[s]] for s in found})
    rows = _labels_csv(root) if (root / LABELS_FILE).is_file() else _class_folders(root)
    if not test_fraction:
        raise ValueError(f"{root} has no train/ and test/ folders: set data.test_fraction "
                         f"(e.g. 0.2) for a stratified test split")
    by_class: dict[str, list[int]] = {}
    for i, (_, name) in enumerate(rows):
        by_class.setdefault(name, []).append(i)
    rng = np.random.default_rng(SPLIT_SEED)
    test: set[int] = set()
    for name in sorted(by_class):
        members = by_class[name]
        take = int(round(test_fraction * len(members))) if len(members) > 1 else 0
        test.update(members[j] for j in rng.permutation(len(members))[:take])
    split_rows = {"train": [r for i, r in enumerate(rows) if i not in test],
                  "test": [r for i, r in enumerate(rows) if i in test]}
    return ({s: [p for p, _ in r] for s, r in split_rows.items()},
            {s: [c for _, c in r] for s, r in split_rows.items()})


def _class_folders(folder: Path) -> list[tuple[Path, str]]:
    """(file, class) for every image in `folder`/<class>/ (hidden files skipped)."""
    rows = []
    for cls in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(cls.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    raise ValueError(f"{path}: not an image file ({', '.join(IMAGE_SUFFIXES)})")
                rows.append((path, cls.name))
    return rows


def _labels_csv(root: Path) -> list[tuple[Path, str]]:
    """(file, label) from `root`/labels.csv: a header `file,label[,owner]`, one image a row."""
    path = root / LABELS_FILE
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        if header[:2] != ["file", "label"]:
            raise ValueError(f"{path}: the first row must be the header file,label[,owner], "
                             f"got {header}")
        rows, missing = [], []
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < 2 or not row[1].strip():
                raise ValueError(f"{path}:{line}: expected file,label, got {row}")
            file = root / row[0].strip()
            if not file.is_file():
                missing.append(f"{row[0].strip()} (line {line})")
            rows.append((file, row[1].strip()))
    if missing:
        raise ValueError(f"{path}: {len(missing)} row(s) name missing files: "
                         f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    return rows


def _decoding(files: list[Path], image_size: tuple[int, int] | None, channels: int
              ) -> tuple[tuple[int, int], int]:
    """The (H, W) and channels every image is decoded to, from the headers alone."""
    from PIL import Image

    first: dict[tuple[int, int], Path] = {}
    gray = True
    for path in files:
        try:
            with Image.open(path) as img:
                w, h = img.size
                mode = img.mode
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: not a readable image ({err})") from None
        first.setdefault((h, w), path)
        gray = gray and mode in GRAYSCALE_MODES
    if image_size is None and len(first) > 1:
        (a, pa), (b, pb) = list(first.items())[:2]
        raise ValueError(f"images of different sizes: {pa} is {a[0]}×{a[1]}, {pb} is "
                         f"{b[0]}×{b[1]}; set data.image_size = [H, W] to resize them")
    return image_size or next(iter(first)), channels or (1 if gray else 3)


def _decode(files: list[Path], size: tuple[int, int], channels: int) -> np.ndarray:
    from PIL import Image

    h, w = size
    out = np.empty((len(files), channels, h, w), dtype=np.uint8)
    for i, path in enumerate(tqdm(files, desc=f"decoding {len(files)} images",
                                  disable=len(files) < 2000, leave=False)):
        try:
            with Image.open(path) as img:
                img = img.convert("L" if channels == 1 else "RGB")
                if img.size != (w, h):
                    img = img.resize((w, h), Image.BILINEAR)
                pixels = np.asarray(img)
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: not a readable image ({err})") from None
        out[i] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return out
