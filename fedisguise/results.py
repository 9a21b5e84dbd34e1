"""results/<run>/: metrics.json, rounds.csv, updates.json and summary.md for one run.

Everything a reader needs to trust the figures sits beside them: the resolved config, the
seed, library versions, timings. Tables are generated from these files, never typed by hand.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import io
import json
import math
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

ROUND_COLUMNS = ("round", "train_loss", "test_accuracy", "test_loss", "plain_test_accuracy",
                 "plain_test_loss", "validation_accuracy", "round_seconds", "bytes_up", "bytes_down", "clients", "epsilon")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for pkg in ("fedisguise", "flwr", "torch", "torchvision", "numpy", "opacus"):
        try:
            found[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            found[pkg] = "not installed"
    return found


STATUSES = ("running", "finished", "failed", "interrupted")
_FROZEN: set[Path] = set()  # run folders this process must no longer write (interrupted)


def clean_figures(value: Any, where: str = "") -> tuple[Any, list[str]]:
    """`value` with every non-finite float replaced by None (JSON has no NaN or inf), and
    the paths of the figures replaced: a diverged run keeps its results instead of crashing
    the writer."""
    if isinstance(value, float) and not math.isfinite(value):
        return None, [where or "."]
    if isinstance(value, dict):
        found: list[str] = []
        clean = {}
        for k, v in value.items():
            clean[k], bad = clean_figures(v, f"{where}.{k}" if where else str(k))
            found += bad
        return clean, found
    if isinstance(value, list | tuple):
        found, clean_list = [], []
        for i, v in enumerate(value):
            c, bad = clean_figures(v, f"{where}[{i}]")
            clean_list.append(c)
            found += bad
        return clean_list, found
    return value, []


class NoSpace(OSError):
    """The results folder's disk is full: the run cannot leave a true record of what it
    trained (run.py exits 1 with this one line)."""


def out_of_space(err: BaseException) -> bool:
    """Whether `err` is a write refused for want of space (disk full, or over quota)."""
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`: a reader
    (or a crash) sees the old file or the new one, never half of one, and a write that fails
    (a full disk) leaves no temporary file behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_run(run_dir: Path, record: dict[str, Any], ledger: list[Any]) -> None:
    """Write every result file of a run, finished or not (after each round, and at the end)."""
    run_dir = Path(run_dir)
    if run_dir.resolve() in _FROZEN:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "updates.json",
                 json.dumps([dataclasses.asdict(e) for e in ledger], indent=2) + "\n")
    rows = io.StringIO()
    writer = csv.DictWriter(rows, fieldnames=ROUND_COLUMNS)
    writer.writeheader()
    for row in clean_figures(record["rounds"])[0]:
        # .get: a record written before a column existed (validation_accuracy) has none.
        writer.writerow({k: (" ".join(map(str, row[k])) if k == "clients" else row.get(k))
                         for k in ROUND_COLUMNS})
    write_atomic(run_dir / "rounds.csv", rows.getvalue())
    rewrite_record(run_dir, record)


def rewrite_record(run_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write metrics.json and summary.md (atomically); non-finite figures become null and
    set `diverged`. Returns the record as written."""
    run_dir = Path(run_dir)
    clean, bad = clean_figures(record)
    clean["diverged"] = bool(record.get("diverged")) or bool(bad)
    if bad:
        clean["non_finite"] = sorted(set(record.get("non_finite", [])) | set(bad))
    write_atomic(run_dir / "metrics.json", json.dumps(clean, indent=2, allow_nan=False) + "\n")
    write_atomic(run_dir / "summary.md", summary_markdown(clean, run_dir))
    return clean


def mark_interrupted(run_dir: Path, config: dict[str, Any], why: str) -> dict[str, Any]:
    """Mark the run in `run_dir` interrupted, keeping the rounds it finished; from then on
    this process writes nothing more there (a server thread may still be running)."""
    run_dir = Path(run_dir).resolve()
    _FROZEN.add(run_dir)
    path = run_dir / "metrics.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        record = new_record(config, mode=config["experiment"]["mode"])
    record["status"], record["error"] = "interrupted", why
    run_dir.mkdir(parents=True, exist_ok=True)
    return rewrite_record(run_dir, record)


def new_record(config: dict[str, Any], mode: str) -> dict[str, Any]:
    """The record of a run that has not finished a round yet."""
    return {"run": config["experiment"]["name"], "mode": mode, "status": "running",
            "error": None, "seed": config["experiment"]["seed"], "config": config,
            "versions": versions(), "rounds": [], "failures": [], "initial": None,
            "final": None, "wall_seconds": 0.0, "diverged": False}


