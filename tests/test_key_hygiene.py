"""Key material never leaves the client: not in any message it sends, a log line or a result."""

from pathlib import Path

import pytest
from flwr.common.serde import recorddict_to_proto

import fedisguise.fl.server_app as server_app
from fedisguise.disguise import DisguiseKey
from fedisguise.disguise.keys import SECRET_MAGIC
from fedisguise.experiment import run_experiment
from tests.conftest import synthetic_config

pytestmark = pytest.mark.slow


def test_no_key_material_in_messages_logs_or_results(tmp_path, monkeypatch, capfd):
    master = DisguiseKey.generate()
    key_file = master.save(tmp_path / "keys" / "federation.key")
    secrets = [master] + [master.for_client(i) for i in range(2)]
    needles = [k._material for k in secrets] + [k._material.hex().encode() for k in secrets]

    sent: list[bytes] = []
    original = server_app.build_strategy

    def capturing_build(*args, **kwargs):
        strategy = original(*args, **kwargs)

        class Capture:
            def observe(self, update):
                sent.append(recorddict_to_proto(update.message.content).SerializeToString())

        strategy.add_observer(Capture())
        inner_evaluate = strategy.inner.aggregate_evaluate

        def aggregate_evaluate(server_round, replies):
            replies = list(replies)
            sent.extend(recorddict_to_proto(m.content).SerializeToString() for m in replies)
            return inner_evaluate(server_round, replies)

        strategy.inner.aggregate_evaluate = aggregate_evaluate
        return strategy

    monkeypatch.setattr(server_app, "build_strategy", capturing_build)
    cfg = synthetic_config(tmp_path / "out", **{
        "client.key_file": str(key_file), "experiment.rounds": 1,
        "data.train_per_client": 200, "privacy.examiner_samples": 500,
        "privacy.examiner_epochs": 1,
        "disguise": '{"name": "disguisednets", "block_size": 7, "noise_level": 25}',
    })
    record = run_experiment(cfg)
    assert record["keys"] == {"scope": "per-client", "source": "file",
                              "draws": "a secret per node, written beside its key file"}
    assert len(sent) == 4  # two train replies and two evaluate replies
    node_secrets = [DisguiseKey.load(p, SECRET_MAGIC)
                    for p in sorted((tmp_path / "keys").glob("federation.node-*.secret"))]
    assert len(node_secrets) == 2  # each node wrote its own, beside the key
    needles += [k._material for k in node_secrets] + [k._material.hex().encode()
                                                      for k in node_secrets]

    logs = capfd.readouterr()
    haystacks = sent + [logs.out.encode(), logs.err.encode()]
    haystacks += [p.read_bytes() for p in Path(tmp_path / "out").rglob("*") if p.is_file()]
    for blob in haystacks:
        for needle in needles:
            assert needle not in blob
    assert "visual_privacy" in record["privacy"]
