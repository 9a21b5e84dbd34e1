"""A run folder belongs to one run, and --force deletes only what a run wrote (issue 37,
points 4 and 5)."""

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedisguise import experiment
from fedisguise.config import ConfigError
from fedisguise.experiment import CLAIM, claim_run_dir
from tests.conftest import synthetic_config

ROOT = Path(__file__).resolve().parents[1]


def run_cli(out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "run.py"), "--config", "configs/smoke.toml",
               "--out", str(out), "--set", "data.dataset=synthetic", *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)


def test_force_refuses_a_folder_no_run_wrote_and_the_canary_survives(tmp_path):
    folder = tmp_path / "smoke"
    folder.mkdir()
    (folder / "canary.txt").write_text("mine")
    refused = run_cli(tmp_path, "--force")
    assert refused.returncode == 2
    assert f"--force: {folder} holds no fedisguise run" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert (folder / "canary.txt").read_text() == "mine"


def test_force_through_a_symlinked_out_refuses_a_foreign_folder(tmp_path):
    target = tmp_path / "real"
    (target / "smoke").mkdir(parents=True)
    (target / "smoke" / "canary.txt").write_text("mine")
    (tmp_path / "link").symlink_to(target)
    refused = run_cli(tmp_path / "link", "--force")
    assert refused.returncode == 2 and "holds no fedisguise run" in refused.stderr
    assert (target / "smoke" / "canary.txt").read_text() == "mine"


@pytest.mark.parametrize("dangling", [False, True])
def test_a_symlinked_run_folder_is_refused_never_followed(tmp_path, dangling):
    target = tmp_path / "elsewhere"
    if not dangling:
        target.mkdir()
        (target / "metrics.json").write_text('{"status": "finished"}')
    (tmp_path / "smoke").symlink_to(target)
    refused = run_cli(tmp_path, "--force")
    assert refused.returncode == 2
    assert "is a symbolic link" in refused.stderr
    assert ("to nothing" in refused.stderr) == dangling
    assert (tmp_path / "smoke").is_symlink()
    if not dangling:
        assert (target / "metrics.json").is_file()


def test_force_replaces_a_folder_a_run_wrote(tmp_path):
    cfg = synthetic_config(tmp_path)
    for marker, text in (("metrics.json", '{"status": "failed"}'), ("cell.json", "{}"),
                         (CLAIM, '{"pid": 1, "host": "another-machine"}')):
        cfg.run_dir.mkdir(exist_ok=True)
        (cfg.run_dir / marker).write_text(text)
        (cfg.run_dir / "rounds.csv").write_text("old rows")
        claim_run_dir(cfg, force=True)
        assert sorted(p.name for p in cfg.run_dir.iterdir()) == [CLAIM]
        assert json.loads((cfg.run_dir / CLAIM).read_text())["pid"] == os.getpid()
        (cfg.run_dir / CLAIM).unlink()


def test_a_live_runs_folder_is_refused_even_with_force(tmp_path):
    cfg = synthetic_config(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        cfg.run_dir.mkdir()
        (cfg.run_dir / CLAIM).write_text(json.dumps({"pid": holder.pid,
                                                     "host": os.uname().nodename}))
        (cfg.run_dir / "rounds.csv").write_text("its rows")
        with pytest.raises(ConfigError, match=f"still going .process {holder.pid} on"):
            claim_run_dir(cfg, force=True)
        assert (cfg.run_dir / "rounds.csv").read_text() == "its rows"
    finally:
        holder.kill()
        holder.wait()
    claim_run_dir(cfg, force=True)  # its process ended: the folder is a dead run's
    assert not (cfg.run_dir / "rounds.csv").exists()


def _claim(cfg, barrier, results):
    barrier.wait()
    try:
        claim_run_dir(cfg)
        results.put(("claimed", os.getpid(), ""))
    except ConfigError as err:
        results.put(("refused", os.getpid(), str(err)))


def test_two_runs_claiming_one_name_at_once_one_wins_every_time(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for attempt in range(20):
        cfg = synthetic_config(tmp_path, **{"experiment.name": f"race-{attempt}"})
        barrier, results = ctx.Barrier(2), ctx.Queue()
        workers = [ctx.Process(target=_claim, args=(cfg, barrier, results)) for _ in range(2)]
        for w in workers:
            w.start()
        outcome = sorted(results.get(timeout=30) for _ in workers)
        for w in workers:
            w.join(timeout=30)
        (won, winner, _), (lost, _, why) = outcome
        assert (won, lost) == ("claimed", "refused"), outcome
        assert json.loads((cfg.run_dir / CLAIM).read_text())["pid"] == winner
        assert str(cfg.run_dir) in why


@pytest.mark.slow
def test_two_runs_started_together_under_one_name_one_runs_the_other_exits_2(tmp_path):
    """Whole `run.py` processes, as a user starts them: 6 pairs, each pair under its own name,
    three pairs at a time (the race itself is run 20 times in-process above). In every pair the
    first to end is refused (exit 2, one line naming the other's process) while the other holds the
    folder and trains; it is then killed, as a user's Ctrl-C or a lost machine would end it."""
    def start(name: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), "--config", "configs/smoke.toml", "--out",
             str(tmp_path), "--set", "data.dataset=synthetic", "--set",
             f"experiment.name={name}", "--set", "experiment.rounds=50"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    for batch in range(2):
        names = [f"race-{batch}-{k}" for k in range(3)]
        pairs = [(name, start(name), start(name)) for name in names]
        try:
            for name, a, b in pairs:
                while a.poll() is None and b.poll() is None:
                    time.sleep(0.05)
                loser, winner = (a, b) if a.poll() is not None else (b, a)
                err = loser.communicate(timeout=60)[1]
                assert loser.returncode == 2, err
                lines = [line for line in err.splitlines() if line.strip()]
                assert lines == [f"error: experiment.name: {tmp_path / name} belongs to a run "
                                 f"still going (process {winner.pid} on {os.uname().nodename});"
                                 f" wait for it or choose another name"], err
                assert winner.poll() is None  # still training
                assert json.loads((tmp_path / name / CLAIM).read_text())["pid"] == winner.pid
                winner.kill()  # before it starts Ray, which the next pairs would wait on
        finally:
            for _, a, b in pairs:
                for p in (a, b):
                    p.kill()
                    p.communicate()


def test_a_claimed_run_is_not_claimed_again(tmp_path, monkeypatch):
    cfg = synthetic_config(tmp_path)
    claim_run_dir(cfg)

    def claimed_twice(*args, **kwargs):
        raise AssertionError("claimed twice")

    monkeypatch.setattr(experiment, "claim_run_dir", claimed_twice)
    monkeypatch.setattr(experiment, "run_simulation", lambda cfg: None)
    with pytest.raises(RuntimeError, match="ended without writing"):
        experiment.run_experiment(cfg, claimed=True)
