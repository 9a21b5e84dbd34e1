"""fedisguise.deployment.supernode.launcher: sooner SuperNode polls, and ClientApps forked
from a warm zygote."""

import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fedisguise.deployment.supernode import launcher as fast_node

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("raw", ["0", "-1", "nan", "inf", "soon"])
def test_a_bad_poll_interval_is_refused(monkeypatch, raw):
    monkeypatch.setenv(fast_node.POLL_ENV, raw)
    with pytest.raises(ValueError, match="positive number of seconds"):
        fast_node.poll_interval()


def test_the_poll_interval_defaults_and_is_read(monkeypatch):
    monkeypatch.delenv(fast_node.POLL_ENV, raising=False)
    assert fast_node.poll_interval() == fast_node.POLL_DEFAULT
    monkeypatch.setenv(fast_node.POLL_ENV, "0.05")
    assert fast_node.poll_interval() == 0.05


def test_the_supernode_loop_sleeps_at_most_the_cap_and_keeps_the_rest_of_time(monkeypatch):
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.supernode import start_client_internal as loop

    monkeypatch.setattr(loop, "time", loop.time)  # restored after the test
    for function in (inflatable_utils.pull_objects,
                     inflatable_utils.pull_and_inflate_object_from_tree):
        monkeypatch.setitem(function.__kwdefaults__, "initial_backoff",
                            function.__kwdefaults__["initial_backoff"])
    assert inflatable_utils.pull_objects.__kwdefaults__["initial_backoff"] == 1
    assert fast_node.shorten_polls(0.01)
    started = time.monotonic()
    loop.time.sleep(3)  # the loop's wait after an empty pull
    assert time.monotonic() - started < 0.5
    assert loop.time.monotonic() > 0 and loop.time.time() > 0  # the rest is time's
    assert inflatable_utils.pull_objects.__kwdefaults__["initial_backoff"] == 0.01
    assert not fast_node.shorten_polls(0.01)  # once only: loop.time is no longer `time`


def test_another_flower_release_runs_the_stock_supernode(monkeypatch):
    import flwr
    from flwr.supernode import start_client_internal as loop

    monkeypatch.setattr(flwr, "__version__", "1.99.0")
    assert not fast_node.supported("1.99.0") and fast_node.supported("1.41.0")
    assert not fast_node.shorten_polls(0.01)
    assert loop.time is time
    from flwr.supercore.inflatable import inflatable_utils

    assert not fast_node.shorten_retries(0.01)  # the ServerApp's call changes nothing either
    assert inflatable_utils.pull_objects.__kwdefaults__["initial_backoff"] == 1


@pytest.fixture
def zygote_dir(monkeypatch):
    # short: a Unix socket's path must stay under 108 bytes
    folder = Path(tempfile.mkdtemp(prefix="fz-", dir="/tmp"))
    monkeypatch.setenv("FEDISGUISE_WORKER_DIR", str(folder))
    yield folder
    subprocess.run(["rm", "-rf", str(folder)], check=False)


def _start_zygote(sock: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", fast_node.MODULE, "zygote",
                                str(sock), "--watch", str(os.getpid())], cwd=str(ROOT))
    deadline = time.monotonic() + 120
    while not sock.exists():
        assert process.poll() is None, "the zygote exited before it listened"
        assert time.monotonic() < deadline, "the zygote did not listen"
        time.sleep(0.05)
    return process


def test_the_stub_runs_flowers_clientapp_in_a_forked_child_with_its_output_and_exit_code(
        zygote_dir):
    sock, folder = fast_node.zygote_paths(os.getpid())
    real = zygote_dir / "real-clientapp"
    real.write_text("#!/bin/sh\necho REAL\n")
    real.chmod(0o700)
    stub = fast_node.write_stub(folder, sock, str(real))
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    zygote = _start_zygote(sock)
    try:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        shown = subprocess.run([str(stub), "--help"], capture_output=True, text=True,
                               timeout=60)
        # Flower's own flwr-clientapp parser answered, on the stub's stdout, exit code 0
        assert shown.returncode == 0, shown.stderr
        assert "Run a Flower ClientApp" in shown.stdout and "REAL" not in shown.stdout
        wrong = subprocess.run([str(stub), "--no-such-flag"], capture_output=True, text=True,
                               timeout=60)
        assert wrong.returncode == 2  # argparse's, passed back through the stub
        assert "flwr-clientapp: error:" in wrong.stderr  # on the stub's stderr
    finally:
        zygote.terminate()
        zygote.wait(timeout=30)
    assert not sock.exists()  # the zygote removes its socket
    assert not folder.exists()  # and its stub folder
    # no zygote: the stub runs the real flwr-clientapp
    stub = fast_node.write_stub(folder, sock, str(real))
    fallback = subprocess.run([str(stub), "--help"], capture_output=True, text=True,
                              timeout=60)
    assert fallback.returncode == 0 and fallback.stdout.strip() == "REAL"
    # a zygote killed outright leaves its socket behind: the stub falls back all the same
    zygote = _start_zygote(sock)
    zygote.kill()
    zygote.wait(timeout=30)
    assert sock.exists()
    stale = subprocess.run([str(stub), "--help"], capture_output=True, text=True, timeout=60)
    assert stale.returncode == 0 and stale.stdout.strip() == "REAL"


