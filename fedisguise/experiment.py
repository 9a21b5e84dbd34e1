"""One run end to end from the CLI side: dispatch a validated Config to a mode, return results.

Simulation runs Flower's simulation engine in this process (the ServerApp in a thread, the
ClientApps in Ray actors with the configured per-client resources). Deployment starts real
SuperLink/SuperNode processes (fedisguise.deployment.federation). Both end with results/<run>/ on
disk.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedisguise.config import Config, ConfigError

# Written into a run folder, exclusively, by the one run that claims it: its pid and host.
CLAIM = ".fedisguise-claim"


def claim_run_dir(cfg: Config, force: bool = False) -> None:
    """Make results/<run>/ this run's alone: an existing run folder is refused (ConfigError,
    exit 2, before anything starts) unless `force`, which removes it first, so old and new
    files never mix. The claim is an exclusive create of CLAIM in the folder: of two runs
    that start together under one name, exactly one gets it. `force` removes only a folder a
    run wrote (a run's metrics.json, a grid's cell.json, or a claim), never one a live run
    holds, and never through a symbolic link."""
    run_dir = cfg.run_dir
    if run_dir.is_symlink():
        raise ConfigError(f"experiment.name: {run_dir} is a symbolic link"
                          f"{'' if run_dir.exists() else ' to nothing'}; a run folder is never "
                          f"followed through a link: remove the link or choose another name")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"experiment.name: {run_dir} exists and is not a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        holder = _live_holder(run_dir)
        if holder:
            raise ConfigError(f"experiment.name: {run_dir} belongs to a run still going "
                              f"({holder}); wait for it or choose another name")
        if not force:
            held = ""
            try:
                old = json.loads((run_dir / "metrics.json").read_text())
                held = f" ({old.get('status', 'finished')} run of {old.get('finished_at', '?')})"
            except (OSError, json.JSONDecodeError, AttributeError):
                pass
            raise ConfigError(
                f"experiment.name: {run_dir} already holds results{held}; pass --force to "
                "replace them, or choose another name (--set experiment.name=...) or --out")
        if not _holds_a_run(run_dir):
            raise ConfigError(f"--force: {run_dir} holds no fedisguise run (no run's "
                              f"metrics.json, cell.json or {CLAIM}); it is not deleted: "
                              f"choose another name or --out")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Written aside, then hard-linked into place: the claim appears whole, and only once.
    aside = run_dir / f".claim.{os.getpid()}.{os.urandom(4).hex()}"
    aside.write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename}))
    try:
        os.link(aside, run_dir / CLAIM)
    except FileExistsError:
        raise ConfigError(f"experiment.name: {run_dir} was claimed by another run that started "
                          f"at the same moment ({_live_holder(run_dir) or 'it has ended'}); "
                          f"its files are left as they are: choose another name") from None
    finally:
        aside.unlink()


def _live_holder(run_dir: Path) -> str:
    """The run that holds `run_dir` and still runs on this machine ("process N on HOST"), or
    "" (no claim, a claim from a process that ended, or from another machine)."""
    try:
        claim = json.loads((run_dir / CLAIM).read_text())
        pid, host = int(claim["pid"]), str(claim["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    if host != os.uname().nodename or pid == os.getpid():
        return ""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return ""
    except PermissionError:  # alive, under another user
        pass
    return f"process {pid} on {host}"


def _holds_a_run(run_dir: Path) -> bool:
    """Whether a fedisguise run wrote `run_dir`: its claim, a grid cell's cell.json, or a
    metrics.json with a run's status."""
    if (run_dir / CLAIM).is_file() or (run_dir / "cell.json").is_file():
        return True
    try:
        record = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(record, dict) and "status" in record


def run_experiment(cfg: Config, superlink: str | None = None, force: bool = False,
                   claimed: bool = False) -> dict[str, Any]:
    """Run `cfg` in its configured mode and return the metrics record it wrote (see
    `_run_experiment`); a full disk under the results is NoSpace, in one line, with the
    last record that reached the disk left as it was, or marked failed where space allows.
    """
    from fedisguise.results import out_of_space

    try:
        return _run_experiment(cfg, superlink, force, claimed)
    except OSError as err:
        if not out_of_space(err):
            raise
        raise _no_space(cfg.run_dir) from None


def _no_space(run_dir: Path) -> Exception:
    """The NoSpace error for a run whose results stopped reaching `run_dir`, after trying to
    mark its last record failed (a record that reached the disk stays valid either way)."""
    from fedisguise.results import NoSpace, rewrite_record

    out = run_dir.resolve().parent
    try:
        record = json.loads((run_dir / "metrics.json").read_text())
        done, total = len(record["rounds"]), int(record["config"]["experiment"]["rounds"])
    except (OSError, ValueError, KeyError, TypeError):
        record, done, total = None, 0, 1
    what = f"round {done + 1}'s results" if done < total else "the run's final results"
    why = f"no space left on {out}: {what} could not be written"
    if record is not None and record.get("status") != "interrupted":
        # failed even where training finished: its figures are not all on disk
        record["status"], record["error"] = "failed", why
        try:
            rewrite_record(run_dir, record)
        except OSError:
            pass  # still full: the previous round's complete record stays
    return NoSpace(f"{why}; free space and rerun with --force")


