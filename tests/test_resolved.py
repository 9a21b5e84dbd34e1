"""A run is resolved once per process and handed down: the config validated once, the
disguise spec parsed once, each key file read once per node, every image read through one
function."""

import ast
import json
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

from fedisguise import resolved
from fedisguise.config import Config, ConfigError
from fedisguise.data import datasets as data
from fedisguise.data.partitions import client_data, server_test_set
from fedisguise.disguise import DisguiseKey, DisguiseSpec
from fedisguise.disguise import spec as spec_module
from fedisguise.disguise.keys import _READ
from fedisguise.fl import client_app
from fedisguise.fl.client_work import _PREPARED
from fedisguise.models import build_model
from tests.conftest import synthetic_config

PACKAGE = Path(__file__).resolve().parents[1] / "fedisguise"
SPEC = {"name": "disguisednets", "block_size": 7, "noise_level": 25}


def _context(pid: int, run_id: int = 1) -> Context:
    return Context(run_id=run_id, node_id=100 + pid, state=RecordDict(), run_config={},
                   node_config={"partition-id": pid, "num-partitions": 2})


def _message(server_round: int) -> RecordDict:
    torch.manual_seed(0)
    return RecordDict({"arrays": ArrayRecord(build_model("lenet", 1, 10, 28).state_dict()),
                       "config": ConfigRecord({"server-round": server_round})})


@pytest.fixture
def fresh(monkeypatch):
    """No run resolved, no key read and no data prepared in this process yet."""
    monkeypatch.setattr(resolved, "_RESOLVED", type(resolved._RESOLVED)())
    monkeypatch.setattr(spec_module, "_PARSED", {})
    _READ.clear()
    _PREPARED.clear()
    yield
    _READ.clear()
    _PREPARED.clear()


def _counting(monkeypatch, owner, name: str) -> list:
    calls, real = [], getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_a_clientapp_validates_and_parses_once_per_run_not_per_message(tmp_path, monkeypatch,
                                                                        fresh):
    parses = _counting(monkeypatch, spec_module, "spec_params")
    cfg = synthetic_config(tmp_path, **{"disguise": json.dumps(SPEC),
                                        "train.local_steps": 1})  # the driver's check
    validations = _counting(monkeypatch, Config, "validate")
    for server_round in (1, 2, 3):
        for pid in (0, 1):  # a Ray actor serving two nodes, as from a run config each time
            flat = Config.from_flat(cfg.to_flat(), validate=False)
            client_app.reply_content("train", _message(server_round), _context(pid), flat,
                                     validated=False)
    # one parse of the spec in this process: the driver's check made it, the ClientApp's
    # check and its resolved run reused it
    assert len(validations) == 1 and len(parses) == 1
    # another run in the same long-lived process is resolved (and checked) on its own
    flat = Config.from_flat(cfg.to_flat(), validate=False)
    client_app.reply_content("train", _message(1), _context(0, run_id=2), flat,
                             validated=False)
    assert len(validations) == 2


def test_a_bad_config_is_refused_on_every_message_never_cached(tmp_path, fresh):
    cfg = synthetic_config(tmp_path)
    flat = {**cfg.to_flat(), "train.lr": -1.0}
    for _ in range(2):
        with pytest.raises(ConfigError, match="train.lr"):
            client_app.reply_content("train", _message(1), _context(0),
                                     Config.from_flat(flat, validate=False), validated=False)


def test_a_node_reads_its_key_file_once_and_again_only_when_it_changes(tmp_path, monkeypatch,
                                                                     fresh):
    key_file = tmp_path / "federation.key"
    DisguiseKey.generate(seed="one").save(key_file)
    cfg = synthetic_config(tmp_path, **{"disguise": json.dumps(SPEC),
                                        "client.key_file": str(key_file),
                                        "client.redisguise": "batch",
                                        "train.local_steps": 1})
    reads = _counting(monkeypatch, Path, "read_text")
    for server_round in (1, 2, 3):
        for kind in ("train", "evaluate"):
            client_app.reply_content(kind, _message(server_round), _context(0), cfg)
    key_reads = [p for (p, *_) in reads if Path(p).suffix in (".key", ".secret")]
    assert sorted(Path(p).name for p in key_reads) == [
        "federation.key", "federation.node-0.secret"]  # six messages, one read each
    DisguiseKey.generate(seed="two").save(key_file)  # rewritten in place: read again
    client_app.reply_content("train", _message(4), _context(0), cfg)
    assert [Path(p).name for (p, *_) in reads].count("federation.key") == 2
    key_file.chmod(0o644)  # made readable by others: refused, not served from memory
    with pytest.raises(PermissionError, match="too open"):
        client_app.reply_content("train", _message(5), _context(0), cfg)


