"""Bad input exits 2 with one line naming the key or file, before Flower starts where it can
be checked before (issue 37, point 6); a full disk exits 1 with one line and leaves a true
record (point 7)."""

import ast
import errno
import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest

import run
from fedisguise import cli, preflight, results
from fedisguise.deployment import ports as loopback
from tests.conftest import FEDAVG
from tests.test_deployment import exiting_spawn

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = ["--config", str(FEDAVG), "--set", "data.dataset=synthetic", "--clients", "2",
             "--rounds", "1", "--set", "data.train_per_client=64"]


def one_error_line(capsys) -> str:
    """The run's stderr holds one error line and no traceback; returns it."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def idx_folder(folder: Path, labels: np.ndarray | None = None) -> Path:
    """A small Fashion-MNIST in IDX gz files: 40 training and 20 test images."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("t10k", 20)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        own = labels if labels is not None and split == "t10k" else np.arange(n) % 10
        for kind, array in (("images-idx3", images), ("labels-idx1", own.astype(np.uint8))):
            head = bytes([0, 0, 8, array.ndim]) + b"".join(
                int(d).to_bytes(4, "big") for d in array.shape)
            with gzip.open(folder / f"{split}-{kind}-ubyte.gz", "wb") as fh:
                fh.write(head + array.tobytes())
    return folder


def fmnist_run(folder: Path, out: Path) -> list[str]:
    return ["--config", str(FEDAVG), "--clients", "2", "--rounds", "1", "--out", str(out),
            "--set", f"data.data_dir={folder}"]


def test_a_truncated_gz_names_the_file(tmp_path, capsys):
    folder = idx_folder(tmp_path / "data")
    images = folder / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:200])  # a download cut off
    assert run.main(fmnist_run(folder, tmp_path / "out")) == 2
    line = one_error_line(capsys)
    assert "data.data_dir" in line and str(images) in line and "truncated or corrupt" in line


def test_labels_outside_the_classes_are_refused_before_flower_starts(tmp_path, capsys):
    labels = np.arange(20) % 10
    labels[5] = 12
    folder = idx_folder(tmp_path / "data", labels)
    assert run.main(fmnist_run(folder, tmp_path / "out")) == 2
    line = one_error_line(capsys)
    assert "t10k-labels-idx1-ubyte.gz: 1 labels outside [0, 10) (e.g. 12 at index 5)" in line
    assert not (tmp_path / "out" / "fedavg").exists()  # nothing started


def test_the_good_small_folder_loads(tmp_path):
    """The two tests above fail for their one defect, not for the folder they build."""
    from fedisguise.data.datasets import load_dataset

    folder = idx_folder(tmp_path / "data")
    assert len(load_dataset("fashion-mnist", "train", str(folder))) == 40