def _run_experiment(cfg: Config, superlink: str | None, force: bool, claimed: bool
                    ) -> dict[str, Any]:
    """Run `cfg` in its configured mode and return the metrics record it wrote.

    `superlink` (deployment only) submits to an existing SuperLink instead of starting one.
    `claimed`: the caller already claimed the run folder (run.py does, to exit 2 before
    anything starts); otherwise it is claimed here, with `force`.
    The record's `status` says how the run ended: `finished` (a model was trained; the
    privacy figures and attacks follow), `failed` (with `error`). KeyboardInterrupt (Ctrl-C,
    SIGTERM via run.py) propagates after metrics.json is marked `interrupted`.
    """
    # Results are written by the ServerApp, which in deployment runs in another process with
    # another working directory: pin the output folder to an absolute path first.
    cfg = replace(cfg, experiment=replace(cfg.experiment,
                                          out=str(Path(cfg.experiment.out).resolve())))
    if not claimed:  # run.py claims before it starts (exit 2 there); nothing claims twice
        claim_run_dir(cfg, force)
    metrics_path = cfg.run_dir / "metrics.json"
    from fedisguise.disguise import DISGUISES
    from fedisguise.interrupts import as_interrupt
    from fedisguise.results import mark_interrupted

    started = time.perf_counter()
    try:
        # e.g. a transformation network, trained once before the run
        cfg = DISGUISES[cfg.disguise_name].prepare(cfg)
        if cfg.experiment.mode == "simulation":
            run_simulation(cfg)
        else:
            from fedisguise.deployment.federation import run_deployment

            run_deployment(cfg, superlink)
    except KeyboardInterrupt as why:
        mark_interrupted(cfg.run_dir, cfg.to_dict(), str(why) or "interrupted (Ctrl-C)")
        raise
    except Exception as err:
        interrupt = as_interrupt(err)  # a clean-up error raised while a signal unwound
        if interrupt is not None:
            mark_interrupted(cfg.run_dir, cfg.to_dict(), str(interrupt))
            raise interrupt from err
        _mark_failed(metrics_path, f"{type(err).__name__}: {err}")
        raise
    if not metrics_path.is_file():
        raise RuntimeError(f"the run ended without writing {metrics_path}; see the log above")
    record = json.loads(metrics_path.read_text())
    if record.get("status") != "finished":
        if record.get("status") == "running":  # the server process died mid-run
            record = _mark_failed(metrics_path, "the server ended before the last round; "
                                  "see the log above")
        return record
    from fedisguise.finish import after_training

    return after_training(cfg, record, remote=bool(superlink),
                          training_seconds=time.perf_counter() - started)


