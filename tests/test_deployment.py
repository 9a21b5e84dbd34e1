"""Real `flower-superlink` / `flower-supernode` processes on loopback, and their clean-up."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import run
from fedisguise.config import Config, ConfigError
from fedisguise.deployment import ports as loopback
from fedisguise.deployment import tls
from fedisguise.deployment.federation import (
    FLOWER_COMMANDS,
    LocalFederation,
    child_env,
    flower_command,
)
from fedisguise.deployment.submission import (
    CONNECTION,
    SUPEREXEC_POLL,
    check_security,
    submit_run,
    write_connection,
)
from fedisguise.experiment import run_experiment
from tests.conftest import FEDAVG, synthetic_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def flwr_tmp(tmp_path, monkeypatch) -> Path:
    """Where this test's federations keep their FLWR_HOME (tempfile's folder, for this process
    and, through TMPDIR, for run.py children): other jobs on the machine may run federations
    of their own at the same time, and those are not this test's to count."""
    root = tmp_path / "flwr-tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    monkeypatch.setenv("TMPDIR", str(root))
    return root


def federation_processes(root: Path, node: str | None = None) -> list[int]:
    """Live processes started by a LocalFederation whose FLWR_HOME is under `root`, or by one
    of its nodes only (`superlink`, `supernode-<i>`: the marker their environment carries)."""
    marker = f"FLWR_HOME={root}{os.sep}fedisguise-flwr-".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in environ and state != "Z" and (
                node is None or f"FEDISGUISE_NODE={node}".encode() in environ.split(b"\0")):
            found.append(int(entry.name))
    return found


