"""The honest-but-curious server's recorder: an observer on the observed strategy that keeps
the targeted clients' updates, exactly as received, with the global model of that round.

Files go to results/<run>/captures/ (model weights only: no data, no key), so the attack
suite runs on what the server really received in both simulation and deployment.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fedisguise.messages import arrays_digest
from strategies import ReceivedUpdate


def capture_path(run_dir: Path, server_round: int, partition_id: int) -> Path:
    return run_dir / "captures" / f"round-{server_round}-client-{partition_id}.pt"


def capture_refused(run_dir: Path, server_round: int, partition_id: int) -> str:
    """Why the server refused the captured update ("" if it aggregated it)."""
    saved = torch.load(capture_path(run_dir, server_round, partition_id), weights_only=True)
    return str(saved.get("refused", ""))


def final_global_path(run_dir: Path) -> Path:
    return run_dir / "captures" / "final-global.pt"


class AttackCapture:
    """Saves the updates of the (round, partition) pairs in `wanted`."""

    def __init__(self, run_dir: Path, wanted: set[tuple[int, int]]) -> None:
        self.run_dir, self.wanted = run_dir, wanted
        self.saved: list[Path] = []

    def observe(self, update: ReceivedUpdate) -> None:
        if (update.server_round, update.partition_id) not in self.wanted:
            return
        if update.global_arrays is None:
            raise RuntimeError("the observed strategy did not record the round's global model")
        path = capture_path(self.run_dir, update.server_round, update.partition_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({
            "server_round": update.server_round,
            "partition_id": update.partition_id,
            "num_examples": update.num_examples,
            "sha256": arrays_digest(update.arrays),
            "global_state": update.global_arrays.to_torch_state_dict(),
            "client_state": update.arrays.to_torch_state_dict(),
            # why the server left it out of the aggregate (strategies.reply_check); "" if
            # it was aggregated: an attack on a refused reply says so
            "refused": update.refused or "",
        }, path)
        self.saved.append(path)

    def save_final(self, state: dict[str, torch.Tensor]) -> None:
        path = final_global_path(self.run_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
