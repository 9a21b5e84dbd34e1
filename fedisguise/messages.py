"""The layout of what clients reply, shared by the ClientApp and the server's observers.

A train reply holds one ArrayRecord (the model), one MetricRecord (what FedAvg averages) and a
ConfigRecord naming the client: Flower's strategies require exactly one of the first two.
"""

from __future__ import annotations

import hashlib

from flwr.app import ArrayRecord

ARRAYS = "arrays"
METRICS = "metrics"
CLIENT = "client"
NUM_EXAMPLES = "num-examples"
PARTITION_ID = "partition-id"
UPDATE_SHA256 = "update-sha256"
DEVICE = "device"
DP_EPSILON = "dp-epsilon"  # DP-SGD: ε spent by this client over all its rounds so far
DP_EPSILON_ROUND = "dp-epsilon-round"  # ... and in this round alone


def arrays_digest(arrays: ArrayRecord) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes: equal iff the arrays are bit-identical."""
    h = hashlib.sha256()
    for name, array in arrays.items():
        nd = array.numpy()
        h.update(f"{name}|{nd.dtype.str}|{nd.shape}|".encode())
        h.update(nd.tobytes())
    return h.hexdigest()


def arrays_nbytes(arrays: ArrayRecord) -> int:
    """Serialized payload size of an ArrayRecord, as it travels in a Flower message."""
    return sum(len(array.data) for array in arrays.values())