def test_flower_commands_resolve_next_to_the_interpreter_without_path(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an unactivated virtualenv: its bin/ is off PATH
    for name in FLOWER_COMMANDS:
        path = Path(flower_command(name))
        assert path.is_absolute() and path.is_file(), name
        assert path.parent == Path(sys.executable).parent
    # The helpers the SuperLink/SuperNode start by name must come from the same bin/.
    assert child_env(tmp_path)["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


def test_only_the_supernodes_superexecs_poll_fast(tmp_path, monkeypatch):
    import fedisguise.deployment.federation as deployment

    monkeypatch.delenv(deployment.SUPEREXEC_POLL_ENV, raising=False)
    seen = {}

    class Popen:
        def __init__(self, args, env, **kwargs):
            seen[env[deployment.NODE_ENV]] = env.get(deployment.SUPEREXEC_POLL_ENV)

    monkeypatch.setattr(deployment.subprocess, "Popen", Popen)
    federation = LocalFederation(1, tmp_path)
    federation._spawn(["x"], "superlink.log", "superlink")
    federation._spawn(["x"], "supernode-0.log", "supernode-0")
    # the SuperLink's SuperExec starts one ServerApp a run: Flower's own 1 s beat
    assert seen == {"superlink": None, "supernode-0": SUPEREXEC_POLL}
    monkeypatch.setenv(deployment.SUPEREXEC_POLL_ENV, "0.5")  # the user's setting, everywhere
    federation._spawn(["x"], "superlink.log", "superlink")
    federation._spawn(["x"], "supernode-0.log", "supernode-0")
    assert seen == {"superlink": "0.5", "supernode-0": "0.5"}


def test_a_missing_flower_command_names_what_was_looked_for(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"`flower-nonesuch` is neither in .* nor on PATH"):
        flower_command("flower-nonesuch")


def test_security_settings_are_checked_before_anything_starts(tmp_path):
    with pytest.raises(ConfigError, match="deployment.supernode_auth must be unset unless "
                                          "deployment.tls = true"):
        Config().with_overrides(["deployment.supernode_auth=true"])
    cfg = Config().with_overrides(["deployment.tls=true", f"deployment.certificates={tmp_path}"])
    with pytest.raises(ConfigError, match=r"deployment.certificates: .* lacks ca.crt, server.pem, "
                                          r"server.key \(make a set with"):
        check_security(cfg)
    tls.generate_certificates(tmp_path)
    check_security(cfg)
    (tmp_path / "server.key").chmod(0o644)
    with pytest.raises(ConfigError, match="server.key is readable by others"):
        check_security(cfg)
    with pytest.raises(ConfigError, match="deployment.certificates is for the local federation"):
        check_security(cfg, superlink="a:9092")
    remote = Config().with_overrides(["deployment.tls=true",
                                      f"deployment.root_certificates={tmp_path / 'nope.crt'}"])
    with pytest.raises(ConfigError, match="deployment.root_certificates: no file"):
        check_security(remote, superlink="a:9092")


def test_run_py_exits_2_on_missing_certificates(tmp_path, capsys):
    common = ["--config", str(FEDAVG), "--mode", "deployment", "--out", str(tmp_path),
              "--set", "data.dataset=synthetic"]
    assert run.main([*common, "--set", "deployment.tls=true",
                     "--set", f"deployment.certificates={tmp_path}"]) == 2
    assert "deployment.certificates" in capsys.readouterr().err
    assert run.main([*common, "--superlink", "a:9092",
                     "--root-certificates", str(tmp_path / "ca.crt")]) == 2
    assert "deployment.root_certificates: no file" in capsys.readouterr().err
    assert run.main([*common, "--root-certificates", str(tmp_path / "ca.crt")]) == 2
    assert "--root-certificates is for --superlink" in capsys.readouterr().err


def test_connections_are_read_back_by_flower(tmp_path, monkeypatch):
    from flwr.cli.flower_config import read_superlink_connection

    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    write_connection(tmp_path, "127.0.0.1:9092")
    insecure = read_superlink_connection(CONNECTION)
    assert (insecure.address, insecure.insecure, insecure.root_certificates) == (
        "127.0.0.1:9092", True, None)
    monkeypatch.chdir(tmp_path)
    write_connection(tmp_path, "a.example.org:9092", tls=True, root_certificates="ca.crt")
    secure = read_superlink_connection(CONNECTION)
    assert not secure.insecure and secure.root_certificates == str(tmp_path / "ca.crt")
    write_connection(tmp_path, "a.example.org:9092", tls=True)  # the system's CA store
    assert read_superlink_connection(CONNECTION).root_certificates is None


@pytest.mark.slow
def test_two_supernodes_both_contribute_and_nothing_is_left_behind(tmp_path, flwr_tmp,
                                                                   monkeypatch):
    assert federation_processes(flwr_tmp) == []
    # short: a Unix socket's path must stay under 108 bytes
    workers = Path(tempfile.mkdtemp(prefix="fw-", dir="/tmp"))
    monkeypatch.setenv("FEDISGUISE_WORKER_DIR", str(workers))
    # A plugin's model (a file named in experiment.plugins): every node's worker imports it.
    plugin, pids = tmp_path / "model_plugin.py", tmp_path / "pids.txt"
    plugin.write_text(MODEL_PLUGIN)
    monkeypatch.setenv("PLUGIN_PIDS", str(pids))
    cfg = synthetic_config(tmp_path, **{"experiment.mode": "deployment",
                                        "experiment.name": "dep",
                                        "experiment.plugins": str(plugin),
                                        "model.name": "lenet-plugin",
                                        "data.train_per_client": 300,
                                        # one ClientApp process per node and round, not two
                                        "strategy.fraction_evaluate": 0.0})
    record = run_experiment(cfg)
    assert record["mode"] == "deployment"
    ledger = json.loads((tmp_path / "dep" / "updates.json").read_text())
    by_round = {}
    for entry in ledger:
        by_round.setdefault(entry["server_round"], []).append(entry)
    assert sorted(by_round) == [1, 2]
    for entries in by_round.values():
        assert sorted(e["partition_id"] for e in entries) == [0, 1]
        assert len({e["node_id"] for e in entries}) == 2  # two distinct SuperNodes
        assert all(e["sha256"] == e["client_sha256"] for e in entries)
    assert record["final"]["test_accuracy"] > record["initial"]["plain_test_accuracy"]
    assert (tmp_path / "dep" / "logs" / "supernode-1.log").is_file()
    assert federation_processes(flwr_tmp) == []
    # the workers started beside the SuperNodes served every message: no ClientApp started
    # one of its own (those log into the worker folder)
    assert sorted(p.name for p in (tmp_path / "dep" / "logs").glob("worker-*.log")) == [
        "worker-0.log", "worker-1.log"]
    assert not list(workers.glob("*.log"))
    assert not list(workers.glob("*.sock"))  # ended with the federation
    # each SuperNode ran through fedisguise.deployment.supernode.launcher, its zygote listening;
    # stubs removed
    for node in (0, 1):
        log = (tmp_path / "dep" / "logs" / f"supernode-{node}.log").read_text()
        launcher = "fedisguise.deployment.supernode.launcher"
        assert f"{launcher}: SuperNode polls every 0.2 s" in log
        assert f"{launcher}: zygote" in log and " ready on clientapp-" in log
    assert not list(workers.glob("clientapp-*"))
    shutil.rmtree(workers)
    # the plugin was imported here and in both nodes' workers (and the ServerApp's process)
    assert len(set(pids.read_text().split()) - {str(os.getpid())}) >= 2, pids.read_text()


MODEL_PLUGIN = """
import os
from fedisguise.api import register_model
from fedisguise.models import LeNet

with open(os.environ["PLUGIN_PIDS"], "a") as fh:
    fh.write(f"{os.getpid()}\\n")

register_model("lenet-plugin")(LeNet)
"""


@pytest.mark.slow
def test_federation_ends_its_processes_when_the_body_fails(tmp_path, flwr_tmp):
    with pytest.raises(RuntimeError, match="boom"), \
            LocalFederation(1, log_dir=tmp_path) as federation:
        time.sleep(2)  # let the SuperNode start its helpers
        assert len(federation.pids()) >= 2
        raise RuntimeError("boom")
    assert federation_processes(flwr_tmp) == []
    assert not federation.flwr_home.exists()


@pytest.mark.slow
def test_a_supernode_whose_port_is_taken_before_it_binds_starts_again_on_a_fresh_one(
        tmp_path, flwr_tmp, monkeypatch):
    from fedisguise.deployment import federation as deployment

    with socket.socket() as taken, LocalFederation(1, log_dir=tmp_path) as federation:
        taken.bind(("127.0.0.1", 0))  # bound, not listening: as an outbound connection's port
        port = taken.getsockname()[1]
        handed = iter([port])
        real = deployment.free_port
        monkeypatch.setattr(deployment, "free_port", lambda host: next(handed, None) or real(host))
        node = federation.start_supernode(0)
        lost = tmp_path / "supernode-1.port-taken-1.log"
        assert deployment.RUNTIME_PORT_TAKEN in lost.read_text()
        assert node.poll() is None and federation.supernodes[1] is node
        time.sleep(1.5)  # a beat of the watcher: a restarted SuperNode is no dead one
        assert federation.dead == {} and node.poll() is None
        fresh = int(node.args[node.args.index("--port") + 1])
        assert fresh != port and loopback.listening("127.0.0.1", fresh)
        assert sum(p.poll() is None for p in federation.supernodes) == 2
    assert federation_processes(flwr_tmp) == []


@pytest.mark.slow
def test_a_superlink_whose_port_is_taken_before_it_binds_starts_again_on_a_fresh_one(
        tmp_path, flwr_tmp, monkeypatch):
    from fedisguise.deployment import federation as deployment

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # bound, not listening: as an outbound connection's port
        port = taken.getsockname()[1]
        handed = iter([port])
        real = deployment.free_port
        monkeypatch.setattr(deployment, "free_port", lambda host: next(handed, None) or real(host))
        with LocalFederation(1, log_dir=tmp_path) as federation:
            lost = tmp_path / "superlink.port-taken-1.log"
            assert deployment.SUPERLINK_PORT_TAKEN in lost.read_text()
            assert federation.port != port and loopback.listening("127.0.0.1", federation.port)
            superlinks = [p for p in federation.processes if "flower-superlink" in p.args[0]]
            assert len(superlinks) == 1 and superlinks[0].poll() is None  # the lost one forgotten
            assert f"--superlink 127.0.0.1:{federation.port}" in " ".join(
                map(str, federation.supernodes[0].args))
            assert federation.supernodes[0].poll() is None
    assert federation_processes(flwr_tmp) == []


def exiting_spawn(starts: list, log_line: str, code: int):
    """A LocalFederation._spawn whose process writes `log_line` to its log and exits with
    `code` at once; each start's arguments are appended to `starts`."""
    def spawn(self, args, log_name, node):
        starts.append(args)
        (self.log_dir / log_name).write_text(f"{log_line}\n")
        process = subprocess.Popen([sys.executable, "-c", f"raise SystemExit({code})"])
        process.wait()
        self.processes.append(process)
        return process
    return spawn


def test_a_superlink_that_fails_for_another_reason_is_reported_not_retried(tmp_path, monkeypatch):
    from fedisguise.deployment import federation as deployment

    starts = []
    # a SuperLink that exits at once, not for its port
    monkeypatch.setattr(deployment.LocalFederation, "_spawn",
                        exiting_spawn(starts, "ERROR: something else went wrong", 3))
    monkeypatch.setattr(deployment.LocalFederation, "_start_reaper", lambda self: None)
    with pytest.raises(RuntimeError, match="exited with code 3"):
        LocalFederation(1, log_dir=tmp_path).__enter__()
    assert len(starts) == 1 and not list(tmp_path.glob("*.port-taken-*"))


LISTEN_AND_WAIT = """
import socket, sys, time
with socket.socket() as server:
    try:
        server.bind(("127.0.0.1", int(sys.argv[1])))
    except OSError as error:
        open(sys.argv[2], "a").write(f"ERROR: [Errno 98] error while attempting to bind on address: {error}\\n")
        raise SystemExit(1)
    server.listen()
    time.sleep(60)
"""


def test_a_port_another_process_listens_on_is_not_mistaken_for_the_childs(tmp_path):
    """free_port's port taken by a foreign *listener*: the child is not 'up' because something
    answers there; it exits with the port-taken line and starts again on a fresh port."""
    from fedisguise.deployment import federation as deployment

    log = tmp_path / "superlink.log"
    started, forgotten = [], []
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        taken = foreign.getsockname()[1]
        fresh = loopback.free_port()
        ports = iter([taken, fresh])

        def start() -> tuple[subprocess.Popen, int]:
            port = next(ports)
            log.write_text("")
            started.append(subprocess.Popen([sys.executable, "-c", LISTEN_AND_WAIT, str(port),
                                             str(log)]))
            return started[-1], port

        try:
            process = deployment.start_on_free_port(start, log, deployment.SUPERLINK_PORT_TAKEN,
                                                    "SuperLink", "127.0.0.1", 30,
                                                    forgotten.append)
            assert process is started[1] and forgotten == [started[0]]
            assert started[0].returncode == 1 and process.poll() is None
            assert loopback.listens(process, "127.0.0.1", fresh)
            assert not loopback.listens(process, "127.0.0.1", taken)
            assert loopback.listening("127.0.0.1", taken)  # what the old check looked at
            lost = tmp_path / "superlink.port-taken-1.log"
            assert deployment.SUPERLINK_PORT_TAKEN in lost.read_text()
        finally:
            for child in started:
                child.kill()
                child.wait()


def test_a_listener_in_a_grandchild_counts_as_the_childs(tmp_path):
    from fedisguise.deployment import processes

    port = loopback.free_port()
    parent = subprocess.Popen([sys.executable, "-c",
                               "import subprocess, sys; subprocess.run([sys.executable, '-c', "
                               "sys.argv[1], sys.argv[2], sys.argv[3]])",
                               LISTEN_AND_WAIT, str(port), str(tmp_path / "log")],
                              start_new_session=True)
    try:
        assert loopback.await_listen("127.0.0.1", port, 30, parent)
    finally:
        processes.signal_tree(parent, signal.SIGKILL)
        parent.wait()


def test_free_port_never_hands_out_a_port_twice():
    from fedisguise.deployment.ports import free_port

    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == 200


def start_run(tmp_path, name: str, *extra: str) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "run.py"), "--config", str(FEDAVG), "--mode", "deployment",
               "--out", str(tmp_path), "--set", "data.dataset=synthetic",
               "--set", f"experiment.name={name}", *extra]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout:.0f} s")


