"""The observed strategy: where every client update reaches the server's attackers.

`ObservedStrategy` wraps any message-based Flower strategy (FedAvg, FedProx, a DP wrapper ...).
Before the wrapped strategy aggregates, each received train reply is handed, exactly as it
arrived, to every registered observer, and checked (`strategies.reply_check`): a reply with
non-finite values, another model's keys, shapes or dtypes, or an impossible `num-examples` is
recorded as a failure and left out of the aggregate. Only `aggregate_train` gains behaviour;
`start()` is Flower's own, never copied.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Protocol

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from tqdm.auto import tqdm

from fedisguise.messages import (
    CLIENT,
    DEVICE,
    DP_EPSILON,
    NUM_EXAMPLES,
    PARTITION_ID,
    UPDATE_SHA256,
    arrays_digest,
    arrays_nbytes,
)
from fedisguise.results import describe_failure
from strategies.liveness import RunFailed
from strategies.reply_check import reply_problem


@dataclass(frozen=True)
class ReceivedUpdate:
    """One client's train reply as the server holds it; `arrays` is the received record itself."""

    server_round: int
    node_id: int
    partition_id: int | None
    num_examples: int
    arrays: ArrayRecord
    metrics: MetricRecord
    message: Message
    global_arrays: ArrayRecord | None = None  # the model the server sent for this round
    refused: str | None = None  # why the server left it out of the aggregate (reply_check)


class UpdateObserver(Protocol):
    def observe(self, update: ReceivedUpdate) -> None: ...


@dataclass(frozen=True)
class ClientFailure:
    """A reply that came back as an error (a client that crashed, a node that died) or that
    the server refused to aggregate (`strategies.reply_check`)."""

    server_round: int
    phase: str  # "train", "evaluate", or "connect" (the node vanished between rounds)
    node_id: int
    partition_id: int | None  # None when the node never replied successfully before
    error: str  # the last line of the client's error


def client_order(item: ReceivedUpdate | ClientFailure) -> tuple[bool, int, int]:
    """By partition, then node; clients of unknown partition last."""
    return item.partition_id is None, item.partition_id or 0, item.node_id


class ObservedStrategy(Strategy):
    """Delegates to `inner`; hands train replies to observers first; counts bytes and time;
    records every failed reply, and ends the run when no client trained in a round."""

    def __init__(self, inner: Strategy, observers: Iterable[UpdateObserver],
                 max_examples: int) -> None:
        self.inner = inner
        self.max_examples = max_examples  # the most examples one reply may claim
        self.observers: list[UpdateObserver] = list(observers)
        self.bytes_down: dict[int, int] = {}
        self.bytes_up: dict[int, int] = {}
        self.round_started: dict[int, float] = {}
        self.sent_arrays: dict[int, ArrayRecord] = {}
        self.failures: list[ClientFailure] = []
        self.train_metrics: dict[int, MetricRecord] = {}
        self.evaluate_metrics: dict[int, MetricRecord] = {}
        self._partitions: dict[int, int] = {}  # node id -> partition id, from good replies
        self._connected: set[int] = set()
        self._sent: list[Message] = []

    def add_observer(self, observer: UpdateObserver) -> None:
        self.observers.append(observer)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.round_started[server_round] = time.perf_counter()
        self.sent_arrays = {server_round: arrays}  # only the current round's is kept
        self._sent = []  # this round's messages: an error reply may not name its node
        nodes = set(grid.get_node_ids())
        gone = sorted(self._connected - nodes)
        for node in gone:  # a node that vanished between rounds sends no error reply
            self._record(ClientFailure(server_round, "connect", node, self._partitions.get(node),
                                       "disconnected before this round"))
        self._connected = nodes
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        self._count_down(server_round, messages)
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        # A one-shot iterator in Flower; observers and inner both read it. Sorted by partition
        # so that aggregation (a float sum) does not depend on the order replies arrived in.
        replies = list(replies)
        sent = self.sent_arrays.get(server_round)
        updates, refused = [], []
        for msg in replies:
            if msg.has_error():
                continue
            problem = reply_problem(msg, sent, self.max_examples)
            if problem is None:
                updates.append(_to_update(server_round, msg, sent))
            else:
                refused.append((msg, problem))
        updates.sort(key=client_order)
        errors = [msg for msg in replies if msg.has_error()]
        for update in updates:
            if update.partition_id is not None:
                self._partitions[update.node_id] = update.partition_id
        self._record_failures(server_round, "train", errors)
        self._record_refused(server_round, refused)
        # Observers see every reply as it arrived, refused ones too, where it has the shape
        # of an update: the server records what it got even when it will not aggregate it.
        received = updates + [u for u in (_readable(server_round, msg, sent, problem)
                                          for msg, problem in refused) if u is not None]
        for update in sorted(received, key=client_order):
            self.bytes_up[server_round] = self.bytes_up.get(server_round, 0) + arrays_nbytes(
                update.arrays)
            for observer in self.observers:
                observer.observe(update)
        if not updates:
            failed = len(errors) + len(refused)
            raise RunFailed(f"round {server_round}: no client trained ({failed} failed"
                            + (f"; first error: {self.failures[-failed].error}"
                               if failed else ", none replied") + ")")
        arrays, metrics = self.inner.aggregate_train(
            server_round, [u.message for u in updates] + errors)
        if arrays is None:  # Flower would keep the old model and go on as if it trained
            raise RunFailed(f"round {server_round}: the strategy aggregated nothing from "
                            f"{len(updates)} accepted replies (Bulyan needs 4 x "
                            f"strategy.num_malicious + 3)")
        if metrics is not None:
            self.train_metrics[server_round] = metrics
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        messages = list(self.inner.configure_evaluate(server_round, arrays, config, grid))
        self._count_down(server_round, messages)
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        # In partition order, as train replies are: a weighted mean's float sum must not
        # depend on the order replies arrived in (it moved the last digit between runs).
        replies = sorted(replies, key=self._partition_order)
        self._record_failures(server_round, "evaluate",
                              [msg for msg in replies if msg.has_error()])
        metrics = self.inner.aggregate_evaluate(server_round, replies)
        if metrics is not None:
            self.evaluate_metrics[server_round] = metrics
        return metrics

    def _partition_order(self, msg: Message) -> tuple[bool, int, int]:
        """A reply's place: by its node's partition (known from its train replies), then
        by node id."""
        node = msg.metadata.src_node_id
        partition = self._partitions.get(node)
        return partition is None, partition or 0, node

    def _record_failures(self, server_round: int, phase: str, errors: list[Message]) -> None:
        # The grid gives each message its id when it sends it; the SuperLink answers for a
        # node that died under its own id, so the reply's recipient names the node.
        sent_to = {m.metadata.message_id: m.metadata.dst_node_id for m in self._sent}
        failures = []
        for msg in errors:
            node = sent_to.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)
            reason = (msg.error.reason or "").strip() or f"error code {msg.error.code}"
            failures.append(ClientFailure(server_round, phase, node, self._partitions.get(node),
                                          reason.splitlines()[-1]))
        # In client order, not arrival order: the record is the same on every run.
        for failure in sorted(failures, key=client_order):
            self._record(failure)

    def _record_refused(self, server_round: int, refused: list[tuple[Message, str]]) -> None:
        failures = []
        for msg, problem in refused:
            node = msg.metadata.src_node_id
            # The partition a good reply from this node gave; else the one this reply names
            # (a node faulty from round 1 never sent a good one).
            partition = self._partitions.get(node, _declared_partition(msg))
            failures.append(ClientFailure(server_round, "train", node, partition,
                                          f"reply refused: {problem}"))
        for failure in sorted(failures, key=client_order):
            self._record(failure)

    def _record(self, failure: ClientFailure) -> None:
        self.failures.append(failure)
        tqdm.write(describe_failure(asdict(failure)), file=sys.stderr)

    def summary(self) -> None:
        self.inner.summary()

    def _count_down(self, server_round: int, messages: list[Message]) -> None:
        self._sent += messages
        sent = sum(arrays_nbytes(rec) for m in messages for rec in m.content.array_records.values())
        self.bytes_down[server_round] = self.bytes_down.get(server_round, 0) + sent


