"""The server checks every train reply before aggregation (issue 37, point 1): two honest
replies and one crafted one, through ObservedStrategy(FedAvg) as the server app drives it."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedisguise import messages as m
from fedisguise.models import build_model
from strategies import RunFailed, UpdateLedger, build_strategy
from tests.conftest import synthetic_config
from tests.test_observed_strategy import LoopbackGrid, Recorder

NODES = (1000, 1001, 1002)  # LoopbackGrid's node ids for three nodes
PARTITION = 250  # data.train_per_client: every node's partition size, known to the server


def reply(to: Message, state: dict, count, partition: int) -> Message:
    arrays = ArrayRecord(state)  # a PyTorch state dict, as clients send it
    return Message(content=RecordDict({
        m.ARRAYS: arrays,
        m.METRICS: MetricRecord({"train_loss": 0.5, m.NUM_EXAMPLES: count}),
        m.CLIENT: ConfigRecord({m.PARTITION_ID: partition}),
    }), reply_to=to)


def honest(seed: int) -> dict:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in build_model("lenet", 1, 10, 28).state_dict().items()}


@pytest.fixture
def round_one(tmp_path, task_identity):
    """The strategy after configure_train of round 1: (strategy, messages sent, observers)."""
    cfg = synthetic_config(tmp_path, **{"data.train_per_client": PARTITION,
                                        "experiment.clients": 3})
    recorder, ledger = Recorder(), UpdateLedger()
    strategy = build_strategy(cfg.strategy, 3, observers=[recorder, ledger],
                              max_examples=PARTITION)
    global_state = honest(0)
    sent = list(strategy.configure_train(1, ArrayRecord(global_state), ConfigRecord(),
                                         LoopbackGrid(cfg, 3)))
    assert sorted(msg.metadata.dst_node_id for msg in sent) == list(NODES)
    return strategy, sorted(sent, key=lambda msg: msg.metadata.dst_node_id), recorder, ledger


def honest_mean() -> dict:
    a, b = honest(1), honest(2)
    return {k: (a[k].double() + b[k].double()) / 2 for k in a}


def aggregate_with(round_one, crafted: dict, count=PARTITION):
    strategy, sent, recorder, ledger = round_one
    replies = [reply(sent[0], honest(1), PARTITION, 0), reply(sent[1], honest(2), PARTITION, 1),
               reply(sent[2], crafted, count, 2)]
    arrays, _ = strategy.aggregate_train(1, replies)
    return arrays.to_torch_state_dict(), strategy, recorder, ledger


def bad(**change) -> dict:
    state = honest(3)
    state.update(change)
    return state


CASES = {
    "nan": (lambda: bad(**{"features.0.weight": torch.full((6, 1, 5, 5), float("nan"))}),
            PARTITION, "non-finite values in features.0.weight"),
    "inf": (lambda: bad(**{"classifier.5.bias": torch.tensor([float("inf")] * 10)}), PARTITION,
            "non-finite values in classifier.5.bias"),
    "huge count": (lambda: {k: torch.zeros_like(v) for k, v in honest(3).items()}, 1e12,
                   f"num-examples 1e+12 > {PARTITION}"),
    "negative count": (lambda: honest(3), -300, "num-examples -300 <= 0"),
    "zero count": (lambda: honest(3), 0, "num-examples 0 <= 0"),
    "nan count": (lambda: honest(3), float("nan"), "num-examples nan is not an integer"),
    "fractional count": (lambda: honest(3), 12.5, "num-examples 12.5 is not an integer"),
    "broadcastable shape": (lambda: bad(**{"features.0.weight": torch.ones(1)}), PARTITION,
                            "shape (1,) where (6, 1, 5, 5) was sent (features.0.weight)"),
    "other shape": (lambda: bad(**{"features.0.weight": torch.ones(3, 3)}), PARTITION,
                    "shape (3, 3) where (6, 1, 5, 5) was sent (features.0.weight)"),
    "missing key": (lambda: {k: v for k, v in honest(3).items() if k != "classifier.5.bias"},
                    PARTITION, "missing classifier.5.bias"),
    "extra key": (lambda: bad(**{"backdoor": torch.ones(2)}), PARTITION,
                  "unexpected backdoor (not in the model that was sent)"),
    "dtype": (lambda: bad(**{"classifier.5.bias": torch.zeros(10, dtype=torch.float64)}), PARTITION,
              "dtype float64 where float32 was sent (classifier.5.bias)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_reply_is_dropped_recorded_and_still_observed(round_one, case):
    make, count, reason = CASES[case]
    aggregate, strategy, recorder, ledger = aggregate_with(round_one, make(), count)
    mean = honest_mean()
    for k, v in aggregate.items():  # the round went on with the two honest replies
        assert torch.allclose(v.double(), mean[k], atol=1e-6), k
    (failure,) = strategy.failures
    assert (failure.server_round, failure.phase, failure.node_id) == (1, "train", NODES[2])
    assert failure.error == f"reply refused: {reason}"
    # The observers saw the refused reply as it arrived, where it reads as an update
    # (a NaN count cannot be one); the ledger marks it refused.
    seen = {u.node_id: u for u in recorder.updates}
    assert set(seen) >= {NODES[0], NODES[1]}
    if case != "nan count":
        assert seen[NODES[2]].refused == reason
        assert [e.refused for e in ledger.entries if e.node_id == NODES[2]] == [reason]
    assert all(e.refused is None for e in ledger.entries if e.node_id != NODES[2])


def test_honest_replies_pass_and_an_inflated_count_cannot_take_the_aggregate(round_one):
    """Today's attack, checked against what the aggregate would be: a model of zeros with a
    count of 1e12 made FedAvg's aggregate that model; now it is the honest mean."""
    aggregate, strategy, _, _ = aggregate_with(round_one, honest(3), PARTITION)
    assert strategy.failures == []
    three = [honest(1), honest(2), honest(3)]
    for k, v in aggregate.items():
        assert torch.allclose(v.double(), sum(s[k].double() for s in three) / 3, atol=1e-6)


