"""No hang, no silent wrong answer, no lost result: failures, dead nodes, interrupts, writes."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, Error, Message

from fedisguise.deployment.processes import alive
from fedisguise.models import build_model
from fedisguise.results import new_record, rewrite_record, summary_markdown, write_run
from strategies import NodeGuard, RunFailed, build_strategy
from tests.conftest import synthetic_config
from tests.test_observed_strategy import LoopbackGrid

ROOT = Path(__file__).resolve().parents[1]


class FailingGrid(LoopbackGrid):
    """LoopbackGrid whose `broken` nodes answer with an error (as Flower relays a client's
    exception, or the SuperLink answers for a dead node: under another node id) and whose
    `gone` nodes have left the federation."""

    def __init__(self, cfg, num_nodes, broken=(), gone_after=None):
        super().__init__(cfg, num_nodes)
        self.broken = {}  # node -> (first round it fails, phase)
        self.broken.update(broken)
        self.gone_after = gone_after or {}  # node -> last round it takes part in
        self.round = 0

    def get_node_ids(self):
        return [n for n in self.partition_of
                if self.gone_after.get(n, 10**6) >= self.round]

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        for msg in messages:  # as a real grid does when it sends
            msg.metadata.__dict__["_message_id"] = f"m{id(msg)}"
        if messages and messages[0].metadata.message_type == "train":
            self.round = int(messages[0].content["config"]["server-round"])
        ok, replies = [], []
        for msg in messages:
            node, phase = msg.metadata.dst_node_id, msg.metadata.message_type
            first, failing_phase = self.broken.get(node, (10**6, None))
            if self.round >= first and failing_phase in (phase, "any"):
                reply = Message(Error(code=3, reason=f"Traceback ...\nValueError: node {node} "
                                                     f"broke in {phase}"), reply_to=msg)
                reply.metadata.__dict__["_src_node_id"] = 0  # the SuperLink answers
                replies.append(reply)
            else:
                ok.append(msg)
        replies = super().send_and_receive(ok) + replies
        if messages and messages[0].metadata.message_type == "evaluate":
            self.round += 1  # between rounds: nodes gone after this round have left
        return replies


def start(strategy, grid, rounds):
    model = build_model("lenet", 1, 10, 28)
    return strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                          num_rounds=rounds)


def test_a_failing_client_is_recorded_with_its_error_and_the_round_goes_on(
        tmp_path, task_identity, capsys):
    cfg = synthetic_config(tmp_path, **{"data.train_per_client": 32, "experiment.clients": 3})
    grid = FailingGrid(cfg, 3, broken={1001: (2, "train"), 1002: (1, "evaluate")})
    strategy = build_strategy(cfg.strategy, 3)
    start(strategy, grid, rounds=2)
    seen = [(f.server_round, f.phase, f.node_id, f.partition_id, f.error)
            for f in strategy.failures]
    assert seen == [(1, "evaluate", 1002, 2, "ValueError: node 1002 broke in evaluate"),
                    (2, "train", 1001, 1, "ValueError: node 1001 broke in train"),
                    (2, "evaluate", 1002, 2, "ValueError: node 1002 broke in evaluate")]
    assert "round 2: client 1 (node 1001) failed to train: ValueError" in capsys.readouterr().err


def test_a_round_in_which_no_client_trained_ends_the_run(tmp_path, task_identity):
    cfg = synthetic_config(tmp_path, **{"data.train_per_client": 32})
    grid = FailingGrid(cfg, 2, broken={1000: (2, "train"), 1001: (2, "train")})
    strategy = build_strategy(cfg.strategy, 2)
    with pytest.raises(RunFailed, match="round 2: no client trained .2 failed.*broke in train"):
        start(strategy, grid, rounds=3)


def test_a_node_that_vanished_between_rounds_is_recorded(tmp_path, task_identity):
    cfg = synthetic_config(tmp_path, **{"data.train_per_client": 32, "experiment.clients": 3})
    grid = FailingGrid(cfg, 3, gone_after={1002: 1})
    strategy = build_strategy(cfg.strategy, 3)
    start(strategy, grid, rounds=2)
    assert [(f.server_round, f.phase, f.partition_id) for f in strategy.failures] == [
        (2, "connect", 2)]
    assert sorted(grid.sampled[2]) == [1000, 1001]  # the others trained on


class FakeGrid:
    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)

    def create_message(self, *args):
        return "delegated"


def test_the_node_guard_waits_at_most_the_timeout_below_the_minimum():
    now = [0.0]
    grid = FakeGrid([1, 2, 3])
    guard = NodeGuard(grid, min_nodes=2, timeout=30, clock=lambda: now[0])
    assert guard.get_node_ids() == [1, 2, 3]
    grid.nodes = [1]
    assert guard.get_node_ids() == [1]  # Flower's sampling keeps asking while it waits
    now[0] = 29
    assert guard.get_node_ids() == [1]
    grid.nodes = [1, 4]  # a node came back: the clock restarts
    assert guard.get_node_ids() == [1, 4]
    grid.nodes = [4]
    now[0] = 40
    guard.get_node_ids()
    now[0] = 71
    with pytest.raises(RunFailed, match="only 1 node.*strategy.min_clients = 2.*30 s"):
        guard.get_node_ids()
    assert guard.create_message() == "delegated"


def test_flowers_sampling_gives_up_through_the_guard(tmp_path, task_identity):
    """Without the guard, FedAvg's sampling loops forever ("Waiting for nodes to connect")."""
    cfg = synthetic_config(tmp_path, **{"experiment.clients": 3, "strategy.min_clients": 3,
                                        "strategy.node_timeout": 1.5})
    strategy = build_strategy(cfg.strategy, 3)
    guard = NodeGuard(FakeGrid([1, 2]), cfg.strategy.min_clients, cfg.strategy.node_timeout)
    from flwr.app import ConfigRecord

    t0 = time.monotonic()
    with pytest.raises(RunFailed):
        strategy.configure_train(1, ArrayRecord(), ConfigRecord(), guard)
    assert time.monotonic() - t0 < 10


