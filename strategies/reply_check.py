"""What the server checks in a client's train reply before it may reach aggregation.

A weighted average trusts every reply: one NaN turns the global model NaN, one inflated
`num-examples` makes the aggregate that client's model, one broadcastable wrong shape is added
into every element of a tensor. `reply_problem` names the first thing wrong with a reply, or
returns None; `ObservedStrategy` drops a reply with a problem and records why.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import ArrayRecord, Message

from fedisguise.messages import NUM_EXAMPLES


def reply_problem(message: Message, sent: ArrayRecord | None, max_examples: int
                  ) -> str | None:
    """Why this train reply must not be aggregated, or None. `sent`: the model the server
    sent this round (the reply must have its keys, shapes and dtypes); `max_examples`: the
    most examples a node may claim (its partition size where the server knows it)."""
    content = message.content
    if len(content.array_records) != 1 or len(content.metric_records) != 1:
        return (f"expected one array record and one metric record, got "
                f"{len(content.array_records)} and {len(content.metric_records)}")
    (arrays,) = content.array_records.values()
    (metrics,) = content.metric_records.values()
    return _count_problem(metrics.get(NUM_EXAMPLES), max_examples) or _arrays_problem(
        arrays, sent)


def _count_problem(count: object, max_examples: int) -> str | None:
    if count is None:
        return f"no {NUM_EXAMPLES}"
    if isinstance(count, bool) or not isinstance(count, (int, float)):
        return f"{NUM_EXAMPLES} {count!r} is not a number"
    if not math.isfinite(count) or count != int(count):
        return f"{NUM_EXAMPLES} {count:g} is not an integer"
    if count <= 0:
        return f"{NUM_EXAMPLES} {count:g} <= 0"
    if count > max_examples:
        return f"{NUM_EXAMPLES} {count:g} > {max_examples}"
    return None


def _arrays_problem(arrays: ArrayRecord, sent: ArrayRecord | None) -> str | None:
    if sent is not None:
        have, expected = set(arrays.keys()), set(sent.keys())
        missing = [k for k in sent.keys() if k not in have]
        if missing:
            return f"missing {', '.join(missing)}"
        extra = [k for k in arrays.keys() if k not in expected]
        if extra:
            return f"unexpected {', '.join(extra)} (not in the model that was sent)"
    for name, array in arrays.items():
        if sent is not None:
            want = sent[name]
            if tuple(array.shape) != tuple(want.shape):
                return f"shape {tuple(array.shape)} where {tuple(want.shape)} was sent " \
                       f"({name})"
            if array.dtype != want.dtype and not _counter(array.dtype, want.dtype):
                return f"dtype {array.dtype} where {want.dtype} was sent ({name})"
        try:
            values = array.numpy()
        except (ValueError, TypeError) as err:
            return f"{name} cannot be read as an array ({err})"
        if values.dtype.kind in "fc" and not np.isfinite(values).all():
            return f"non-finite values in {name}"
    return None


def _counter(got: str, sent: str) -> bool:
    """An integer buffer (BatchNorm's num_batches_tracked) that the server sent as a float:
    FedAvg averages integer arrays into float64, and the client's model casts them back."""
    return np.dtype(got).kind in "iu" and np.dtype(sent).kind == "f"
