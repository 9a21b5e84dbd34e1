"""results/<run>/: metrics.json, rounds.csv, updates.json and summary.md for one run.

Everything a reader needs to trust the figures sits beside them: the resolved config, the
seed, library versions, timings. Tables are generated from these files, never typed by hand.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

ROUND_COLUMNS = ("round", "train_loss", "test_accuracy", "test_loss", "plain_test_accuracy",
                 "plain_test_loss", "round_seconds", "bytes_up", "bytes_down", "clients", "epsilon")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for pkg in ("fedisguise", "flwr", "torch", "torchvision", "numpy", "opacus"):
        try:
            found[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            found[pkg] = "not installed"
    return found


def write_run(run_dir: Path, record: dict[str, Any], ledger: list[Any]) -> None:
    """Write all result files of a finished run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rewrite_record(run_dir, record)
    (run_dir / "updates.json").write_text(
        json.dumps([dataclasses.asdict(e) for e in ledger], indent=2) + "\n"
    )
    with (run_dir / "rounds.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=ROUND_COLUMNS)
        writer.writeheader()
        for row in record["rounds"]:
            writer.writerow({k: (" ".join(map(str, row[k])) if k == "clients" else row[k])
                             for k in ROUND_COLUMNS})


def rewrite_record(run_dir: Path, record: dict[str, Any]) -> None:
    """Rewrite metrics.json and summary.md after the harness added figures to a record."""
    (run_dir / "metrics.json").write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
    (run_dir / "summary.md").write_text(summary_markdown(record))


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def summary_markdown(record: dict[str, Any]) -> str:
    cfg = record["config"]
    e = cfg["experiment"]
    lines = [
        f"# {e['name']}",
        "",
        f"{cfg['data']['dataset']}, {e['clients']} clients ({cfg['data']['partitioner']}), "
        f"model {cfg['model']['name']}, strategy {cfg['strategy']['name']}, "
        f"disguise {json.dumps(cfg['disguise'])}, mode {record['mode']}, seed {e['seed']}.",
        "",
        f"**Final test accuracy: {_fmt(record['final']['test_accuracy'])}** (on the clients' "
        f"disguised test shards; on plain test images "
        f"{_fmt(record['final']['plain_test_accuracy'])}"
        f", initially {_fmt(record['initial']['plain_test_accuracy'])}) after "
        f"{len(record['rounds'])} rounds in {record['wall_seconds']:.1f} s. "
        f"Keys: {record['keys']['scope']}, {record['keys']['source']}.",
        "",
        "| round | train loss | test acc | test loss | plain test acc | s/round | MB up "
        "| MB down |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in record["rounds"]:
        lines.append(
            f"| {r['round']} | {_fmt(r['train_loss'])} | {_fmt(r['test_accuracy'])} | "
            f"{_fmt(r['test_loss'])} | {_fmt(r['plain_test_accuracy'])} | "
            f"{r['round_seconds']:.2f} | {r['bytes_up'] / 1e6:.2f} | {r['bytes_down'] / 1e6:.2f} |"
        )
    if record.get("privacy"):
        lines += ["", "Privacy: " + ", ".join(f"{k} {_fmt(v) if isinstance(v, float) else v}"
                                              for k, v in record["privacy"].items()
                                              if not isinstance(v, dict))]
    grid = (record.get("privacy") or {}).get("grid") or record.get("grid")
    if grid:
        lines += ["", f"![plain (top) | as the clients see them (bottom)]({grid})"]
    if record.get("transform_net"):
        t = record["transform_net"]
        lines += ["", f"Transformation network (α = {t['training']['alpha']}, features "
                      f"{t['features_used']}, trained by the {t['trainer']}): classifier ψ "
                      f"({t['classifier']}) accuracy {_fmt(t['psi_accuracy_plain'])} on plain "
                      f"test images, {_fmt(t['psi_accuracy_transformed'])} on transformed ones."]
    if record.get("dp"):
        lines += ["", f"DP-SGD: ε = {_fmt(record['final'].get('epsilon'))} at δ = "
                      f"{record['dp']['delta']:g} (largest cumulative ε any client reports)."]
    for name, figures in (record.get("attacks") or {}).items():
        shown = ", ".join(f"{k} {_fmt(v) if isinstance(v, float) else v}"
                          for k, v in figures.items() if not isinstance(v, dict | list | tuple))
        lines += ["", f"Attack {name}: {shown}"]
        if figures.get("grid"):
            lines += ["", f"![{name}: original | disguised | reconstructed]({figures['grid']})"]
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items()), ""]
    return "\n".join(lines)
