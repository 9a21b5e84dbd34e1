"""Flower ServerApp: build the observed strategy, run it, evaluate centrally, write results.

Runs in the driver process in simulation and in Flower's `flwr-serverapp` process in
deployment; either way it writes results/<run>/ itself, so both modes produce the same files.
Under a user's own `flwr run .` (no driver: fedisguise.config.DRIVER_KEY) it also does what
run.py's driver does around the run: it refuses, in one line and before training, what it
cannot do, and adds the privacy figures and attacks after it (fedisguise.finish).
"""

from __future__ import annotations

import dataclasses
import random
import sys
import time
from datetime import UTC, datetime

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from tqdm.auto import tqdm

from fedisguise.attacks.base import targets
from fedisguise.attacks.capture import AttackCapture
from fedisguise.config import DRIVER, DRIVER_KEY, Config, ConfigError
from fedisguise.faults import describe
from fedisguise.fl.flower_timing import shorten_retries
from fedisguise.models import build_model
from fedisguise.resolved import resolve
from fedisguise.results import new_record, out_of_space, write_run
from fedisguise.training import evaluate
from strategies import (
    POLL_INTERVAL,
    NodeGuard,
    ObservedStrategy,
    PromptGrid,
    RunFailed,
    UpdateLedger,
    build_strategy,
)

# s between the simulation server's polls for replies (Flower's in-memory Grid: 0.1 s; each
# poll is one in-memory lookup)
SIMULATION_POLL = 0.02


def wait_for_nodes(grid: Grid, expected: int, timeout: float = 300.0) -> None:
    """Block until `expected` SuperNodes are connected; a clear error instead of a silent hang.

    Flower's sampling would wait forever for nodes that never come (say, experiment.clients
    = 4 on a 2-node federation).
    """
    deadline = time.monotonic() + timeout
    while (connected := len(list(grid.get_node_ids()))) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"experiment.clients = {expected} but only {connected} SuperNode(s) connected "
                f"within {timeout:.0f} s: start more SuperNodes, or set experiment.clients "
                f"= {connected} (e.g. `flwr run . --run-config 'experiment.clients={connected}'`)"
            )
        time.sleep(1.0)
    if connected > expected:
        raise RuntimeError(
            f"experiment.clients = {expected} but {connected} SuperNodes are connected: every "
            "node's partition-id must be < experiment.clients; set experiment.clients = "
            f"{connected}"
        )


