#!/usr/bin/env python
"""Your own images against the built-in copy of the same images.

Writes the first `--images` Fashion-MNIST training images (and 2000 test images) as PNG files
in torchvision's ImageFolder layout, then prints:
- decoding: the folder read into its shared 8-bit copy (cold: no decoded copy yet), and the
  Debian copy's IDX files decoded the same way, as a ratio;
- training: one `run.py` process each, on the folder and on the built-in dataset, with the
  same clients, images per client, rounds and model: s/round (mean round_seconds after the
  first, which holds the actors' start), the best of `--repeats` runs each, alternated, and
  its ratio. The two differ in which images the partitioner draws, not in how many.

    python bench/data.py --images 10000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def write_folder(root: Path, images: int) -> None:
    from fedisguise.data.datasets import load_fashion_mnist

    for split, count in (("train", images), ("test", 2000)):
        data = load_fashion_mnist(split)
        pixels = (data.images[:count, 0] * 255).round().byte().numpy()
        for i, (img, label) in enumerate(zip(pixels, data.labels[:count].tolist(),
                                             strict=True)):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, "L").save(folder / f"{i:05d}.png")


def decode_seconds(dataset: str, data_dir: str, cache: Path) -> float:
    """A cold read into the shared copy, in a fresh process (its own cache folder)."""
    code = ("import time; from fedisguise.data.datasets import shared_split; "
            f"t = time.perf_counter(); shared_split({dataset!r}, 'train', {data_dir!r}); "
            "print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True, env={**os.environ, "FEDISGUISE_DATA": str(cache)})
    return float(out.stdout.strip().splitlines()[-1])


def seconds_per_round(sets: list[str], out: Path, name: str, args: argparse.Namespace) -> float:
    cmd = [sys.executable, "run.py", "--config", "configs/fedavg.toml", "--out", str(out),
           "--clients", str(args.clients), "--rounds", str(args.rounds),
           "--set", f"experiment.name={name}",
           "--set", f"data.train_per_client={args.images // args.clients}",
           "--set", "data.test_samples=2000", *[a for s in sets for a in ("--set", s)]]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    record = json.loads((out / name / "metrics.json").read_text())
    return statistics.mean(r["round_seconds"] for r in record["rounds"][1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        write_folder(tmp / "images", args.images)
        written = time.perf_counter() - started
        folder = decode_seconds("folder", str(tmp / "images"), tmp / "cache-folder")
        builtin = decode_seconds("fashion-mnist", "", tmp / "cache-builtin")
        folder_sets = ["data.dataset=folder", f"data.data_dir={tmp / 'images'}"]
        runs: dict[str, list[float]] = {"folder": [], "builtin": []}
        for i in range(args.repeats):  # alternated, so a busy spell does not fall on one
            runs["folder"].append(seconds_per_round(folder_sets, tmp / "out", f"folder{i}",
                                                    args))
            runs["builtin"].append(seconds_per_round([], tmp / "out", f"builtin{i}", args))
        own, same = min(runs["folder"]), min(runs["builtin"])
    result = {"images": args.images, "write_seconds": written,
              "decode_folder_seconds": folder, "decode_builtin_seconds": builtin,
              "round_seconds_folder": own, "round_seconds_builtin": same,
              "round_ratio": own / same, "runs": runs}
    print(f"{args.images} PNG images written in {written:.1f} s")
    print(f"decoding into the shared copy: folder {folder:.1f} s, Fashion-MNIST's 60000 "
          f"(IDX) {builtin:.1f} s")
    print(f"s/round, {args.clients} clients x {args.images // args.clients} images, "
          f"{args.rounds} rounds: folder {own:.2f}, built-in {same:.2f} -> "
          f"{own / same:.2f}x")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