# ---- results on disk ----------------------------------------------------------------
def record_with_rounds(cfg, losses):
    record = new_record(cfg.to_dict(), "simulation")
    record["rounds"] = [{"round": i + 1, "train_loss": loss, "test_accuracy": 0.1,
                         "test_loss": loss, "plain_test_accuracy": 0.1,
                         "plain_test_loss": loss, "round_seconds": 1.0, "bytes_up": 1,
                         "bytes_down": 1, "clients": [0, 1], "epsilon": None}
                        for i, loss in enumerate(losses)]
    record["final"] = {"test_accuracy": 0.1, "train_loss": losses[-1]}
    return record


def test_non_finite_figures_are_written_as_null_and_flag_the_run_diverged(tmp_path):
    cfg = synthetic_config(tmp_path)
    record = record_with_rounds(cfg, [2.3, float("inf"), float("nan")])
    write_run(tmp_path / "t", record, [])
    written = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert written["diverged"] is True
    assert [r["train_loss"] for r in written["rounds"]] == [2.3, None, None]
    assert "rounds[1].train_loss" in written["non_finite"]
    assert "**Diverged:**" in (tmp_path / "t" / "summary.md").read_text()
    assert (tmp_path / "t" / "rounds.csv").read_text().count("\n") == 4
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [
        "metrics.json", "rounds.csv", "summary.md", "updates.json"]  # no temp files left
    # rewritten later (the harness adds figures): the flag stays
    rewrite_record(tmp_path / "t", written)
    assert json.loads((tmp_path / "t" / "metrics.json").read_text())["diverged"] is True


def test_summary_links_only_images_that_exist(tmp_path):
    cfg = synthetic_config(tmp_path)
    record = record_with_rounds(cfg, [1.0])
    record["privacy"] = {"grid": "images/disguise-grid.png"}
    record["attacks"] = {"gradient_inversion": {"grid": "images/attack-gi.png"}}
    assert "](images/" not in summary_markdown(record, tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "attack-gi.png").write_bytes(b"png")
    text = summary_markdown(record, tmp_path)
    assert "](images/attack-gi.png)" in text and "](images/disguise-grid.png)" not in text