@pytest.mark.slow
def test_ctrl_c_ends_every_process_and_keeps_the_run_marked(tmp_path, flwr_tmp):
    proc = start_run(tmp_path, "interrupted", "--clients", "2", "--rounds", "50")
    wait_for(lambda: len(federation_processes(flwr_tmp)) >= 4, 90, "the federation came up")
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    assert proc.wait(timeout=30) == 130
    assert time.monotonic() - sent < 15
    time.sleep(1)
    assert federation_processes(flwr_tmp) == []
    record = json.loads((tmp_path / "interrupted" / "metrics.json").read_text())
    assert record["status"] == "interrupted"
    assert (tmp_path / "interrupted" / "logs" / "superlink.log").is_file()


@pytest.mark.slow
def test_sigkill_of_run_py_takes_every_flower_process_with_it(tmp_path, flwr_tmp):
    proc = start_run(tmp_path, "killed", "--clients", "2", "--rounds", "50")
    wait_for(lambda: len(federation_processes(flwr_tmp)) >= 4, 90, "the federation came up")
    time.sleep(3)
    assert federation_processes(flwr_tmp)
    proc.kill()
    proc.wait(timeout=10)
    wait_for(lambda: federation_processes(flwr_tmp) == [], 15, "every Flower process ended")


@pytest.mark.slow
def test_a_dead_supernode_is_recorded_and_the_others_finish_the_run(tmp_path, flwr_tmp):
    # Three rounds: with a warm worker a round can take under a second, so round 2 may end
    # before the kill lands; the node must then be missing from round 3.
    proc = start_run(tmp_path, "dead", "--clients", "2", "--rounds", "3",
                     "--set", "data.train_per_client=200", "--set", "data.test_samples=300",
                     # one ClientApp process per node and round instead of two
                     "--set", "strategy.fraction_evaluate=0")
    metrics = tmp_path / "dead" / "metrics.json"

    def rounds_done() -> int:
        try:
            return len(json.loads(metrics.read_text())["rounds"])
        except (OSError, ValueError, KeyError):
            return 0

    wait_for(lambda: rounds_done() >= 1, 240, "round 1 finished")
    victim = federation_processes(flwr_tmp, "supernode-1")
    assert victim, "SuperNode 1 was not running"
    supernode = min(victim)  # the SuperNode itself started before its helpers
    os.kill(supernode, signal.SIGKILL)
    wait_for(lambda: federation_processes(flwr_tmp, "supernode-1") == [], 15,
             "the dead SuperNode's helpers ended")
    _, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-2000:]
    record = json.loads(metrics.read_text())
    assert record["status"] == "finished"
    clients = [r["clients"] for r in record["rounds"]]
    assert len(clients) == 3 and clients[0] == [0, 1]
    assert [0] in clients, clients  # the run went on with the node left
    lost = clients.index([0]) + 1   # the first round without node 1
    assert all(c == [0] for c in clients[lost - 1:]), clients
    # Recorded in that round, and in the next ones while the SuperLink still lists the node.
    failed = [(f["server_round"], f["partition_id"]) for f in record["failures"]]
    assert failed[0] == (lost, 1) and set(failed) <= {(r, 1) for r in range(lost, 4)}, failed
    assert len(set(failed)) == len(failed)
    assert "client 1" in err
    assert federation_processes(flwr_tmp) == []