def run_server(grid: Grid, cfg: Config, mode: str) -> dict:
    """One federated run end to end on the server side; returns the metrics record.

    results/<run>/ is rewritten (atomically) after every round, so an interrupted or failed
    run keeps the rounds it finished; `status` says how it ended: finished, or failed with
    the reason (no client trained in a round, too few nodes left).
    """
    started = time.perf_counter()
    seed = cfg.experiment.seed
    random.seed(seed)  # Flower samples nodes with `random`
    np.random.seed(seed)
    torch.manual_seed(seed)
    run_dir = cfg.run_dir.resolve()
    record = new_record(cfg.to_dict(), mode)
    record.update({
        "device": None,
        "keys": {"scope": cfg.client.key_scope, "source": key_source(cfg),
                 "draws": draws_source(cfg)},
        "dp": {"mode": cfg.dp.mode, "delta": cfg.dp.delta} if cfg.dp_mode.private else None,
        "privacy": {}, "attacks": {},
        # clients that send bad replies on purpose (config `faults`): what the server's
        # checks and strategy were up against
        "faulty_clients": [describe(f) for f in cfg.faults],
    })
    ledger = UpdateLedger()
    write_run(run_dir, record, ledger.entries)

    wait_for_nodes(grid, cfg.experiment.clients)
    run = resolve(cfg)  # once for this ServerApp: its device and data
    device = run.device
    record["device"] = str(device)
    test_set = run.data.server_test_set()
    c, h, w = test_set.image_shape
    model = build_model(cfg.model.name, c, test_set.num_classes, (h, w))
    # what the images are, never which: their shape and classes (by name where the data
    # names them: an image folder's class folders)
    record["data"] = {"image_shape": [c, h, w], "num_classes": test_set.num_classes,
                      "classes": list(test_set.classes)}
    observers: list = [ledger]
    capture = None
    if cfg.attacks:  # the honest-but-curious server keeps the targeted updates
        capture = AttackCapture(run_dir, targets(cfg.attacks))
        observers.append(capture)
    strategy = build_strategy(cfg.strategy, cfg.experiment.clients, observers=observers,
                              dp_config=cfg.dp, max_examples=cfg.examples_cap)
    progress = tqdm(total=cfg.experiment.rounds, desc=f"{cfg.experiment.name} rounds",
                    unit="round")

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        # FedAvg averages BatchNorm's integer counters into floats; load_state_dict casts back.
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = evaluate(model, test_set, device=device)
        if server_round == 0:
            record["initial"] = {"plain_test_accuracy": acc, "plain_test_loss": loss}
        else:  # the round is complete: train, client evaluation and this evaluation
            record["rounds"].append(round_row(cfg, strategy, ledger, server_round, loss, acc))
            record["final"] = {k: record["rounds"][-1][k] for k in FINAL_KEYS}
            record["failures"] = [dataclasses.asdict(f) for f in strategy.failures]
            record["wall_seconds"] = time.perf_counter() - started
            if cfg.disguised:
                record["privacy"] = {"misusability": acc}
            write_run(run_dir, record, ledger.entries)
            progress.update(1)
            # The clients' accuracy on their own (disguised) shards, as the table reports
            # it; a disguised model's accuracy on plain images beside it.
            shown = {"test_acc": record["rounds"][-1].get("test_accuracy")}
            if cfg.disguised:
                shown["plain_acc"] = acc
            progress.set_postfix({k: "–" if v is None else f"{v:.4f}" for k, v in shown.items()})
        return MetricRecord({"test_loss": loss, "test_accuracy": acc})

    # Replies collected as they come: not on the HTTP Grid's 3 s beat in deployment, nor on
    # the in-memory Grid's 0.1 s in simulation (its own pull_interval; two waits a round:
    # bench/simulation_poll.py).
    if mode == "deployment":
        prompt = PromptGrid(grid)
        shorten_retries(POLL_INTERVAL)  # and a reply's objects pulled again after 0.2 s, not 1 s
    else:
        if hasattr(grid, "pull_interval"):
            grid.pull_interval = SIMULATION_POLL
        prompt = grid
    guarded = NodeGuard(prompt, cfg.strategy.min_clients, cfg.strategy.node_timeout)
    try:
        result = strategy.start(grid=guarded, initial_arrays=ArrayRecord(model.state_dict()),
                                num_rounds=cfg.experiment.rounds, evaluate_fn=evaluate_fn)
    except RunFailed as err:  # the federation cannot go on: keep what it finished
        record["status"], record["error"] = "failed", str(err)
        print(f"run failed: {err}", file=sys.stderr)
    except Exception as err:
        record["status"], record["error"] = "failed", f"{type(err).__name__}: {err}"
        raise
    else:
        record["status"] = "finished"
        if capture is not None:
            capture.save_final(result.arrays.to_torch_state_dict())
    finally:
        progress.close()
        record["failures"] = [dataclasses.asdict(f) for f in strategy.failures]
        record["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        record["wall_seconds"] = time.perf_counter() - started
        try:
            write_run(run_dir, record, ledger.entries)
        except OSError as err:  # the last complete record stays; run_experiment says why
            if not out_of_space(err):
                raise
    return record


def key_source(cfg: Config) -> str:
    """Where the clients' keys come from, in words (never a key)."""
    if cfg.client.key_file:
        return "file"
    if cfg.client.key_dir:
        return "per-node files in client.key_dir"
    return "derived from experiment.seed"


def draws_source(cfg: Config) -> str:
    """Where the nodes' random draws come from, in words (never a secret)."""
    if cfg.client.key_file or cfg.client.key_dir:
        return "a secret per node, written beside its key file"
    return "derived from experiment.seed and the node"


FINAL_KEYS = ("test_accuracy", "test_loss", "train_loss", "plain_test_accuracy",
              "plain_test_loss", "epsilon", "validation_accuracy")


def round_row(cfg: Config, strategy: ObservedStrategy, ledger: UpdateLedger, r: int,
              plain_loss: float, plain_acc: float) -> dict:
    """One row of rounds.csv, once round `r` is complete."""
    train = strategy.train_metrics.get(r, {})
    clients = strategy.evaluate_metrics.get(r, {})
    # How clients use the model: accuracy on their disguised test shards. Without a
    # disguise and without client evaluation, the server's plain evaluation is the same.
    central = {"test_accuracy": plain_acc, "test_loss": plain_loss}
    source = clients if "test_accuracy" in clients else (
        central if not cfg.disguised else {})
    return {
        "round": r,
        "train_loss": _number(train.get("train_loss")),
        "test_accuracy": _number(source.get("test_accuracy")),
        "test_loss": _number(source.get("test_loss")),
        "plain_test_accuracy": plain_acc,
        "plain_test_loss": plain_loss,
        # data.validation > 0: the clients' held-out training images (weighted like the test
        # shards); None otherwise.
        "validation_accuracy": _number(clients.get("validation_accuracy")),
        "round_seconds": time.perf_counter() - strategy.round_started[r],
        "bytes_up": strategy.bytes_up.get(r, 0),
        "bytes_down": strategy.bytes_down.get(r, 0),
        "clients": sorted(e.partition_id for e in ledger.entries
                          if e.server_round == r and e.refused is None),
        # DP-SGD: the largest cumulative ε any client reports; central DP: the server's
        # user-level estimate; None without DP.
        "epsilon": central_epsilon(cfg, r) if cfg.dp_mode.central else max(
            (e.epsilon for e in ledger.entries
             if e.server_round == r and e.epsilon is not None), default=None),
    }


def central_epsilon(cfg: Config, rounds: int) -> float | None:
    """User-level ε of central DP after `rounds` rounds: the subsampled Gaussian mechanism
    with sampling rate = sampled clients / clients, RDP accountant (an estimate: Flower
    samples a fixed number of clients, not Poisson). None when no noise is added."""
    from fedisguise.privacy.dp import epsilon
    from strategies import sampled_clients

    if cfg.dp.noise_multiplier <= 0:
        return None
    rate = sampled_clients(cfg.strategy, cfg.experiment.clients) / cfg.experiment.clients
    return epsilon(cfg.dp.noise_multiplier, rate, rounds, cfg.dp.delta)


def _number(value: object) -> float | None:
    """A metric, or None where no client reported it (JSON has no NaN)."""
    return None if value is None else float(value)  # type: ignore[arg-type]


def make_server_app(config: Config | None = None, mode: str = "simulation") -> ServerApp:
    """A ServerApp bound to `config`, or reading it from the run config when None."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if config is not None:
            run_server(grid, config, mode)
            return
        flat = dict(context.run_config)
        cfg = Config.from_flat(flat)
        if flat.get(DRIVER_KEY) == DRIVER:  # run.py's driver adds the figures itself
            run_server(grid, cfg, cfg.experiment.mode)
        else:
            run_for_flwr(grid, cfg)

    return app


def flwr_run_refusal(cfg: Config) -> str | None:
    """What a user's own `flwr run` cannot do with `cfg`, in one line (None: all of it)."""
    from fedisguise.preflight import check_remote

    spec = resolve(cfg).disguise
    if not spec.buildable():
        return (f"`flwr run` cannot prepare disguise {spec.name!r} (it is built before the run, "
                f"and every node must get the result): run `fedisguise run` once, or set the "
                f"disguise's path")
    try:  # the nodes' keys are theirs: attacks need a defence without key or draws
        check_remote(cfg)
    except ConfigError as err:
        return f"`flwr run` cannot run these attacks: {err}; use `fedisguise run`"
    return None


def run_for_flwr(grid: Grid, cfg: Config) -> dict:
    """A user's own `flwr run`: refuse first what cannot be done, train, then add the
    privacy figures and attacks as run.py does. A run that does not finish raises, so that
    Flower records it as failed."""
    from fedisguise.finish import after_training

    refusal = flwr_run_refusal(cfg)
    if refusal is not None:
        print(f"fedisguise: {refusal}", file=sys.stderr)
        raise RuntimeError(refusal)
    started = time.perf_counter()
    record = run_server(grid, cfg, cfg.experiment.mode)
    if record.get("status") != "finished":
        raise RuntimeError(f"run {cfg.experiment.name} {record.get('status')}: "
                           f"{record.get('error')}")
    # The nodes may be anywhere, with key files of their own: the keys count as unknown.
    try:
        return after_training(cfg, record, remote=True,
                              training_seconds=time.perf_counter() - started)
    except Exception as err:  # `flwr run` exits 0 either way: metrics.json says it failed
        from fedisguise.results import rewrite_record

        record["status"] = "failed"
        record["error"] = f"after training: {type(err).__name__}: {err}"
        rewrite_record(cfg.run_dir, record)
        raise


app = make_server_app()
