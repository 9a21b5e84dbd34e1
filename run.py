#!/usr/bin/env python
"""fedisguise CLI: parse, validate the config, dispatch to simulation or deployment.

    python run.py                                  # configs/default.toml in simulation
    python run.py --config configs/smoke.toml --set train.lr=0.02 --rounds 2
    python run.py --mode deployment --clients 2    # real SuperLink + SuperNode processes
    python run.py --compare configs/compare-smoke.toml  # a grid of runs and one table
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.toml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path,
                        help="TOML experiment config (default: configs/default.toml)")
    parser.add_argument("--compare", type=Path, metavar="GRID",
                        help="run a comparison grid (a compare TOML file): every cell a normal "
                             "run under OUT/<compare.name>/, finished cells skipped, then "
                             "table.md, table.csv and plots; --set, --mode, --clients, "
                             "--rounds apply to every cell")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override one config value, typed by its key (repeatable), "
                             "e.g. --set train.lr=0.01 --set data.partitioner=dirichlet")
    parser.add_argument("--mode", choices=["simulation", "deployment"],
                        help="experiment.mode")
    parser.add_argument("--clients", type=int, help="experiment.clients")
    parser.add_argument("--rounds", type=int, help="experiment.rounds")
    parser.add_argument("--out", help="experiment.out (results go to OUT/<experiment.name>/)")
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
    for flag, key in (("mode", "experiment.mode"), ("clients", "experiment.clients"),
                      ("rounds", "experiment.rounds")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    return overrides


def run_compare(args: argparse.Namespace) -> int:
    from fedisguise.compare import load_grid, run_grid
    from fedisguise.config import ConfigError

    try:
        if args.config or args.superlink or args.root_certificates:
            raise ConfigError("--compare takes the base config from the compare file; drop "
                              "--config/--superlink/--root-certificates")
        grid = load_grid(args.compare, cell_overrides(args), out=args.out)
        from fedisguise.experiment import preflight

        for cfg in {c.config.data.dataset: c.config for c in grid.cells}.values():
            preflight(cfg)
        from fedisguise.deployment import check_security

        for cell in grid.cells:
            if cell.config.experiment.mode == "deployment":
                check_security(cell.config)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    outcome = run_grid(grid)
    print(f"\n{grid.name}: {len(outcome['ran'])} cells run, {len(outcome['skipped'])} "
          f"already finished, {len(outcome['failed'])} failed; table in "
          f"{grid.out / 'table.md'}")
    for name, why in outcome["failed"].items():
        print(f"  failed: {name}: {why}", file=sys.stderr)
    return 1 if outcome["failed"] else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
        if cfg.experiment.mode == "deployment":
            from fedisguise.deployment import check_security

            check_security(cfg, args.superlink)
        if not args.superlink:  # with a remote SuperLink the data lives on other machines
            from fedisguise.experiment import preflight

            preflight(cfg)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # Ending on SIGTERM must run the same clean-up as Ctrl-C (child Flower processes).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))

    from fedisguise.experiment import run_experiment

    record = run_experiment(cfg, superlink=args.superlink)
    print(f"\nfinal test accuracy {record['final']['test_accuracy']:.4f} after "
          f"{len(record['rounds'])} rounds ({record['wall_seconds']:.1f} s); "
          f"results in {cfg.run_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