@pytest.mark.slow
def test_tls_and_supernode_auth_refuse_an_unknown_key_and_run_with_the_known_ones(
        tmp_path, monkeypatch, flwr_tmp):
    # Also the unactivated-virtualenv case: no interpreter bin/ on PATH at all.
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    cfg = synthetic_config(tmp_path, **{
        "experiment.mode": "deployment", "experiment.name": "tls", "experiment.rounds": 1,
        "data.train_per_client": 64, "data.test_samples": 64,
        "strategy.fraction_evaluate": 0.0,  # one ClientApp process per SuperNode, not two
        "deployment.tls": True, "deployment.supernode_auth": True})
    logs = cfg.run_dir / "logs"
    stranger_key, _ = tls.generate_supernode_key(tmp_path / "elsewhere", "stranger")
    with LocalFederation.from_config(cfg, log_dir=logs) as federation:
        assert "--enable-supernode-auth" in federation.processes[0].args
        stranger = federation.start_supernode(0, private_key=stranger_key)  # never registered
        assert stranger.wait(timeout=60) != 0
        assert "Failed to activate SuperNode" in (logs / "supernode-2.log").read_text()
        assert "No SuperNode found with the given public key" in (
            logs / "superlink.log").read_text()
        submit_run(cfg, federation.flwr_home, federation.env)
        secrets = [federation.certificates.key, stranger_key,
                   *(p for p in (federation.flwr_home / "keys").iterdir() if not p.suffix)]
        assert len(secrets) == 4 and all(p.stat().st_mode & 0o077 == 0 for p in secrets)
        key_lines = [p.read_text().splitlines()[1].encode() for p in secrets]
    assert federation_processes(flwr_tmp) == []
    ledger = json.loads((cfg.run_dir / "updates.json").read_text())
    assert sorted(e["partition_id"] for e in ledger) == [0, 1]
    assert len({e["node_id"] for e in ledger}) == 2
    assert (cfg.run_dir / "metrics.json").is_file()
    for path in (p for p in cfg.run_dir.rglob("*") if p.is_file()):  # results and logs
        assert not any(line in path.read_bytes() for line in key_lines), path
