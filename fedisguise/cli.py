"""fedisguise CLI: parse, validate the config, dispatch to simulation, deployment or a grid.

The `fedisguise` command (`command`), and `run.py`'s flags (`main`), which it wraps:

    fedisguise run                        # the shipped default.toml: the quickstart grid
    fedisguise run fedavg                 # a shipped config by name: plain FedAvg, one run
    fedisguise run my.toml --set train.lr=0.02 --rounds 2
    fedisguise run fedavg --mode deployment --clients 2   # SuperLink + SuperNodes
    fedisguise compare compare-smoke      # a grid of runs and one table
    fedisguise keygen --out keys/ --clients 4
    python run.py --config configs/fedavg.toml            # the same, from a checkout
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

# The shipped configs: package data (the checkout's top-level configs/ links here).
CONFIGS = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIGS / "default.toml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path,
                        help="TOML experiment config (default: configs/default.toml, the "
                             "quickstart grid); a file with a [compare] table runs as "
                             "--compare")
    parser.add_argument("--compare", type=Path, metavar="GRID",
                        help="run a comparison grid (a compare TOML file): every cell a normal "
                             "run under OUT/<compare.name>/, finished cells skipped, then "
                             "table.md, table.csv and plots; --set, --mode, --clients, "
                             "--rounds apply to every cell")
    parser.add_argument("--only", metavar="LABEL[,LABEL...]",
                        help="with --compare: run only these defences' cells (and tuning "
                             "runs); the table still holds every finished cell of the grid "
                             "and lists the others as missing")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override one config value, typed by its key (repeatable), "
                             "e.g. --set train.lr=0.01 --set data.partitioner=dirichlet")
    parser.add_argument("--plugin", dest="plugins", action="append", default=[],
                        metavar="MODULE|FILE.py",
                        help="load a plugin that registers a defence, attack, dataset or model "
                             "(repeatable; adds to experiment.plugins)")
    parser.add_argument("--mode", choices=["simulation", "deployment"],
                        help="experiment.mode")
    parser.add_argument("--clients", type=int, help="experiment.clients")
    parser.add_argument("--rounds", type=int, help="experiment.rounds")
    parser.add_argument("--out", help="experiment.out (results go to OUT/<experiment.name>/)")
    parser.add_argument("--force", action="store_true",
                        help="replace the results of an earlier run of the same name "
                             "(without it, an existing results/<run>/ is refused)")
    parser.add_argument("--superlink", metavar="HOST:PORT",
                        help="deployment only: submit to this running SuperLink instead of "
                             "starting local SuperLink/SuperNode processes")
    parser.add_argument("--root-certificates", metavar="CA_CERT",
                        help="with --superlink: the CA certificate (PEM) that the SuperLink's "
                             "TLS certificate chains to; sets deployment.tls = true and "
                             "deployment.root_certificates")
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace):
    from fedisguise.config import load_config

    overrides = cell_overrides(args) + ([f"experiment.out={args.out}"] if args.out else [])
    if args.root_certificates:
        ca = Path(args.root_certificates).expanduser().resolve()
        overrides += ["deployment.tls=true", f"deployment.root_certificates={ca}"]
    return load_config(args.config or DEFAULT_CONFIG).with_overrides(overrides)


def cell_overrides(args: argparse.Namespace) -> list[str]:
    """--set and the shorthand flags as overrides (for a grid: of every cell; a grid places
    its cells under --out itself)."""
    overrides = list(args.overrides)
    if args.plugins:
        overrides.append(f"experiment.plugins+={json.dumps(args.plugins)}")
    for flag, key in (("mode", "experiment.mode"), ("clients", "experiment.clients"),
                      ("rounds", "experiment.rounds")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    return overrides


def run_compare(args: argparse.Namespace) -> int:
    from fedisguise.config import ConfigError
    from fedisguise.grids.runner import run_grid, selected_defences
    from fedisguise.grids.spec import load_grid

    try:
        if args.config or args.superlink or args.root_certificates:
            raise ConfigError("--compare takes the base config from the compare file; drop "
                              "--config/--superlink/--root-certificates")
        grid = load_grid(args.compare, cell_overrides(args), out=args.out)
        only = None if args.only is None else args.only.split(",")
        chosen = selected_defences(grid, only)
        from fedisguise.deployment.submission import check_security
        from fedisguise.preflight import preflight

        # cheap after the first cell: the data are loaded once
        for cell in (c for c in [*grid.tune_cells, *grid.all_cells] if c.defence in chosen):
            try:
                preflight(cell.config)
                if cell.config.experiment.mode == "deployment":
                    check_security(cell.config)
            except ConfigError as err:
                raise ConfigError(f"cell {cell.name}: {err}") from None
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.force:
        print("error: --force does not apply to --compare: a grid reruns exactly its "
              "unfinished cells", file=sys.stderr)
        return 2
    install_signal_handlers()
    try:
        outcome = run_grid(grid, only=only)
    except KeyboardInterrupt as why:
        print(f"\n{grid.name}: {interrupt_name(why)}; finished cells are kept, the cell that "
              "was running is marked interrupted; run the same command to resume",
              file=sys.stderr)
        hard_exit(interrupt_code(why))
    from fedisguise.grids.table import answer_lines, time_line

    print(f"\n{grid.name}: {len(outcome['ran'])} cells run, {len(outcome['skipped'])} "
          f"already finished, {len(outcome['failed'])} failed")
    print("\n".join(answer_lines(outcome["rows"])))
    print(time_line(outcome["time"]))
    print(f"table: {grid.out / 'table.md'}\nreport (open in a browser): "
          f"{grid.out / 'report.html'}")
    for name, why in outcome["failed"].items():
        print(f"  failed: {name}: {why}", file=sys.stderr)
    return 1 if outcome["failed"] else 0


def is_compare_file(path: Path) -> bool:
    """A config holding a [compare] table is a grid (configs/default.toml is one)."""
    import tomllib

    try:
        with path.open("rb") as fh:
            return "compare" in tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return False  # load_config names the problem


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.compare and is_compare_file(args.config or DEFAULT_CONFIG):
        args.compare, args.config = args.config or DEFAULT_CONFIG, None
    if args.compare:
        return run_compare(args)
    from fedisguise.config import ConfigError

    try:
        cfg = resolve_config(args)
        if args.superlink and cfg.experiment.mode != "deployment":
            raise ConfigError("--superlink needs --mode deployment")
        if args.root_certificates and not args.superlink:
            raise ConfigError("--root-certificates is for --superlink; the local federation "
                              "takes deployment.certificates")
        if args.only is not None:
            raise ConfigError("--only picks defences of a comparison grid; it needs --compare "
                              "(or a config with a [compare] table)")
        if cfg.experiment.mode == "deployment":
            from fedisguise.deployment.submission import check_security

            check_security(cfg, args.superlink)
        from fedisguise.preflight import preflight

        # With a remote SuperLink the data and the nodes' keys live on other machines.
        preflight(cfg, remote=bool(args.superlink))
        from fedisguise.experiment import claim_run_dir

        claim_run_dir(cfg, args.force)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    install_signal_handlers()
    from fedisguise.deployment.ports import PortsTaken
    from fedisguise.experiment import run_experiment
    from fedisguise.results import NoSpace

    try:
        record = run_experiment(cfg, superlink=args.superlink, claimed=True)
    except KeyboardInterrupt as why:
        print(f"\n{interrupt_name(why)}: the rounds that finished are in {cfg.run_dir}/ "
              "(metrics.json status \"interrupted\")", file=sys.stderr)
        hard_exit(interrupt_code(why))
    except PortsTaken as err:  # the machine's ports, not the run: nothing was trained
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NoSpace as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return report(record, cfg.run_dir)


def report(record: dict, run_dir: Path) -> int:
    """The closing line, and the exit code: 0 only when a model was trained and its results
    are on disk."""
    rounds = len(record["rounds"])
    from fedisguise.results import describe_failure

    for failure in record.get("failures") or []:
        print(f"  {describe_failure(failure)}", file=sys.stderr)
    if record.get("status") != "finished":
        print(f"\nrun {record.get('status')} after {rounds} rounds: {record.get('error')}; "
              f"results so far in {run_dir}/", file=sys.stderr)
        return 1
    print(f"\nfinal test accuracy {_fmt(record['final']['test_accuracy'])} after {rounds} "
          f"rounds ({record['wall_seconds']:.1f} s)"
          + (" (diverged: non-finite figures written as null)" if record.get("diverged") else "")
          + f"; results in {run_dir}/")
    return 0


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


class Interrupted(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: the same clean-up, exit 128 + 15."""


