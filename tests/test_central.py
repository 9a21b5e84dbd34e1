"""Centralised training beside FL (issue 38, point 5): one client holding the union of what
the federation's clients hold (`data.union_of`), for the papers' own setting."""

import numpy as np
import pytest

from fedisguise.config import Config, ConfigError
from fedisguise.data.partitions import client_data, train_indices, unassigned_train_indices

ARGS = ("synthetic", "", "dirichlet", 0.5, 3)  # dataset, data_dir, partitioner, alpha, seed


def test_the_central_client_holds_exactly_the_federations_images():
    federation = [train_indices(*ARGS, pid, 4, 50) for pid in range(4)]
    union = train_indices(*ARGS, 0, 1, 50, union_of=4)
    assert sorted(union) == sorted(np.concatenate(federation))
    assert len(union) == sum(len(f) for f in federation) == 200
    # what no client holds stays the same, so membership candidates do too
    assert np.array_equal(unassigned_train_indices(*ARGS, 4, 50),
                          unassigned_train_indices(*ARGS, 1, 50, union_of=4))
    central = client_data(*ARGS, 0, 1, 50, validation=0.1, union_of=4)
    assert len(central.train) == 180 and len(central.validation) == 20
    held = set(map(tuple, central.validation.images.flatten(1).numpy().round(5)))
    assert not held & set(map(tuple, central.train.images.flatten(1).numpy().round(5)))


def test_a_union_needs_one_client():
    with pytest.raises(ValueError, match="needs 1 partition, got 2"):
        train_indices(*ARGS, 0, 2, 50, union_of=4)
    with pytest.raises(ConfigError, match="data.union_of must be 0, or >= 2 with "
                                          "experiment.clients = 1"):
        Config().with_overrides(["data.union_of=20", "experiment.clients=2"])
    assert Config().with_overrides(["data.union_of=20", "experiment.clients=1"]
                                   ).data.union_of == 20


def test_a_central_run_trains_on_the_union(tmp_path):
    from fedisguise.experiment import run_experiment
    from tests.conftest import synthetic_config

    record = run_experiment(synthetic_config(tmp_path, **{
        "experiment.clients": 1, "data.union_of": 3, "data.train_per_client": 40,
        "strategy.fraction_evaluate": 0.0, "experiment.rounds": 1}))
    assert record["status"] == "finished"
    (entry,) = record["rounds"][0:1]
    assert entry["clients"] == [0]
    # one client, the 3 x 40 images of the federation it stands for
    import json
    ledger = json.loads((tmp_path / "t" / "updates.json").read_text())
    assert [e["num_examples"] for e in ledger] == [120]