def describe_failure(f: dict[str, Any]) -> str:
    """One failed reply or lost node of metrics.json's `failures`, in words."""
    who = f"client {f['partition_id']}" if f.get("partition_id") is not None else "a client"
    what = "was lost" if f["phase"] == "connect" else f"failed to {f['phase']}"
    return f"round {f['server_round']}: {who} (node {f['node_id']}) {what}: {f['error']}"


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def summary_markdown(record: dict[str, Any], run_dir: Path | None = None) -> str:
    """summary.md: the run in a page. Images are linked only where the file exists in
    `run_dir` (a run interrupted before its pictures were drawn links none)."""
    cfg = record["config"]
    e = cfg["experiment"]
    final, initial = record.get("final") or {}, record.get("initial") or {}
    status = record.get("status", "finished")

    def image(alt: str, link: str | None) -> list[str]:
        if not link or (run_dir is not None and not (Path(run_dir) / link).is_file()):
            return []
        return ["", f"![{alt}]({link})"]

    lines = [
        f"# {e['name']}",
        "",
        f"{cfg['data']['dataset']}, {e['clients']} clients ({cfg['data']['partitioner']}), "
        f"model {cfg['model']['name']}, strategy {cfg['strategy']['name']}, "
        f"disguise {json.dumps(cfg['disguise'])}, mode {record['mode']}, seed {e['seed']}.",
        "",
    ]
    if status != "finished":
        lines += [f"**Status: {status}** after {len(record['rounds'])} of {e['rounds']} "
                  f"rounds" + (f": {record['error']}" if record.get("error") else "") + ".", ""]
    if record.get("diverged"):
        lines += ["**Diverged:** non-finite figures were written as null ("
                  + ", ".join(record.get("non_finite", [])[:8]) + ").", ""]
    if final:
        keys = record.get("keys") or {}
        lines += [
            f"**Final test accuracy: {_fmt(final.get('test_accuracy'))}** (on the clients' "
            f"disguised test shards; on plain test images "
            f"{_fmt(final.get('plain_test_accuracy'))}"
            f", initially {_fmt(initial.get('plain_test_accuracy'))}) after "
            f"{len(record['rounds'])} rounds in {record['wall_seconds']:.1f} s. "
            f"Keys: {keys.get('scope', '–')}, {keys.get('source', '–')}; random draws: "
            f"{keys.get('draws', '–')}.",
            "",
        ]
    lines += [
        "| round | train loss | test acc | test loss | plain test acc | s/round | MB up "
        "| MB down |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in record["rounds"]:
        lines.append(
            f"| {r['round']} | {_fmt(r['train_loss'])} | {_fmt(r['test_accuracy'])} | "
            f"{_fmt(r['test_loss'])} | {_fmt(r['plain_test_accuracy'])} | "
            f"{_fmt(r['round_seconds'], 2)} | {r['bytes_up'] / 1e6:.2f} | "
            f"{r['bytes_down'] / 1e6:.2f} |"
        )
    if record.get("faulty_clients"):
        lines += ["", "Faulty on purpose (config `faults`): "
                  + "; ".join(record["faulty_clients"]) + "."]
    failures = record.get("failures") or []
    if failures:
        lines += ["", "Client failures:", *(f"- {describe_failure(f)}" for f in failures)]
    if record.get("privacy"):
        lines += ["", "Privacy: " + ", ".join(f"{k} {_fmt(v) if isinstance(v, float) else v}"
                                              for k, v in record["privacy"].items()
                                              if not isinstance(v, dict))]
    lines += image("plain (top) | as the clients see them (bottom)",
                   (record.get("privacy") or {}).get("grid") or record.get("grid"))
    if record.get("transform_net"):
        t = record["transform_net"]
        lines += ["", f"Transformation network (α = {t['training']['alpha']}, features "
                      f"{t['features_used']}, trained by the {t['trainer']}): classifier ψ "
                      f"({t['classifier']}) accuracy {_fmt(t['psi_accuracy_plain'])} on plain "
                      f"test images, {_fmt(t['psi_accuracy_transformed'])} on transformed ones."]
    if record.get("dp") and final:
        lines += ["", f"DP-SGD: ε = {_fmt(final.get('epsilon'))} at δ = "
                      f"{record['dp']['delta']:g} (largest cumulative ε any client reports)."]
    for name, figures in (record.get("attacks") or {}).items():
        shown = ", ".join(f"{k} {_fmt(v) if isinstance(v, float) else v}"
                          for k, v in figures.items() if not isinstance(v, dict | list | tuple))
        lines += ["", f"Attack {name}: {shown}"]
        lines += image(f"{name}: original | disguised | reconstructed", figures.get("grid"))
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items()), ""]
    return "\n".join(lines)