def install_signal_handlers() -> None:
    """Ctrl-C and SIGTERM both unwind as KeyboardInterrupt, so results are marked and child
    processes stopped on either."""
    from fedisguise import interrupts

    def on_term(signum: int, frame: object) -> None:
        interrupts.record("SIGTERM")
        raise Interrupted("SIGTERM")

    def on_int(signum: int, frame: object) -> None:
        interrupts.record("SIGINT")
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_int)


def _terminated(why: BaseException) -> bool:
    """SIGTERM: raised as Interrupted, or the first signal recorded (fedisguise.interrupts)
    where a clean-up error stood in for it."""
    from fedisguise import interrupts

    return isinstance(why, Interrupted) or interrupts.received() == "SIGTERM"


def interrupt_name(why: BaseException) -> str:
    return "terminated (SIGTERM)" if _terminated(why) else "interrupted (Ctrl-C)"


def interrupt_code(why: BaseException) -> int:
    return 128 + (signal.SIGTERM if _terminated(why) else signal.SIGINT)


def hard_exit(code: int) -> None:
    """Leave now that the results are on disk. Flower's simulation leaves non-daemon threads
    (its ServerApp thread, a thread pool) waiting for replies that will never come, so a
    normal interpreter exit would wait forever: stop Ray, end every process started from
    here, and exit without joining threads. A second Ctrl-C exits at once."""
    signal.signal(signal.SIGINT, lambda *_: os._exit(code))
    signal.signal(signal.SIGTERM, lambda *_: os._exit(code))
    sys.stdout.flush()
    sys.stderr.flush()
    from fedisguise.deployment.processes import descendants, end_descendants

    started = descendants(os.getpid())  # Ray's workers outlive the raylet, re-parented
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        stopper = threading.Thread(target=ray.shutdown, daemon=True)
        stopper.start()
        stopper.join(timeout=5)
    end_descendants(os.getpid(), known=started)
    os._exit(code)


