"""Flower ClientApp: find my partition -> disguise it (once) -> train or evaluate -> reply.

Thin by design: data, disguise, model and training live in plain modules. The node's
partition comes from `context.node_config` (`partition-id`, `num-partitions`), which Flower
sets for simulated nodes and `flower-supernode --node-config` sets in deployment.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedisguise import messages as m
from fedisguise.config import Config
from fedisguise.data import ClientData, ImageDataset, client_data
from fedisguise.disguise import build as build_disguise
from fedisguise.models import build_model
from fedisguise.training import evaluate, resolve_device, train_local

# Per-process cache of disguised partitions: Ray actors and SuperNode processes live across
# rounds, so each partition is loaded and disguised once, not once per round.
_PREPARED: dict[tuple, ClientData] = {}


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


def prepared_data(cfg: Config, partition_id: int, num_partitions: int) -> ClientData:
    """This client's train/val split, disguised on the client before any model sees it."""
    d = cfg.data
    cache_key = (partition_id, num_partitions, cfg.experiment.seed, d.dataset, d.data_dir,
                 d.partitioner, d.alpha, d.train_per_client, d.val_fraction, repr(cfg.disguise))
    if cache_key not in _PREPARED:
        plain = client_data(d.dataset, d.data_dir, d.partitioner, d.alpha, cfg.experiment.seed,
                            partition_id, num_partitions, d.train_per_client, d.val_fraction)
        disguise = build_disguise(cfg.disguise)

        def apply(split: ImageDataset) -> ImageDataset:
            images, labels = disguise.apply(split.images, split.labels)
            return ImageDataset(images, labels, split.num_classes)

        _PREPARED[cache_key] = ClientData(train=apply(plain.train), val=apply(plain.val))
    return _PREPARED[cache_key]


def _model_from(msg: Message, cfg: Config, data: ImageDataset) -> torch.nn.Module:
    c, h, _ = data.image_shape
    model = build_model(cfg.model.name, c, data.num_classes, h)
    model.load_state_dict(msg.content[m.ARRAYS].to_torch_state_dict())
    return model


def handle_train(msg: Message, context: Context, cfg: Config) -> Message:
    partition_id, num_partitions = node_partition(context, cfg)
    torch.set_num_threads(max(1, int(cfg.resources.num_cpus)))
    data = prepared_data(cfg, partition_id, num_partitions).train
    model = _model_from(msg, cfg, data)
    server_round = int(msg.content["config"]["server-round"])
    # One seed fixes the training order of every client in every round.
    order_seed = int(np.random.SeedSequence([cfg.experiment.seed, server_round, partition_id])
                     .generate_state(1)[0])
    t = cfg.train
    device = resolve_device(cfg.resources.device)
    loss = train_local(
        model, data, epochs=t.local_epochs, batch_size=t.batch_size, optimizer=t.optimizer,
        lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
        proximal_mu=float(msg.content["config"].get("proximal-mu", 0.0)),
        device=device, generator=torch.Generator().manual_seed(order_seed),
    )
    arrays = ArrayRecord(model.cpu().state_dict())
    content = RecordDict({
        m.ARRAYS: arrays,
        m.METRICS: MetricRecord({"train_loss": loss, m.NUM_EXAMPLES: len(data)}),
        m.CLIENT: ConfigRecord({m.PARTITION_ID: partition_id,
                                m.UPDATE_SHA256: m.arrays_digest(arrays),
                                m.DEVICE: str(device)}),
    })
    return Message(content=content, reply_to=msg)


def handle_evaluate(msg: Message, context: Context, cfg: Config) -> Message:
    partition_id, num_partitions = node_partition(context, cfg)
    data = prepared_data(cfg, partition_id, num_partitions).val
    metrics = {"eval_loss": 0.0, "eval_accuracy": 0.0, m.NUM_EXAMPLES: len(data)}
    if len(data):
        model = _model_from(msg, cfg, data)
        loss, acc = evaluate(model, data, device=resolve_device(cfg.resources.device))
        metrics.update(eval_loss=loss, eval_accuracy=acc)
    return Message(content=RecordDict({m.METRICS: MetricRecord(metrics)}), reply_to=msg)


def make_client_app(config: Config | None = None) -> ClientApp:
    """A ClientApp bound to `config`, or reading it from the run config when None."""
    app = ClientApp()

    def resolve(context: Context) -> Config:
        return config if config is not None else Config.from_flat(dict(context.run_config))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return handle_train(msg, context, resolve(context))

    @app.evaluate()
    def evaluate_(msg: Message, context: Context) -> Message:
        return handle_evaluate(msg, context, resolve(context))

    return app


app = make_client_app()