def test_a_round_where_every_reply_is_refused_ends_the_run_naming_the_reason(round_one):
    strategy, sent, _, _ = round_one
    nan = bad(**{"features.0.weight": torch.full((6, 1, 5, 5), float("nan"))})
    with pytest.raises(RunFailed, match="no client trained .3 failed; first error: reply "
                                        "refused: non-finite values in features.0.weight"):
        strategy.aggregate_train(1, [reply(msg, nan, PARTITION, i) for i, msg in enumerate(sent)])


def test_without_a_known_partition_size_the_cap_is_strategy_max_examples(tmp_path, task_identity):
    cfg = synthetic_config(tmp_path, **{"strategy.max_examples": 500, "experiment.clients": 3})
    # as the server builds it: data.train_per_client 0 fixes no partition size
    strategy = build_strategy(cfg.strategy, 3, max_examples=cfg.data.train_per_client)
    sent = sorted(strategy.configure_train(1, ArrayRecord(honest(0)), ConfigRecord(),
                                           LoopbackGrid(cfg, 3)),
                  key=lambda msg: msg.metadata.dst_node_id)
    strategy.aggregate_train(1, [reply(sent[0], honest(1), 500, 0),
                                 reply(sent[1], honest(2), 501, 1)])
    assert [f.error for f in strategy.failures] == ["reply refused: num-examples 501 > 500"]


def test_max_examples_must_be_positive(tmp_path):
    from fedisguise.config import ConfigError

    with pytest.raises(ConfigError, match="strategy.max_examples"):
        synthetic_config(tmp_path, **{"strategy.max_examples": 0})


def test_integer_buffers_are_not_checked_for_finiteness(task_identity):
    """A finite-check must not be fooled by integer buffers (BatchNorm's counters)."""
    from strategies.reply_check import reply_problem

    sent = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32)),
                        "n": Array(np.zeros((), dtype=np.int64))})
    ok = Message(content=RecordDict({
        m.ARRAYS: ArrayRecord({"w": Array(np.ones(3, dtype=np.float32)),
                               "n": Array(np.array(7, dtype=np.int64))}),
        m.METRICS: MetricRecord({m.NUM_EXAMPLES: 5})}), dst_node_id=1, message_type="train")
    assert reply_problem(ok, sent, 10) is None


def test_an_integer_counter_may_come_back_as_the_model_holds_it(task_identity):
    """FedAvg averages BatchNorm's int64 counters into float64, so from round 2 the server
    sends a float where the client's model replies with its own int64: not a wrong dtype.
    A float where an integer was sent still is."""
    from strategies.reply_check import reply_problem

    def with_counter(dtype):
        return Message(content=RecordDict({
            m.ARRAYS: ArrayRecord({"n": Array(np.array(7, dtype=dtype))}),
            m.METRICS: MetricRecord({m.NUM_EXAMPLES: 5})}), dst_node_id=1, message_type="train")

    averaged = ArrayRecord({"n": Array(np.array(7.0, dtype=np.float64))})
    assert reply_problem(with_counter(np.int64), averaged, 10) is None
    counter = ArrayRecord({"n": Array(np.array(7, dtype=np.int64))})
    assert reply_problem(with_counter(np.float32), counter, 10) == \
        "dtype float32 where int64 was sent (n)"