# ---- the `fedisguise` command -------------------------------------------------------------
COMMANDS = {"run": "a config or a grid (a file, or a shipped config by name)",
            "compare": "a comparison grid (a file, or a shipped grid by name)",
            "keygen": "write a key folder for client.key_dir"}


def shipped() -> list[str]:
    return sorted(p.stem for p in CONFIGS.glob("*.toml"))


def config_path(name: str) -> Path:
    """A config file as given, else a shipped config by name (`smoke`, `compare-smoke`)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if "/" not in name and (CONFIGS / f"{name.removesuffix('.toml')}.toml").is_file():
        return CONFIGS / f"{name.removesuffix('.toml')}.toml"
    raise FileNotFoundError(f"no config file {name!r}, and no shipped config of that name; "
                            f"shipped: {', '.join(shipped())}")


def command(argv: list[str] | None = None) -> int:
    """`fedisguise run|compare|keygen …`: run.py's flags after a subcommand and a config."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        asked = argv[:1] in (["-h"], ["--help"])
        lines = [f"  {name:8} {why}" for name, why in COMMANDS.items()]
        print("usage: fedisguise {run,compare,keygen} [CONFIG|NAME] [options]\n"
              + "\n".join(lines) + f"\nshipped configs: {', '.join(shipped())}\n"
              "options: `fedisguise run --help`", file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    sub, rest = argv[0], argv[1:]
    if sub == "keygen":
        from fedisguise.disguise.keygen import main as keygen

        return keygen(rest)
    target = rest.pop(0) if rest and not rest[0].startswith("-") else None
    if target is None and sub == "compare" and not {"-h", "--help"} & set(rest):
        print("error: fedisguise compare needs a grid (a file or a shipped name)",
              file=sys.stderr)
        return 2
    try:
        path = config_path(target) if target else None
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    flag = "--compare" if sub == "compare" else "--config"
    return main(([flag, str(path)] if path else []) + rest)
