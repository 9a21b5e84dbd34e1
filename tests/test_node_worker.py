"""A node's warm worker answers exactly as the ClientApp would, and fails loudly."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

from fedisguise import messages as m
from fedisguise.disguise import DisguiseKey
from fedisguise.fl import client_work
from fedisguise.fl import worker_link as node_worker
from fedisguise.fl.client_app import uses_worker
from fedisguise.models import build_model
from fedisguise.resolved import resolve
from tests.conftest import synthetic_config


@pytest.fixture
def worker_dir(tmp_path, monkeypatch):
    folder = tmp_path / "workers"
    monkeypatch.setenv(node_worker.DIR_ENV, str(folder))
    monkeypatch.setenv(node_worker.IDLE_ENV, "60")
    yield folder
    for path in folder.glob("*.sock") if folder.is_dir() else []:
        pid = _worker_pid(path)
        if pid:
            os.kill(pid, signal.SIGKILL)


def _worker_pid(path: Path) -> int:
    """The pid of the process listening on `path` (its peer credentials), 0 if none."""
    conn = node_worker._try_connect(path)
    if conn is None:
        return 0
    with conn:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[0]


def _setup(tmp_path, **extra):
    key_file = tmp_path / "federation.key"
    DisguiseKey.generate(seed="worker-test").save(key_file)
    cfg = synthetic_config(tmp_path, **{
        "experiment.mode": "deployment", "data.train_per_client": 48,
        "data.test_samples": 60, "client.key_file": str(key_file),
        "disguise": '{"name": "disguisednets", "block_size": 7, "noise_level": 25}', **extra})
    context = Context(run_id=3, node_id=11, state=RecordDict(), run_config=cfg.to_flat(),
                      node_config={"partition-id": 1, "num-partitions": 2})
    model = build_model(cfg.model.name, 1, 10, 28)
    content = RecordDict({m.ARRAYS: ArrayRecord(model.state_dict()),
                          "config": ConfigRecord({"server-round": 1})})
    return cfg, context, content, key_file


def test_the_worker_replies_bit_identically_to_the_in_process_clientapp(tmp_path, worker_dir):
    cfg, context, content, key_file = _setup(tmp_path)
    assert uses_worker(cfg, context)
    reply = node_worker.forward("train", content, context)
    local = client_work.train_reply(content, context, resolve(cfg))
    assert reply[m.CLIENT][m.UPDATE_SHA256] == local[m.CLIENT][m.UPDATE_SHA256]
    assert m.arrays_digest(reply[m.ARRAYS]) == local[m.CLIENT][m.UPDATE_SHA256]
    assert dict(reply[m.METRICS]) == dict(local[m.METRICS])
    evaluated = node_worker.forward("evaluate", content, context)
    assert dict(evaluated[m.METRICS]) == dict(client_work.evaluate_reply(content, context,
                                                                         resolve(cfg))[m.METRICS])
    # one warm worker serves the node's messages, in a folder only its owner may enter
    sockets = list(worker_dir.glob("*.sock"))
    assert len(sockets) == 1 and _worker_pid(sockets[0]) > 0
    first = _worker_pid(sockets[0])
    node_worker.forward("evaluate", content, context)
    assert _worker_pid(sockets[0]) == first
    assert worker_dir.stat().st_mode & 0o077 == 0 and sockets[0].stat().st_mode & 0o077 == 0
    # no key material crosses the socket: the request names the key file, never the key
    material = DisguiseKey.load(key_file)._material
    request = b"".join(node_worker._encode(content, context))
    assert str(key_file).encode() in request
    assert material not in request and material.hex().encode() not in request
    log = sockets[0].with_suffix(".log").read_bytes()
    assert material.hex().encode() not in log
    # a killed worker: the next message starts another one and is answered the same way
    os.kill(first, signal.SIGKILL)
    time.sleep(0.5)
    again = node_worker.forward("train", content, context)
    assert m.arrays_digest(again[m.ARRAYS]) == local[m.CLIENT][m.UPDATE_SHA256]
    assert _worker_pid(sockets[0]) not in (0, first)


def test_the_worker_returns_the_nodes_state_and_its_errors(tmp_path, worker_dir):
    cfg, context, content, _ = _setup(tmp_path)
    context.state["marker"] = ConfigRecord({"kept": "yes"})
    node_worker.forward("evaluate", content, context)
    assert context.state["marker"]["kept"] == "yes"  # state travels both ways
    wrong = Context(run_id=3, node_id=11, state=RecordDict(), run_config=cfg.to_flat(),
                    node_config={"partition-id": 1, "num-partitions": 5})
    with pytest.raises(node_worker.WorkerError, match="num-partitions=5 but experiment.clients=2"):
        node_worker.forward("train", content, wrong)
    with pytest.raises(ValueError, match="unknown message kind"):
        node_worker.forward("query", content, context)


def test_the_worker_ends_with_the_supernode_it_serves(tmp_path, worker_dir):
    worker_dir.mkdir(mode=0o700)
    path = worker_dir / "node-test.sock"
    supernode = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    worker = subprocess.Popen([sys.executable, "-m", node_worker.WORKER_MODULE, str(path),
                               "--watch", str(supernode.pid)], cwd=node_worker.PACKAGE_ROOT)
    try:
        deadline = time.monotonic() + 120
        while _worker_pid(path) == 0:
            assert worker.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        supernode.kill()
        supernode.wait()
        assert worker.wait(timeout=10) == 0
        assert not path.exists()
    finally:
        for process in (supernode, worker):
            if process.poll() is None:
                process.kill()


def test_a_worker_folder_others_may_enter_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "open"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    monkeypatch.setenv(node_worker.DIR_ENV, str(folder))
    with pytest.raises(node_worker.WorkerError, match="mode 0700"):
        node_worker.worker_dir()


def test_a_code_change_means_a_new_worker(tmp_path, monkeypatch, worker_dir):
    tree = tmp_path / "src"
    (tree / "fedisguise").mkdir(parents=True)
    source = tree / "fedisguise" / "mod.py"
    source.write_text("x = 1\n")
    monkeypatch.setattr(node_worker, "PACKAGE_ROOT", tree)
    node = {"partition-id": 0, "num-partitions": 2}
    before = node_worker.socket_path(node)
    assert node_worker.socket_path(node) == before
    assert node_worker.socket_path({**node, "partition-id": 1}) != before
    source.write_text("x = 22\n")
    assert node_worker.socket_path(node) != before


def test_simulation_and_opted_out_nodes_do_not_use_the_worker(tmp_path):
    cfg, context, _, _ = _setup(tmp_path)
    simulated = synthetic_config(tmp_path)
    assert not uses_worker(simulated, context)
    for off in (False, "false", "0"):
        context.node_config["warm-worker"] = off
        assert not uses_worker(cfg, context)


def test_a_worker_folder_too_long_for_a_socket_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(node_worker.DIR_ENV, str(tmp_path / ("x" * 120)))
    with pytest.raises(node_worker.WorkerError, match="too long a path for a Unix socket"):
        node_worker.worker_dir()