def _mark_failed(metrics_path: Path, why: str) -> dict[str, Any] | None:
    """Mark a run that ended by an exception `failed`, keeping its rounds."""
    from fedisguise.results import rewrite_record

    try:
        record = json.loads(metrics_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("status") in ("running", None):
        record["status"], record["error"] = "failed", record.get("error") or why
        record = rewrite_record(metrics_path.parent, record)
    return record


def cluster_modules(plugins: list[str]) -> list[Any]:
    """The packages a Ray cluster's nodes need and may lack, shipped with the job: fedisguise,
    strategies, and every plugin loaded here that is a package or a module (a plugin file is
    found by its path, which other machines lack: install it there as a package)."""
    import fedisguise
    import strategies
    from fedisguise.plugins import is_path, loaded

    modules: dict[str, Any] = {"fedisguise": fedisguise, "strategies": strategies}
    for spec in [*loaded(), *plugins]:
        top = None if is_path(spec) else sys.modules.get(spec.split(".")[0])
        if top is not None and hasattr(top, "__path__"):  # Ray ships packages, not files
            modules.setdefault(top.__name__, top)
    return list(modules.values())


class OnceDeprecated(logging.Filter):
    """Flower warns that run_simulation is deprecated on every call, four times in a
    four-cell grid: once a process says it (README, "Flower's deprecations", has the plan)."""

    said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not (str(record.msg).startswith("DEPRECATED FEATURE")
                and "run_simulation" in str(record.args)):
            return True
        said, OnceDeprecated.said = OnceDeprecated.said, True
        return not said


def run_simulation(cfg: Config) -> None:
    """Flower simulation: N virtual SuperNodes, each a ClientApp with its own partition."""
    from flwr.simulation import run_simulation as flwr_run_simulation

    from fedisguise.fl.client_app import make_client_app
    from fedisguise.fl.server_app import make_server_app

    resources = {"num_cpus": cfg.resources.num_cpus, "num_gpus": cfg.resources.num_gpus}
    backend_config = {"client_resources": resources, "init_args": ray_init_args(cfg)}
    # The Python entry point is marked deprecated in favour of `flwr run`, but it is the one
    # that lets the ServerApp share this process (and its observers) with the CLI.
    flwr_log = logging.getLogger("flwr")
    flwr_log.setLevel(logging.WARNING)
    if not any(isinstance(f, OnceDeprecated) for f in flwr_log.filters):
        flwr_log.addFilter(OnceDeprecated())
    start_ray(backend_config["init_args"], cfg.experiment.plugins)
    with _flower_keeps_ray(_kept_ray is not None):
        flwr_run_simulation(
            server_app=make_server_app(cfg, mode="simulation"),
            client_app=make_client_app(cfg),
            num_supernodes=cfg.experiment.clients,
            backend_config=backend_config,
        )


# The ray.init arguments of a local Ray kept up between runs (ray_kept_between_runs), or None.
_kept_ray: dict[str, Any] | None = None


@contextmanager
def ray_kept_between_runs() -> Iterator[None]:
    """One local Ray for every simulation inside (a grid's cells), where Flower's Ray backend
    would shut Ray down after each run: starting it again costs about 5 s on these 2 cores
    (ray.init 4 s, ray.shutdown 1.4 s), some 380 times in the headline grid. Each run still
    gets fresh actors (Flower ends its pool). Ray is shut down when the block ends, and at
    once after a run that fails, so the next run starts a clean one."""
    global _kept_ray
    before, _kept_ray = _kept_ray, _kept_ray if _kept_ray is not None else {}
    try:
        yield
    finally:
        _kept_ray = before
        if before is None:
            import ray

            if ray.is_initialized():
                ray.shutdown()


@contextmanager
def _flower_keeps_ray(keep: bool) -> Iterator[None]:
    """Flower's backend ends a run with ray.shutdown(): a no-op inside, when Ray is kept."""
    if not keep:
        yield
        return
    import ray

    shutdown = ray.shutdown
    ray.shutdown = lambda *args, **kwargs: None
    try:
        yield
    except BaseException:
        ray.shutdown = shutdown
        shutdown()
        raise
    finally:
        ray.shutdown = shutdown


def ray_address(cfg: Config) -> str:
    """The running cluster to join (resources.ray_address, else RAY_ADDRESS), or ""."""
    address = cfg.resources.ray_address or os.environ.get("RAY_ADDRESS", "")
    return "" if address == "local" else address


def ray_init_args(cfg: Config) -> dict[str, Any]:
    """ray.init's arguments: a cluster's address alone (Ray refuses num_cpus/num_gpus when
    it joins one: the cluster has its own), else a Ray of this machine's size, started here
    even where another is running ("local")."""
    address = ray_address(cfg)
    if address:
        return {"address": address}
    # Ray must see at least one client's worth of CPUs/GPUs or it schedules nothing.
    args: dict[str, Any] = {"address": "local",
                            "num_cpus": max(os.cpu_count() or 1, int(cfg.resources.num_cpus + 0.999))}
    if cfg.resources.num_gpus > 0:
        import torch

        args["num_gpus"] = max(torch.cuda.device_count(), 1)
    return args


def start_ray(init_args: dict[str, Any], plugins: list[str] = ()) -> None:
    """Start Ray here, in the main thread, as Flower's Ray backend would (it skips its own
    ray.init when Ray is up), then put back this process's SIGINT/SIGTERM handlers.

    ray.init installs handlers of its own, among them a native one that aborts the process
    on SIGTERM: run.py's handler, which marks the run interrupted and ends every child, would
    never run.
    """
    import signal
    import threading

    import ray

    global _kept_ray
    local = init_args.get("address") == "local"
    if ray.is_initialized():
        if _kept_ray is None or _kept_ray == {**init_args, "plugins": list(plugins)}:
            return
        ray.shutdown()  # the Ray kept from an earlier run has other resources or plugins
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    # Ray's workers inherit the environment, not this process's sys.path (Flower does this).
    pythonpath = os.pathsep.join([*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])])
    os.environ["PYTHONPATH"] = pythonpath
    runtime_env: dict[str, Any] = {"env_vars": {"PYTHONPATH": pythonpath}}
    if init_args.get("address") != "local":  # a cluster's other machines get the code too
        runtime_env["py_modules"] = cluster_modules(plugins)
    ray.init(runtime_env=runtime_env, include_dashboard=False, **init_args)
    if _kept_ray is not None and local:
        _kept_ray = {**init_args, "plugins": list(plugins)}
    if threading.current_thread() is threading.main_thread():
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)