def test_an_existing_run_folder_is_refused_without_force(tmp_path):
    run = tmp_path / "smoke"
    run.mkdir()
    (run / "metrics.json").write_text('{"status": "finished", "finished_at": "yesterday"}')
    (run / "summary.md").write_text("old")
    command = [sys.executable, str(ROOT / "run.py"), "--config", "configs/smoke.toml",
               "--out", str(tmp_path), "--set", "data.dataset=synthetic"]
    refused = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                             check=False)
    assert refused.returncode == 2
    assert "already holds results (finished run of yesterday); pass --force" in refused.stderr
    assert (run / "summary.md").read_text() == "old"


# ---- interrupts ---------------------------------------------------------------------
def descendants(pid: int) -> list[int]:
    from fedisguise.deployment.processes import descendants

    return descendants(pid)


def survivors(pids: list[int], within: float = 15.0) -> list[str]:
    """The command lines of `pids` still alive after `within` s: Ray's processes end on the
    exit's SIGTERM, but on a loaded 2-core machine some take a few seconds to go."""
    deadline = time.monotonic() + within
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = []
    for pid in (pid for pid in pids if alive(pid)):
        try:
            left.append(f"{pid}: " + Path(f"/proc/{pid}/cmdline").read_bytes()
                        .replace(b"\0", b" ").decode(errors="replace")[:200])
        except OSError:
            pass  # gone meanwhile
    return left


def wait_for_rounds(metrics: Path, rounds: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        try:
            if len(json.loads(metrics.read_text())["rounds"]) >= rounds:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"{rounds} round(s) not finished within {timeout} s")


