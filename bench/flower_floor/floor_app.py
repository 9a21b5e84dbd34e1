"""Flower's own floor: what a deployment round costs when the ClientApp does no work.

The ClientApp imports nothing beyond Flower and NumPy and sends the received arrays back; the
ServerApp runs FedAvg with arrays of the shapes in the run config's `shapes` (JSON; the bench
passes the model's, so the same bytes travel as in fedisguise's run), polls replies like fedisguise's ServerApp (strategies.PromptGrid) and
writes each round's seconds, measured as fedisguise measures them (from the start of the train
phase to the end of the evaluate phase), to the JSON file in the run config's `timings`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

client = ClientApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    return Message(content=RecordDict({
        "arrays": msg.content["arrays"],
        "metrics": MetricRecord({"num-examples": 1}),
    }), reply_to=msg)


@client.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return Message(content=RecordDict({"metrics": MetricRecord({"num-examples": 1})}),
                   reply_to=msg)


class TimedFedAvg(FedAvg):
    """FedAvg that notes when each round's train phase starts and its evaluate phase ends."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.started: dict[int, float] = {}
        self.seconds: dict[int, float] = {}

    def configure_train(self, server_round, arrays, config, grid):
        self.started[server_round] = time.perf_counter()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        result = super().aggregate_evaluate(server_round, replies)
        self.seconds[server_round] = time.perf_counter() - self.started[server_round]
        return result


server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    # fedisguise's reply polling and object-pull retries, installed beside it
    from fedisguise.fl.flower_timing import shorten_retries
    from strategies import POLL_INTERVAL, PromptGrid

    shorten_retries(POLL_INTERVAL)

    rounds, clients = int(context.run_config["rounds"]), int(context.run_config["clients"])
    rng = np.random.default_rng(0)
    shapes = json.loads(str(context.run_config["shapes"]))
    arrays = ArrayRecord({name: Array(rng.standard_normal(shape).astype(np.float32))
                          for name, shape in shapes.items()})
    strategy = TimedFedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=clients,
                           min_evaluate_nodes=clients, min_available_nodes=clients)
    while len(list(grid.get_node_ids())) < clients:
        time.sleep(0.2)
    strategy.start(grid=PromptGrid(grid), initial_arrays=arrays, num_rounds=rounds,
                   train_config=ConfigRecord({}))
    out = str(context.run_config["timings"])
    if out:
        Path(out).write_text(json.dumps({"round_seconds": strategy.seconds}))