def _declared_partition(message: Message) -> int | None:
    """The partition id a reply says it comes from, where it says one that is an integer."""
    try:
        value = message.content.config_records[CLIENT][PARTITION_ID]
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    except (KeyError, TypeError):
        return None


def _readable(server_round: int, message: Message, sent: ArrayRecord | None, problem: str
              ) -> ReceivedUpdate | None:
    """A refused reply as an update, where it has one array record and a numeric count."""
    try:
        return replace(_to_update(server_round, message, sent), refused=problem)
    except (KeyError, ValueError, TypeError, OverflowError):
        return None


def _to_update(server_round: int, message: Message, sent: ArrayRecord | None
               ) -> ReceivedUpdate:
    content = message.content
    (arrays,) = content.array_records.values()
    (metrics,) = content.metric_records.values()
    client = content.config_records.get(CLIENT, ConfigRecord())
    partition = client.get(PARTITION_ID)
    return ReceivedUpdate(
        server_round=server_round,
        node_id=message.metadata.src_node_id,
        partition_id=int(partition) if partition is not None else None,
        num_examples=int(metrics[NUM_EXAMPLES]),
        arrays=arrays,
        metrics=metrics,
        message=message,
        global_arrays=sent,
    )


@dataclass
class LedgerEntry:
    server_round: int
    node_id: int
    partition_id: int | None
    num_examples: int
    sha256: str
    client_sha256: str | None  # what the client says it sent; equal to sha256 unless altered
    client_device: str | None  # where the client trained (cpu, cuda:0, ...)
    epsilon: float | None = None  # DP-SGD: ε the client reports having spent in all (or None)
    refused: str | None = None  # why the server did not aggregate it; None: aggregated


class UpdateLedger:
    """Records who contributed what in each round, with digests of the arrays as received."""

    def __init__(self) -> None:
        self.entries: list[LedgerEntry] = []

    def observe(self, update: ReceivedUpdate) -> None:
        client = update.message.content.config_records.get(CLIENT, ConfigRecord())
        claimed = client.get(UPDATE_SHA256)
        self.entries.append(LedgerEntry(
            server_round=update.server_round,
            node_id=update.node_id,
            partition_id=update.partition_id,
            num_examples=update.num_examples,
            sha256=arrays_digest(update.arrays),
            client_sha256=str(claimed) if claimed is not None else None,
            client_device=str(client[DEVICE]) if DEVICE in client else None,
            epsilon=float(update.metrics[DP_EPSILON]) if DP_EPSILON in update.metrics else None,
            refused=update.refused,
        ))