def test_the_typed_spec_is_what_the_config_wrote_and_refuses_what_it_cannot_build():
    spec = DisguiseSpec.parse(SPEC)
    assert (spec.name, dict(spec.params), spec.as_config()) == ("disguisednets",
                                                               {"block_size": 7,
                                                                "noise_level": 25}, SPEC)
    assert DisguiseSpec.parse(spec) is spec and DisguiseSpec.parse("aes").as_config() == "aes"
    with pytest.raises(TypeError):
        spec.params["block_size"] = 4  # read-only: one parse, shared by every use
    with pytest.raises(ValueError, match="unknown disguise 'blur'; valid choices"):
        DisguiseSpec.parse("blur")
    with pytest.raises(ValueError, match="unknown parameter 'blocks'"):
        DisguiseSpec.parse({"name": "disguisednets", "blocks": 7})
    with pytest.raises(ValueError, match="is keyed: pass a DisguiseKey"):
        spec.build()


def test_every_image_is_read_through_one_function_once_per_split(monkeypatch):
    """A registered loader is called by data.datasets.read_split alone, and once per split however
    many clients and the server read from it."""
    called = [
        node for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript)
        and getattr(node.func.value, "id", None) == "DATASETS"
        and path.relative_to(PACKAGE) != Path("data", "datasets.py")]
    assert called == []
    reads = []

    def faces(split: str, data_dir: str = "") -> data.ImageDataset:
        reads.append(split)
        gen = torch.Generator().manual_seed(len(split))
        return data.ImageDataset(torch.rand(40, 1, 28, 28, generator=gen),
                                 torch.arange(40) % 10, 10)

    monkeypatch.setitem(data.DATASETS, "faces-test-only", faces)
    data._load_split.cache_clear()
    for pid in range(4):
        client_data("faces-test-only", "", "iid", 0.5, 0, pid, 4, 0, 20)
    server_test_set("faces-test-only", "", 20, 0)
    data.load_dataset("faces-test-only", "train")
    assert sorted(reads) == ["test", "train"]
    data._load_split.cache_clear()


def test_the_experimenter_gets_the_nodes_keys_and_data_from_the_resolved_run(tmp_path,
                                                                             monkeypatch,
                                                                             fresh):
    """The attack suite and the privacy figures take the node's key, its secret and the run's
    images from the run resolved in their process: the files are read once there too."""
    key_file = tmp_path / "federation.key"
    DisguiseKey.generate(seed="one").save(key_file)
    cfg = synthetic_config(tmp_path, **{"disguise": json.dumps(SPEC),
                                        "client.key_file": str(key_file)})
    run = resolved.resolve(cfg)
    assert resolved.resolve(synthetic_config(tmp_path, **{
        "disguise": json.dumps(SPEC), "client.key_file": str(key_file)})) is run
    reads = _counting(monkeypatch, Path, "read_text")
    key, secret = run.node_keys(1, create=True)
    assert run.node_keys(1) == (key, secret)
    assert sorted(Path(p).name for (p, *_) in reads if Path(p).suffix in (".key", ".secret")) \
        == ["federation.key", "federation.node-1.secret"]
    assert key == DisguiseKey.load(key_file).for_client(1)  # key_scope per-client
    assert run.data.split("test") is run.data.split("test")  # one load per process
    assert torch.equal(run.data.server_test_set().images,
                       server_test_set("synthetic", "", 0, cfg.experiment.seed).images)