@pytest.mark.slow
def test_ctrl_c_in_a_simulation_exits_130_keeps_finished_rounds_and_leaves_no_process(
        tmp_path):
    command = [sys.executable, str(ROOT / "run.py"), "--config", "configs/smoke.toml",
               "--out", str(tmp_path), "--set", "data.dataset=synthetic",
               "--set", "data.train_per_client=100", "--set", "data.test_samples=200",
               "--rounds", "500"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "smoke" / "metrics.json"
    wait_for_rounds(metrics, 1, proc, timeout=240)
    children = descendants(proc.pid)
    assert children, "the simulation started no Ray process"
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 15
    assert proc.returncode == 130, err[:3000] + "\n...\n" + err[-2000:]
    record = json.loads(metrics.read_text())
    assert record["status"] == "interrupted"
    assert len(record["rounds"]) >= 1
    assert survivors(children) == []


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_error_raised_while_an_interrupt_unwinds_still_marks_the_run_interrupted(
        tmp_path, monkeypatch, sig, code):
    """Flower's simulation stops its backend in a `finally`; an error there replaces the
    KeyboardInterrupt. The run is still an interrupted one: marked so, exit 128 + signal,
    never `failed` and exit 1 (seen once in CI: Ctrl-C, then Ray's Broken pipe, exit 1)."""
    from fedisguise import cli, experiment, interrupts

    cfg = synthetic_config(tmp_path)

    def stopping_badly(cfg):
        try:
            signal.raise_signal(sig)
        finally:
            raise RuntimeError("the backend was gone")

    monkeypatch.setattr(experiment, "run_simulation", stopping_badly)
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        cli.install_signal_handlers()
        with pytest.raises(KeyboardInterrupt,
                           match="while stopping: RuntimeError: the backend was gone") as caught:
            experiment.run_experiment(cfg, force=True)
        assert cli.interrupt_code(caught.value) == code
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        interrupts.clear()
    record = json.loads((cfg.run_dir / "metrics.json").read_text())
    assert record["status"] == "interrupted" and "the backend was gone" in record["error"]
    # without a signal the same error is a failure, as before
    monkeypatch.setattr(experiment, "run_simulation",
                        lambda cfg: (_ for _ in ()).throw(RuntimeError("broken")))
    with pytest.raises(RuntimeError, match="broken"):
        experiment.run_experiment(cfg, force=True)


# ---- the server and the CLI on a failed run -------------------------------------------
def test_the_server_keeps_finished_rounds_and_marks_a_run_without_training_failed(
        tmp_path, task_identity):
    from fedisguise import cli
    from fedisguise.fl.server_app import run_server

    cfg = synthetic_config(tmp_path, **{"data.train_per_client": 32, "experiment.rounds": 3})
    grid = FailingGrid(cfg, 2, broken={1000: (2, "any"), 1001: (2, "any")})
    record = run_server(grid, cfg, "simulation")
    assert record["status"] == "failed" and "round 2: no client trained" in record["error"]
    assert [r["round"] for r in record["rounds"]] == [1]
    on_disk = json.loads((cfg.run_dir / "metrics.json").read_text())
    assert on_disk["status"] == "failed" and len(on_disk["rounds"]) == 1
    assert [(f["server_round"], f["partition_id"]) for f in on_disk["failures"]] == [
        (2, 0), (2, 1)]
    assert "**Status: failed** after 1 of 3 rounds" in (cfg.run_dir / "summary.md").read_text()
    assert cli.report(record, cfg.run_dir) == 1  # exit 0 only when a model was trained
    record["status"] = "finished"
    assert cli.report(record, cfg.run_dir) == 0


def test_a_grid_reruns_an_interrupted_cell_from_scratch_and_skips_finished_ones(
        tmp_path, monkeypatch):
    from fedisguise import experiment
    from fedisguise.grids.runner import run_grid
    from fedisguise.grids.spec import load_grid
    from tests.test_compare import GRID, grid_file

    grid = load_grid(grid_file(tmp_path, GRID), out=str(tmp_path))
    calls, interrupt = [], [True]

    def fake_run(cfg, force=False):
        calls.append((cfg.run_dir.name, force))
        experiment.claim_run_dir(cfg, force)
        if len(calls) == 2 and interrupt.pop():
            raise KeyboardInterrupt  # Ctrl-C in the second cell, the first time
        record = {"status": "finished", "rounds": [], "final": {}}
        (cfg.run_dir / "metrics.json").write_text(json.dumps(record))
        return record

    monkeypatch.setattr(experiment, "run_experiment", fake_run)
    monkeypatch.setattr("fedisguise.grids.runner.write_table", lambda grid: {})
    stale = grid.cells[1].config.run_dir
    stale.mkdir(parents=True)
    (stale / "rounds.csv").write_text("an interrupted run's rows")
    # ... and its claim: the process that held it ended (here: on another machine)
    (stale / experiment.CLAIM).write_text('{"pid": 1, "host": "another-machine"}')
    with pytest.raises(KeyboardInterrupt):
        run_grid(grid, progress=False)
    calls.clear()
    interrupt.append(False)
    outcome = run_grid(grid, progress=False)
    assert outcome["skipped"] == [grid.cells[0].name]  # finished: kept
    assert calls[0] == (grid.cells[1].name, True)  # interrupted: replaced, never mixed
    assert not (stale / "rounds.csv").exists()
    assert len(outcome["ran"]) == len(grid.cells) - 1


@pytest.mark.slow
def test_sigterm_during_a_compare_cell_exits_143_and_marks_the_cell(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(
        "[compare]\nname = 'g'\nseeds = [0]\n[[compare.defence]]\nlabel = 'none'\n"
        "[[compare.attack]]\nlabel = 'plain'\nattacks = []\n"
        "[experiment]\nrounds = 500\nclients = 2\n"
        "[data]\ndataset = 'synthetic'\ntrain_per_client = 64\ntest_samples = 64\n")
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "--compare", str(grid),
                             "--out", str(tmp_path / "out")], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "out" / "g" / "none--plain--seed0" / "metrics.json"
    wait_for_rounds(metrics, 1, proc, timeout=240)
    children = descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 15
    assert proc.returncode == 143, err[-2000:]
    assert "run the same command to resume" in err
    assert json.loads(metrics.read_text())["status"] == "interrupted"
    assert not (metrics.parent / "cell.json").exists()  # so the next run redoes it
    assert survivors(children) == []
