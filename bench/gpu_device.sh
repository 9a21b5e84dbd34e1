#!/usr/bin/env bash
# Carry bench/gpu.py to a lent GPU machine (the workplace's `device` tool) and run it there.
#
# That machine has Python 3.12 with torch, torchvision, numpy and scipy, but not Flower, Ray
# or Opacus, and reaches no registry; one call carries at most 64 MiB. So, here:
#
#   bash bench/gpu_device.sh pack     # -> .dev/site312.tar.xz (~32 MB) + .dev/fmnist (~26 MB)
#
# packs, for CPython 3.12 on x86-64, what this checkout's installed flwr[simulation], opacus,
# cryptography, markdown and tqdm need (the versions installed here) minus what the image
# has; Ray without its Java jars, dashboard front-end and libraries this product never
# imports (rllib, data, serve, tune, train, llm), its binaries stripped; and Debian's
# Fashion-MNIST recompressed with xz. `.dev/` must be ignored (`echo /.dev/ >>
# .git/info/exclude`). Then, with the device tool (one call, about 8 minutes of device time):
#
#   run(command="bash bench/gpu_device.sh run 450", carry=[".dev"], timeout_s=570)
#
# unpacks both into /tmp, checks that every import and the data load, and runs
# `bench/gpu.py` with a 450 s budget; $OUT gets gpu.json, bench.log and runs.tar.gz (every
# run's metrics.json, rounds.csv, updates.json, summary.md, images and log).
set -euo pipefail
cd "$(dirname "$0")/.."

pack() {
  local stage=/tmp/fedisguise-site312 wheels=/tmp/fedisguise-wheels312
  mkdir -p .dev/fmnist "$wheels"
  python - >/tmp/fedisguise-closure.txt <<'PY'
import importlib.metadata as md
from packaging.markers import default_environment
from packaging.requirements import Requirement

env = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3"}
# The GPU image brings these (and the CUDA builds of torch/torchvision must not be replaced).
image = {"torch", "torchvision", "numpy", "scipy", "matplotlib", "pillow", "triton",
         "setuptools", "uv"}
seen: dict[str, set[str]] = {}
todo = [("flwr", {"simulation"}), ("opacus", set()), ("cryptography", set()),
        ("markdown", set()), ("tqdm", set()), ("tomli-w", set())]
while todo:
    name, extras = todo.pop()
    key = name.lower().replace("_", "-")
    if key in image or key.startswith(("nvidia", "cuda")) or (key in seen
                                                               and extras <= seen[key]):
        continue
    seen[key] = seen.get(key, set()) | extras
    for text in md.distribution(key).requires or []:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({**env, "extra": e})
                                     for e in (seen[key] or {""})):
            todo.append((req.name, set(req.extras)))
print("\n".join(f"{n}=={md.version(n)}" for n in sorted(seen)))
PY
  local platforms=()
  for p in manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 \
           manylinux_2_17 manylinux2014 manylinux1; do platforms+=(--platform "${p}_x86_64"); done
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --abi cp312 --abi abi3 --abi none "${platforms[@]}" --platform any \
    -d "$wheels" -r /tmp/fedisguise-closure.txt
  rm -rf "$stage" && mkdir -p "$stage"
  python - "$stage" "$wheels"/*.whl <<'PY'
import os
import sys
import zipfile

for wheel in sys.argv[2:]:  # as pip would: keep the executable bits (Ray's raylet, gcs_server)
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            path = archive.extract(info, sys.argv[1])
            if info.external_attr >> 16:
                os.chmod(path, (info.external_attr >> 16) & 0o777)
PY
  # Never imported here: Ray's Java jars, dashboard front-end and libraries; the image's own
  # PyYAML, Pygments and uvloop serve.
  rm -rf "$stage"/ray/{jars,dashboard/client,rllib,data,serve,tune,train,llm} \
         "$stage"/{benchmarks,examples,yaml,_yaml,pygments,uvloop}
  find "$stage" -name __pycache__ -prune -exec rm -rf {} +
  find "$stage" \( -name '*.so' -o -path '*/ray/core/src/*' \) -type f -size +1M \
    -exec strip --strip-unneeded {} \;
  tar -C "$stage" -cf - . | xz -T0 -9 > .dev/site312.tar.xz
  local data=/usr/share/datasets/fashion-mnist
  for f in train-images-idx3-ubyte t10k-images-idx3-ubyte; do
    zcat "$data/$f.gz" | xz -T0 -9e > ".dev/fmnist/$f.xz"
  done
  cp "$data"/*labels-idx1-ubyte.gz .dev/fmnist/
  du -sh .dev/site312.tar.xz .dev/fmnist
  # what travels: tracked and untracked-not-ignored files, plus the carried .dev
  local tree
  tree=$(git ls-files -z -co --exclude-standard | du -cb --files0-from=- | tail -1 | cut -f1)
  echo "the call carries $(( (tree + $(du -sb .dev | cut -f1)) / 1048576 )) MiB of at most 64"
}

run_there() {
  local budget=${1:-450} started
  started=$(date +%s)
  export PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia.txt"
  echo "cpus $(nproc)"
  mkdir -p /tmp/site /tmp/fmnist
  for f in train-images-idx3-ubyte t10k-images-idx3-ubyte; do
    xz -dc ".dev/fmnist/$f.xz" > "/tmp/fmnist/$f" &
  done
  cp .dev/fmnist/*labels-idx1-ubyte.gz /tmp/fmnist/
  [ -f /tmp/site/.unpacked ] || { xz -T0 -dc .dev/site312.tar.xz | tar -xf - -C /tmp/site;
                                  touch /tmp/site/.unpacked; }
  wait
  export PYTHONPATH=/tmp/site
  echo "unpacked in $(( $(date +%s) - started )) s"
  python3 - <<'PY'
import sys

import flwr, opacus, ray, torch, torchvision

from fedisguise.data.datasets import load_fashion_mnist

print("python", sys.version.split()[0], "torch", torch.__version__, "torchvision",
      torchvision.__version__, "flwr", flwr.__version__, "ray", ray.__version__, "opacus",
      opacus.__version__, "cuda", torch.cuda.is_available() and torch.cuda.get_device_name(0))
print("train", len(load_fashion_mnist("train", "/tmp/fmnist")),
      "test", len(load_fashion_mnist("test", "/tmp/fmnist")))
PY
  set +e
  python3 bench/gpu.py --budget "$budget" --data-dir /tmp/fmnist --fractions 0.1 0.05 \
    --cells visualmixer-vfe0.5=0.001 disguisednets-b7-n100=0.05 dp-sgd-eps8=0.05 \
            instahide-k2=0.05 \
    --json-out "$OUT/gpu.json" --keep /tmp/gpu-runs > "$OUT/bench.log" 2>&1
  echo "bench/gpu.py exited $?"
  set -e
  grep -v "round/s" "$OUT/bench.log" | tail -c 8000
  (cd /tmp/gpu-runs && find . -type f \( -name '*.json' -o -name '*.csv' -o -name '*.md' \
     -o -name '*.log' -o -name '*.toml' -o -name '*.png' \) -print0 \
     | tar --null -czf "$OUT/runs.tar.gz" -T -)
  echo "done in $(( $(date +%s) - started )) s"
}

case "${1:-}" in
  pack) pack ;;
  run) shift; run_there "$@" ;;
  *) echo "usage: bash bench/gpu_device.sh pack | run [BUDGET_SECONDS]" >&2; exit 2 ;;
esac
