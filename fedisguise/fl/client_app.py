"""Flower ClientApp: hand each message to the code that trains or evaluates, and reply.

Thin by design, and light to import: in deployment Flower 1.41's SuperNode starts a fresh
`flwr-clientapp` process for every message, and importing torch alone costs seconds there.
So in deployment the message goes to the node's warm worker
(fedisguise.deployment.supernode.worker: one long-lived process per SuperNode with torch imported
and the disguised partition in memory); in simulation, where Ray actors live across rounds, it is
handled in this process (fedisguise.fl.client_work). A node opts out of the worker with
`--node-config "... warm-worker=false"`.
"""

from __future__ import annotations

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod

from fedisguise.config import Config

WARM_WORKER = "warm-worker"  # node_config entry: false runs every message in its own process


def worker_enabled(node_config: dict) -> bool:
    """Whether a node with this config uses its warm worker (unless `warm-worker` is false)."""
    flag = node_config.get(WARM_WORKER, True)
    return flag if isinstance(flag, bool) else str(flag).strip().lower() not in (
        "false", "0", "no", "off")


def uses_worker(cfg: Config, context: Context) -> bool:
    """Whether this message goes to the node's warm worker (deployment, unless opted out)."""
    return cfg.experiment.mode == "deployment" and worker_enabled(context.node_config)


def reply_content(kind: str, content: RecordDict, context: Context, cfg: Config,
                  validated: bool = True) -> RecordDict:
    """The reply to a `kind` ("train" or "evaluate") message, from the worker (which reads
    and validates the run config itself) or from here (validating `cfg` unless it is)."""
    if uses_worker(cfg, context):
        from fedisguise.fl.worker_link import forward

        return forward(kind, content, context)
    from fedisguise.fl import client_work
    from fedisguise.resolved import resolve

    # validated (from the run config) and its plugins loaded once per process and run
    run = resolve(cfg, scope=context.run_id, validate=not validated)
    handler = client_work.train_reply if kind == "train" else client_work.evaluate_reply
    return handler(content, context, run)


def make_client_app(config: Config | None = None) -> ClientApp:
    """A ClientApp bound to `config`, or reading it from the run config when None."""

    def resolve(context: Context) -> Config:
        """The run's config; from the run config unvalidated (reply_content validates it
        where it is used here; the worker validates its own copy)."""
        if config is not None:
            return config
        return Config.from_flat(dict(context.run_config), validate=False)

    def central_dp_mod(msg: Message, context: Context, call_next) -> Message:
        """A DP mode that clips on the clients (central-client): Flower's clipping mod
        clips the update before it leaves (the server wrapper sends the norm); otherwise a
        pass-through."""
        cfg = resolve(context)
        dp = cfg.dp
        if cfg.dp_mode.clips_on != "client" or msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        mod = fixedclipping_mod if dp.clipping == "fixed" else adaptiveclipping_mod
        return mod(msg, context, call_next)

    app = ClientApp(mods=[central_dp_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return Message(content=reply_content("train", msg.content, context, resolve(context),
                                             validated=config is not None), reply_to=msg)

    @app.evaluate()
    def evaluate_(msg: Message, context: Context) -> Message:
        return Message(content=reply_content("evaluate", msg.content, context,
                                             resolve(context), validated=config is not None),
                       reply_to=msg)

    return app


app = make_client_app()