@pytest.mark.parametrize("name, message", [
    ("a" * 300, "at most 255 bytes (it names a folder); this one has 300"),
    ("a\u0000b", "without control characters"),
    ("tab\there", "without control characters"),
])
def test_an_experiment_name_no_folder_can_have(tmp_path, capsys, name, message):
    config = tmp_path / "c.toml"
    config.write_text(f"[experiment]\nname = {json.dumps(name)}\n")
    assert run.main(["--config", str(config), "--out", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert "experiment.name" in line and message in line


def test_a_config_that_is_not_utf8(tmp_path, capsys):
    config = tmp_path / "latin1.toml"
    config.write_bytes('[experiment]\nname = "café"\n'.encode("latin-1"))
    assert run.main(["--config", str(config)]) == 2
    assert f"{config}: not a UTF-8 text file (byte 0xe9 at offset 24)" in one_error_line(capsys)
    grid = tmp_path / "grid.toml"  # a compare file too
    grid.write_bytes(b'[compare]\nname = "g\xff"\n')
    assert run.main(["--compare", str(grid)]) == 2
    assert "not a UTF-8 text file" in one_error_line(capsys)


def test_a_fifo_key_file_is_not_a_regular_file(tmp_path, capsys):
    fifo = tmp_path / "k.key"
    os.mkfifo(fifo, 0o600)  # reading it would block for ever
    assert run.main([*SYNTHETIC, "--out", str(tmp_path), "--set", "disguise=disguisednets",
                     "--set", f"client.key_file={fifo}"]) == 2
    line = one_error_line(capsys)
    assert f"client.key_file: {fifo}: not a regular file" in line


def test_too_little_free_space_on_out_is_refused_up_front(tmp_path, capsys, monkeypatch):
    real = preflight.shutil.disk_usage
    monkeypatch.setattr(preflight.shutil, "disk_usage",
                        lambda path: real(path)._replace(free=10_000_000))
    assert run.main([*SYNTHETIC, "--out", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert f"experiment.out {str(tmp_path)!r}: 10.0 MB free, below the 50 MB" in line
    assert not (tmp_path / "fedavg").exists()


def test_a_port_lost_on_every_try_exits_2_naming_the_ports(tmp_path, capsys, monkeypatch):
    from fedisguise.deployment import federation as deployment

    starts = []
    # a SuperLink whose port is always taken before it binds it
    monkeypatch.setattr(deployment.LocalFederation, "_spawn", exiting_spawn(
        starts, f"ERROR: {deployment.SUPERLINK_PORT_TAKEN}", 1))
    monkeypatch.setattr(deployment.LocalFederation, "_start_reaper", lambda self: None)
    monkeypatch.setattr(cli, "install_signal_handlers", lambda: None)
    assert run.main([*SYNTHETIC, "--out", str(tmp_path), "--mode", "deployment"]) == 2
    line = one_error_line(capsys)
    assert len(starts) == loopback.PORT_TRIES
    ports = [a[a.index("--port") + 1] for a in starts]
    assert f"SuperLink lost its port to another program on each of 3 tries (ports " \
           f"{', '.join(ports)} on 127.0.0.1)" in line
    assert "nothing was trained: try again later, with --force" in line
    assert not (tmp_path / "fedavg" / "metrics.json").exists()  # no record of a run that was not


def test_write_atomic_leaves_no_temporary_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    target.write_text('{"old": true}\n')

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(results.os, "fsync", full)
    with pytest.raises(OSError) as caught:
        results.write_atomic(target, '{"new": true}\n')
    assert caught.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    assert json.loads(target.read_text()) == {"old": True}  # the last record stays


@pytest.mark.slow
def test_a_disk_that_fills_in_round_2_exits_1_and_keeps_round_1(tmp_path, capsys,
                                                                monkeypatch):
    real, real_fsync = results.write_atomic, os.fsync

    def fills_in_round_2(path, text):
        """From round 2's metrics.json on, every write fails as on a full disk, after the
        temporary file was begun."""
        if path.name == "metrics.json" and len(json.loads(text)["rounds"]) >= 2:
            monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(
                OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
        return real(path, text)

    monkeypatch.setattr(results, "write_atomic", fills_in_round_2)
    monkeypatch.setattr(cli, "install_signal_handlers", lambda: None)
    argv = [*SYNTHETIC, "--rounds", "3", "--out", str(tmp_path)]
    assert run.main(argv) == 1
    line = one_error_line(capsys)
    assert line == (f"error: no space left on {tmp_path}: round 2's results could not be "
                    f"written; free space and rerun with --force")
    run_dir = tmp_path / "fedavg"
    record = json.loads((run_dir / "metrics.json").read_text())  # valid JSON: round 1's
    assert record["status"] == "running" and [r["round"] for r in record["rounds"]] == [1]
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(results, "write_atomic", real)  # space again: --force reruns
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert run.main([*argv, "--force"]) == 0
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "finished"


def test_run_py_catches_no_bare_exception():
    tree = ast.parse((ROOT / "fedisguise" / "cli.py").read_text())
    caught = [ast.unparse(h.type) if h.type is not None else "bare"
              for h in ast.walk(tree) if isinstance(h, ast.ExceptHandler)]
    assert not {"bare", "Exception", "BaseException"} & set(caught), caught
    assert not any("Exception" in c.split(", ") for c in caught)
