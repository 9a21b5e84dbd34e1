"""What a client does with one message: find its partition -> disguise it (once, with its
key) -> train or evaluate, and the reply's content.

Plain functions of (content, context, run), the run resolved once per process
(fedisguise.resolved), so that the same code runs inside Flower's
ClientApp (simulation: a Ray actor) and inside a node's warm worker (deployment:
fedisguise.deployment.supernode.worker), which keeps torch imported and the prepared data in memory
across Flower's one-process-per-message ClientApps. The node's partition comes from
`context.node_config` (`partition-id`, `num-partitions`), which Flower sets for simulated nodes
and `flower-supernode --node-config` sets in deployment.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)

from fedisguise import messages as m
from fedisguise.config import Config
from fedisguise.data.datasets import (
    ImageDataset,
    dataset_fingerprint,
    fingerprints_fixed,
)
from fedisguise.data.partitions import ClientData
from fedisguise.disguise.keys import NODE_KEY_FILE
from fedisguise.faults import corrupt, fault_for
from fedisguise.models import build_model
from fedisguise.node_data import BatchDraws, node_batch_draws, node_data
from fedisguise.resolved import ResolvedRun
from fedisguise.training import (
    BatchTransform,
    evaluate,
    train_local,
    training_order_seed,
)

DP_STATE = "dp-accounting"  # this node's DP-SGD step count, across rounds

# Per-process cache of disguised data: Ray actors and a node's warm worker live across rounds,
# so each partition is loaded and disguised once, not once per round (unless
# client.redisguise = "round"; with "batch" it holds the plain data, and every batch is
# disguised as it is drawn). Bounded by bytes, not entries: an actor serves its share of the
# simulated clients in turn every round, so a count below that share missed on every call
# (8 entries for 10 clients an actor re-disguised every partition every round: h_θ's U-Net
# on all of them), while a byte bound keeps them all where they fit and the most recent
# ones where they do not.
_PREPARED: OrderedDict[tuple, ClientData] = OrderedDict()
PREPARED_MAX_BYTES = 1 << 30


def _nbytes(data: ClientData) -> int:
    return sum(part.images.element_size() * part.images.nelement()
               for part in (data.train, data.test, data.validation) if part is not None)


def node_partition(context: Context, cfg: Config) -> tuple[int, int]:
    """(partition-id, num-partitions) of this node; missing or inconsistent values are errors,
    since a mismatch would silently give clients overlapping or missing data."""
    node = context.node_config
    missing = [k for k in ("partition-id", "num-partitions") if k not in node]
    if missing:
        raise ValueError(
            f"node_config lacks {missing}; start the SuperNode with "
            "--node-config 'partition-id=<i> num-partitions=<n>'"
        )
    partition_id, num_partitions = int(node["partition-id"]), int(node["num-partitions"])
    if num_partitions != cfg.experiment.clients:
        raise ValueError(
            f"this SuperNode has num-partitions={num_partitions} but experiment.clients="
            f"{cfg.experiment.clients}; they must agree"
        )
    return partition_id, num_partitions


_FINGERPRINTS: dict[tuple[str, str], tuple[tuple, tuple]] = {}  # (source, dir): (round, fp)


def round_fingerprint(source: str, data_dir: str, round_token: tuple) -> tuple:
    """The dataset's files' fingerprint, walked once per process and round (a folder of your
    own images may hold many files): a file replaced mid-run is noticed from the next round."""
    seen = _FINGERPRINTS.get((source, data_dir))
    if seen is None or seen[0] != round_token:
        seen = _FINGERPRINTS[(source, data_dir)] = (round_token,
                                                     dataset_fingerprint(source, data_dir))
    return seen[1]


def prepared_data(run: ResolvedRun, context: Context, server_round: int) -> ClientData:
    """This client's train data and test shard, disguised here, under this client's key."""
    cfg = run.cfg
    partition_id, num_partitions = node_partition(context, cfg)
    node_key_file = str(context.node_config.get(NODE_KEY_FILE, ""))
    d, c = cfg.data, cfg.client
    # Everything that changes the prepared data: the settings, the dataset's files, the key
    # and the node's draws secret (fingerprints, so a file rewritten in place is a new entry;
    # the cache holds disguised tensors only, never a key).
    files = round_fingerprint(d.source, d.data_dir, (context.run_id, server_round))
    cache_key = (partition_id, num_partitions, cfg.experiment.seed, d.source, d.data_dir,
                 files, d.partitioner, d.alpha,
                 d.train_per_client, d.test_samples, d.validation, d.union_of,
                 repr(run.disguise),
                 *(k.fingerprint() for k in run.node_keys(partition_id, node_key_file,
                                                          create=True)),
                 c.redisguise, server_round if c.redisguise == "round" else 0)
    if cache_key in _PREPARED:
        _PREPARED.move_to_end(cache_key)
        return _PREPARED[cache_key]
    if c.redisguise == "round":
        _PREPARED.clear()  # only the current round's draw is needed
    with fingerprints_fixed({(d.source, d.data_dir): files}):  # this round's walk, once
        data = node_data(run, partition_id, server_round, node_key_file, is_node=True)
    _PREPARED[cache_key] = ClientData(train=data.train, test=data.test,
                                      validation=data.validation)
    while len(_PREPARED) > 1 and sum(map(_nbytes, _PREPARED.values())) > PREPARED_MAX_BYTES:
        _PREPARED.popitem(last=False)
    return _PREPARED[cache_key]


def _model_from(content: RecordDict, cfg: Config, data: ImageDataset) -> torch.nn.Module:
    c, h, w = data.image_shape
    model = build_model(cfg.model.name, c, data.num_classes, (h, w))
    model.load_state_dict(content[m.ARRAYS].to_torch_state_dict())
    return model


def handle_train(msg: Message, context: Context, run: ResolvedRun) -> Message:
    return Message(content=train_reply(msg.content, context, run), reply_to=msg)


def handle_evaluate(msg: Message, context: Context, run: ResolvedRun) -> Message:
    return Message(content=evaluate_reply(msg.content, context, run), reply_to=msg)


def batch_draws(run: ResolvedRun, context: Context) -> BatchDraws | None:
    """This node's per-batch disguise where client.redisguise = "batch" (built per message,
    so that the data cache never holds a key), else None: the prepared data is disguised."""
    if run.cfg.client.redisguise != "batch":
        return None
    partition_id, _ = node_partition(context, run.cfg)
    return node_batch_draws(run, partition_id, str(context.node_config.get(NODE_KEY_FILE, "")),
                            is_node=True)


def train_reply(content: RecordDict, context: Context, run: ResolvedRun) -> RecordDict:
    """Train the received model on this node's disguised partition; the reply's content."""
    cfg = run.cfg
    partition_id, _ = node_partition(context, cfg)
    torch.set_num_threads(max(1, int(cfg.resources.num_cpus)))
    server_round = int(content["config"]["server-round"])
    data = prepared_data(run, context, server_round).train
    draws = batch_draws(run, context)
    transform = draws.training(server_round) if draws else None
    model = _model_from(content, cfg, data)
    # One seed fixes the training order of every client in every round.
    order_seed = training_order_seed(cfg.experiment.seed, server_round, partition_id)
    t, device = cfg.train, run.device
    extra: dict[str, float] = {}
    if cfg.dp_mode.per_example:
        loss, extra = _train_dp_round(model, data, cfg, context, order_seed, device,
                                      transform)
    else:
        loss = train_local(
            model, data, epochs=t.local_epochs, batch_size=t.batch_size, optimizer=t.optimizer,
            lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
            proximal_mu=float(content["config"].get("proximal-mu", 0.0)),
            device=device, generator=torch.Generator().manual_seed(order_seed),
            max_steps=t.local_steps, batch_transform=transform,
        )
    state, num_examples = model.cpu().state_dict(), len(data)
    fault = fault_for(cfg.faults, partition_id, server_round)
    if fault is not None:  # a faulty client on purpose: it trained, then corrupts its reply
        state, num_examples = corrupt(fault, state, num_examples)
    arrays = ArrayRecord(state)
    return RecordDict({
        m.ARRAYS: arrays,
        m.METRICS: MetricRecord({"train_loss": loss, m.NUM_EXAMPLES: num_examples, **extra}),
        m.CLIENT: ConfigRecord({m.PARTITION_ID: partition_id,
                                m.UPDATE_SHA256: m.arrays_digest(arrays),
                                m.DEVICE: str(device)}),
    })


def _train_dp_round(model: torch.nn.Module, data: ImageDataset, cfg: Config, context: Context,
                    seed: int, device: torch.device, transform: BatchTransform | None
                    ) -> tuple[float, dict[str, float]]:
    """One DP-SGD round; ε for this round and over every round this node trained, with the
    node's step count kept in its persistent `context.state`."""
    # Opacus takes ~2 s to import: only DP-SGD runs pay for it.
    from fedisguise.privacy.dp import epsilon, planned_noise, steps_per_round, train_dp

    t, dp = cfg.train, cfg.dp
    sample_rate = min(1.0, t.batch_size / len(data))
    per_round = steps_per_round(len(data), t.batch_size, t.local_epochs, t.local_steps)
    sigma = dp.noise_multiplier if not dp.target_epsilon else planned_noise(
        dp.target_epsilon, dp.delta, sample_rate, per_round * cfg.experiment.rounds)
    loss, steps = train_dp(model, data, epochs=t.local_epochs, batch_size=t.batch_size,
                           optimizer=t.optimizer, lr=t.lr, momentum=t.momentum,
                           weight_decay=t.weight_decay, noise_multiplier=sigma,
                           max_grad_norm=dp.max_grad_norm, device=device, seed=seed,
                           max_steps=t.local_steps, batch_transform=transform)
    before = int(context.state[DP_STATE]["steps"]) if DP_STATE in context.state else 0
    context.state[DP_STATE] = MetricRecord({"steps": before + steps})
    return loss, {
        m.DP_EPSILON_ROUND: epsilon(sigma, sample_rate, steps, dp.delta),
        m.DP_EPSILON: epsilon(sigma, sample_rate, before + steps, dp.delta),
        "dp-noise-multiplier": sigma, "dp-steps": float(steps),
    }


def evaluate_reply(content: RecordDict, context: Context, run: ResolvedRun) -> RecordDict:
    """Accuracy of the global model on this client's test shard, disguised as clients use it,
    and on its validation split where it holds one out; the reply's content."""
    cfg, server_round = run.cfg, int(content["config"]["server-round"])
    prepared = prepared_data(run, context, server_round)
    data, device = prepared.test, run.device
    model = _model_from(content, cfg, data)
    draws = batch_draws(run, context)

    def fresh(split: str) -> dict:
        """Freshly disguised batches of the training batch size, as the VisualMixer authors
        evaluate (the batch is what their attention averages over); else the prepared split."""
        return {} if draws is None else {"batch_size": cfg.train.batch_size,
                                         "batch_transform": draws.evaluation(split, server_round)}

    loss, acc = evaluate(model, data, device=device, **fresh("test"))
    metrics = {"test_loss": loss, "test_accuracy": acc, m.NUM_EXAMPLES: len(data)}
    if prepared.validation is not None:
        metrics["validation_loss"], metrics["validation_accuracy"] = evaluate(
            model, prepared.validation, device=device, **fresh("validation"))
    return RecordDict({m.METRICS: MetricRecord(metrics)})