def test_the_zygote_ends_when_the_process_it_serves_is_gone(zygote_dir):
    sock = zygote_dir / "z.sock"
    # pid 1 is not its parent: the SuperNode it would serve is gone already
    process = subprocess.run([sys.executable, "-m", fast_node.MODULE, "zygote",
                              str(sock), "--watch", "1"], cwd=str(ROOT), timeout=120)
    assert process.returncode == 0
    assert not sock.exists()


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_supernode_killed_outright_leaves_files_that_its_federation_removes(zygote_dir):
    # SIGKILL (a stop's grace ran out, Flower's 5 s force-exit) runs neither the SuperNode's
    # atexit nor its zygote's cleanup: the socket and the stub folder stay behind
    from fedisguise.deployment.federation import LocalFederation

    dead = _dead_pid()
    sock, folder = fast_node.zygote_paths(dead)
    fast_node.write_stub(folder, sock, "/bin/true")
    sock.write_text("")
    live_sock, live_folder = fast_node.zygote_paths(os.getpid())
    fast_node.write_stub(live_folder, live_sock, "/bin/true")
    assert not fast_node.remove_leftovers(os.getpid())  # a running SuperNode's are kept
    assert (live_folder / fast_node.STUB_NAME).exists()
    federation = LocalFederation(1, zygote_dir / "logs")
    federation._fast_pids += [dead, os.getpid()]
    federation.stop()
    assert not sock.exists() and not folder.exists()
    assert (live_folder / fast_node.STUB_NAME).exists()
    assert fast_node.remove_leftovers(dead)  # again: nothing left, no error


def test_the_zygote_removes_its_stub_folder_when_the_stub_is_gone_already(zygote_dir):
    # the SuperNode's exit may remove the stub first; the zygote's rmdir must still happen
    sock = zygote_dir / "z.sock"
    folder = sock.with_suffix("")
    folder.mkdir()
    process = subprocess.run([sys.executable, "-m", fast_node.MODULE, "zygote",
                              str(sock), "--watch", "1"], cwd=str(ROOT), timeout=120)
    assert process.returncode == 0
    assert not folder.exists()


def test_the_launcher_refuses_a_bad_command_line():
    process = subprocess.run([sys.executable, "-m", fast_node.MODULE, "zygote", "x"],
                             capture_output=True, text=True, cwd=str(ROOT), timeout=60)
    assert process.returncode == 1 and "usage:" in process.stderr


def test_a_bad_poll_interval_stops_the_federation_before_any_process_starts(
        tmp_path, monkeypatch):
    from fedisguise.deployment.federation import LocalFederation

    monkeypatch.setenv(fast_node.POLL_ENV, "0")
    federation = LocalFederation(1, tmp_path / "logs")
    with pytest.raises(ValueError, match=fast_node.POLL_ENV):
        federation.__enter__()
    assert federation.processes == []


def test_run_py_exits_2_on_a_bad_poll_interval_before_flower_starts(tmp_path):
    env = {**os.environ, fast_node.POLL_ENV: "-1"}
    process = subprocess.run(
        [sys.executable, "run.py", "--config", "configs/smoke.toml", "--mode", "deployment",
         "--clients", "2", "--rounds", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=str(ROOT), env=env, timeout=120)
    assert process.returncode == 2, process.stderr[-2000:]
    assert "error: deployment.fast_nodes: $FEDISGUISE_SUPERNODE_POLL must be a positive" in (
        process.stderr)
    assert not (tmp_path / "smoke").exists()  # nothing ran, nothing written
