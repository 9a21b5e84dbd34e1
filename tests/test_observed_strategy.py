"""The observer contract: one update per sampled client per round, exactly as the client sent it."""

from collections import defaultdict

import numpy as np
import torch
from flwr.app import Context, MessageType, RecordDict
from flwr.serverapp import Grid

from fedisguise import messages as m
from fedisguise.fl.client_work import handle_evaluate, handle_train
from fedisguise.models import build_model
from fedisguise.resolved import resolve
from strategies import UpdateLedger, build_strategy
from tests.conftest import synthetic_config


class LoopbackGrid(Grid):
    """Delivers each message straight to the client handlers in this process, and keeps a
    copy of every train reply as the client produced it."""

    def __init__(self, cfg, num_nodes):
        self.cfg = cfg
        self.partition_of = {1000 + i: i for i in range(num_nodes)}
        self.sampled = defaultdict(list)
        self.sent = defaultdict(dict)

    def set_run(self, run):
        pass

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, *args, **kwargs):
        raise NotImplementedError

    def get_node_ids(self):
        return list(self.partition_of)

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            ctx = Context(run_id=7, node_id=node, state=RecordDict(), run_config={},
                          node_config={"partition-id": self.partition_of[node],
                                       "num-partitions": len(self.partition_of)})
            if msg.metadata.message_type == MessageType.TRAIN:
                reply = handle_train(msg, ctx, resolve(self.cfg))
                rnd = int(msg.content["config"]["server-round"])
                self.sampled[rnd].append(node)
                self.sent[rnd][node] = {k: v.numpy().copy()
                                        for k, v in reply.content[m.ARRAYS].items()}
            else:
                reply = handle_evaluate(msg, ctx, resolve(self.cfg))
            replies.append(reply)
        return replies


class Recorder:
    def __init__(self):
        self.updates = []

    def observe(self, update):
        self.updates.append(update)


def test_each_observer_sees_one_bit_identical_update_per_sampled_client(tmp_path, task_identity):
    cfg = synthetic_config(tmp_path, **{"strategy.fraction_train": 0.5,
                                        "data.train_per_client": 64, "experiment.clients": 4})
    grid = LoopbackGrid(cfg, num_nodes=4)
    first, second, ledger = Recorder(), Recorder(), UpdateLedger()
    strategy = build_strategy(cfg.strategy, 4, observers=[first, second, ledger])
    model = build_model("lenet", 1, 10, 28)
    from flwr.app import ArrayRecord

    strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=3)

    for observer in (first, second):
        seen = defaultdict(list)
        for u in observer.updates:
            seen[u.server_round].append(u.node_id)
        assert set(seen) == {1, 2, 3}
        for rnd, nodes in seen.items():
            assert len(grid.sampled[rnd]) == 2  # half of four nodes were sampled
            assert sorted(nodes) == sorted(grid.sampled[rnd])  # one each, no more, no less
        for u in observer.updates:
            assert u.partition_id == grid.partition_of[u.node_id]
            sent = grid.sent[u.server_round][u.node_id]
            assert list(u.arrays.keys()) == list(sent)
            for name, array in u.arrays.items():
                received = array.numpy()
                assert received.dtype == sent[name].dtype
                assert np.array_equal(received, sent[name])
    assert all(e.sha256 == e.client_sha256 for e in ledger.entries)
    assert len(ledger.entries) == 6
    assert all(strategy.bytes_up[r] > 0 and strategy.bytes_down[r] > 0 for r in (1, 2, 3))


def test_observers_see_updates_before_aggregation(tmp_path, task_identity):
    cfg = synthetic_config(tmp_path, **{"data.train_per_client": 32})
    grid = LoopbackGrid(cfg, num_nodes=2)
    order = []

    class Spy(Recorder):
        def observe(self, update):
            order.append("observe")

    strategy = build_strategy(cfg.strategy, 2, observers=[Spy()])
    inner_aggregate = strategy.inner.aggregate_train

    def aggregate(server_round, replies):
        order.append("aggregate")
        return inner_aggregate(server_round, replies)

    strategy.inner.aggregate_train = aggregate
    from flwr.app import ArrayRecord

    strategy.start(grid=grid, initial_arrays=ArrayRecord(build_model("lenet", 1, 10, 28)
                                                         .state_dict()), num_rounds=1)
    assert order == ["observe", "observe", "aggregate"]


class ShuffledGrid(LoopbackGrid):
    """Replies arrive in the reverse of the order they were sent in."""

    def send_and_receive(self, messages, *, timeout=None):
        return list(reversed(super().send_and_receive(messages, timeout=timeout)))


def test_replies_are_aggregated_in_partition_order_whatever_order_they_arrive_in(
        tmp_path, task_identity):
    """A weighted mean's float sum depends on its order: metrics aggregated in arrival order
    moved the last digit of a run's accuracy between two runs with the same seed."""
    from flwr.app import ArrayRecord

    cfg = synthetic_config(tmp_path, **{"data.train_per_client": 32, "experiment.clients": 4})
    orders = {}
    for grid in (LoopbackGrid(cfg, num_nodes=4), ShuffledGrid(cfg, num_nodes=4)):
        strategy = build_strategy(cfg.strategy, 4)
        seen = []
        for phase in ("aggregate_train", "aggregate_evaluate"):
            inner = getattr(strategy.inner, phase)

            def spy(server_round, replies, inner=inner, phase=phase):
                replies = list(replies)
                seen.append((phase, [grid.partition_of[r.metadata.src_node_id]
                                     for r in replies]))
                return inner(server_round, replies)

            setattr(strategy.inner, phase, spy)
        torch.manual_seed(0)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(build_model("lenet", 1, 10, 28)
                                                             .state_dict()), num_rounds=2)
        orders[type(grid).__name__] = (seen, {r: dict(metrics) for r, metrics
                                              in strategy.evaluate_metrics.items()})
    assert all(partitions == [0, 1, 2, 3] for _, partitions in orders["ShuffledGrid"][0])
    assert orders["ShuffledGrid"] == orders["LoopbackGrid"]
