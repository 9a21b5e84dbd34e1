"""InstaHide (Huang, Song, Li, Arora, ICML 2020): k-image mixup plus a random sign flip.

For each private image x_1: pick k−1 partners (other private images for `inside` mixing, or
public images for `cross`), mixing weights λ (|N(0,1)| normalised, resampled until every
λ_j <= `upper`, as the authors' code does), then
    x̃ = σ ∘ Σ_j λ_j·(2·x_j − 1),     σ ∈ {−1, +1}^{C×H×W} drawn fresh per image,
so the output lies in [−1, 1]. Labels become Σ λ_j·onehot(y_j) over the private images
(renormalised to sum to 1 when public partners carry no label). Every one of these is a draw,
from the node's secret (`Disguise.reseed`): the key fixes nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedisguise.disguise.base import Disguise, check_images, check_labels, register
from fedisguise.disguise.keys import DisguiseKey

MODES = ("inside", "cross")


@register
class InstaHide(Disguise):
    name = "instahide"
    mixes_images = True  # each encoding mixes k images (and flips signs)
    draws = True  # weights, partners and masks: all of it; the key fixes nothing
    from_data = ("num_classes",)  # a run's dataset's, where the spec leaves it out

    def __init__(self, key: DisguiseKey, k: int = 4, mode: str = "inside", upper: float = 0.65,
                 num_classes: int = 10, public_dataset: str = "",
                 public: torch.Tensor | None = None) -> None:
        self.check_spec({"k": k, "mode": mode, "upper": upper, "num_classes": num_classes,
                         "public_dataset": public_dataset, "public": public})
        if mode == "cross" and public is None:
            from fedisguise.data.datasets import load_dataset

            public = load_dataset(public_dataset, "train").images
        if public is not None:
            check_images(public)
        self.k, self.mode, self.upper, self.num_classes = k, mode, upper, num_classes
        self.public = public
        self.key = key
        self.reseed("default")

    @classmethod
    def check_spec(cls, params: dict[str, Any]) -> None:
        """The parameters' ranges, without loading a public dataset (config time)."""
        k, mode = params.get("k", 4), params.get("mode", "inside")
        upper = params.get("upper", 0.65)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if mode not in MODES:
            raise ValueError(f"unknown InstaHide mode {mode!r}; valid choices: {list(MODES)}")
        if k > 1 and not 1.0 / k <= upper <= 1.0:
            raise ValueError(f"upper must be in [1/k, 1] = [{1 / k:.3f}, 1], got {upper}")
        if params.get("num_classes", 10) < 2:
            raise ValueError(f"num_classes must be >= 2, got {params['num_classes']}")
        public_dataset = params.get("public_dataset", "")
        if mode == "cross" and params.get("public") is None and not public_dataset:
            raise ValueError("cross-dataset InstaHide needs public_dataset (the name of a "
                             "dataset whose images it mixes in) or a `public` tensor")
        if public_dataset:
            from fedisguise.data.datasets import DATASETS

            if public_dataset not in DATASETS:
                raise ValueError(f"unknown public_dataset {public_dataset!r}; valid choices: "
                                 f"{sorted(DATASETS)}")

    def _draw_from(self, source: DisguiseKey, stream: str) -> None:
        self._rng = source.numpy_rng(f"instahide:{stream}")

    def apply_eval(self, images, labels=None):
        """Inference sees single images on the training scale, unmixed and unmasked, as in the
        authors' code (train_inside.py: the test loader only normalises)."""
        check_images(images)
        return images * 2 - 1, labels

    def _weights(self, n: int) -> torch.Tensor:
        lam = np.abs(self._rng.standard_normal((n, self.k)))
        lam /= lam.sum(1, keepdims=True)
        redo = np.flatnonzero(lam.max(1) > self.upper) if self.k > 1 else np.empty(0, int)
        while len(redo):  # redraw offending rows only (vectorised rejection)
            fresh = np.abs(self._rng.standard_normal((len(redo), self.k)))
            fresh /= fresh.sum(1, keepdims=True)
            lam[redo] = fresh
            redo = redo[fresh.max(1) > self.upper]
        return torch.from_numpy(lam).float()

    def _onehot(self, labels: torch.Tensor) -> torch.Tensor:
        if labels.ndim == 2:
            return labels.float()
        out_of_range = labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes)
        if labels.dtype.is_floating_point or out_of_range:
            raise ValueError(f"labels must be class indices in [0, {self.num_classes}) "
                             "or an N×classes probability matrix")
        return torch.nn.functional.one_hot(labels.long(), self.num_classes).float()

    def members(self, n: int) -> torch.Tensor:
        """n×k source indices, one row per encoding, as `_apply` draws them: column 0 is the
        private image itself (each private image leads exactly one encoding); the partners
        are a fresh permutation of the private images per column (`inside`, so each private
        image is in exactly k encodings) or public images drawn with replacement (`cross`)."""
        columns = [torch.arange(n)]
        for _ in range(1, self.k):  # k is small (2–6): a loop over partners, not pixels
            draw = self._rng.permutation(n) if self.mode == "inside" else \
                self._rng.integers(0, len(self.public), n)
            columns.append(torch.from_numpy(draw))
        return torch.stack(columns, 1)

    def encode(self, images: torch.Tensor, members: torch.Tensor,
               labels: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encodings of chosen mixtures: row i mixes `images[members[i, 0]]` with partners
        `members[i, 1:]` (private images for `inside`, public images for `cross`), with fresh
        weights and sign masks from the key. `_apply` is `encode(images, members(n))`; a
        bench draws other memberships (each private image in T encodings, as in the InstaHide
        Challenge) through the same mixing."""
        check_images(images)
        members = torch.as_tensor(members, dtype=torch.long)
        if members.ndim != 2 or members.shape[1] != self.k:
            raise ValueError(f"members must be an M×k = M×{self.k} index matrix, got shape "
                             f"{tuple(members.shape)}")
        pool = (len(images), len(images) if self.mode == "inside" else len(self.public))
        for column, size in ((members[:, :1], pool[0]), (members[:, 1:], pool[1])):
            if column.numel() and (column.min() < 0 or column.max() >= size):
                raise ValueError(f"member indices out of range [0, {size})")
        if labels is not None:
            check_labels(labels, len(images))
        lam = self._weights(len(members))
        return self._mix(images, members, lam, labels)

    def _apply(self, images, labels):
        n = len(images)
        lam = self._weights(n)  # drawn before the partners: the key's stream keeps its order
        return self._mix(images, self.members(n), lam, labels)

    def _apply_batches(self, images, labels, sizes):
        """Every batch mixed within itself (`inside`: partners from the same batch; the
        authors' train_inside.py mixes the whole training set, anew every epoch, which is
        client.redisguise = "round" with one local epoch), all batches in one pass: per
        partner column, a random key per image plus its batch's number sorts each batch's
        images into a uniform permutation of that batch, batch after batch."""
        n = len(images)
        lam = self._weights(n)
        batch = torch.repeat_interleave(torch.arange(len(sizes), dtype=torch.float64),
                                        torch.tensor(sizes))
        columns = [torch.arange(n)]
        for _ in range(1, self.k):
            if self.mode == "inside":
                keys = batch + torch.from_numpy(self._rng.random(n))  # in [b, b + 1)
                columns.append(torch.argsort(keys))
            else:
                columns.append(torch.from_numpy(self._rng.integers(0, len(self.public), n)))
        return self._mix(images, torch.stack(columns, 1), lam, labels)

    def _mix(self, images, members, lam, labels):
        device = images.device
        if self.public is not None and self.public.shape[1:] != images.shape[1:]:
            raise ValueError(f"public images are {tuple(self.public.shape[1:])}, private "
                             f"images {tuple(images.shape[1:])}")
        lam = lam.to(device, images.dtype)
        members = members.to(device)
        # Σ_j λ_j·(2·x_j − 1) = 2·Σ_j λ_j·x_j − 1 since the λ sum to 1: fused, pass by pass.
        mixed = images[members[:, 0]] * (2 * lam[:, 0, None, None, None])
        soft = None if labels is None else self._onehot(labels).to(device)
        label_mix = None if soft is None else lam[:, :1] * soft[members[:, 0]]
        for j in range(1, self.k):
            idx = members[:, j]
            if self.mode == "inside":
                partner = images[idx]
                if soft is not None:
                    label_mix = label_mix + lam[:, j:j + 1] * soft[idx]
            else:
                partner = self.public[idx.cpu()].to(device, images.dtype)
            mixed.addcmul_(partner, 2 * lam[:, j, None, None, None])
        mixed.sub_(1)
        # σ: a fair coin per value, the top bit of a random 32-bit word, XOR-ed onto the sign
        # bit of the float32 value (flipping the sign exactly, in one pass, no branches).
        count = mixed.numel()
        words = self._rng.bit_generator.random_raw(-(-count // 2)).view(np.int32)[:count]
        sign_bits = torch.from_numpy(words.reshape(tuple(mixed.shape))).to(device)
        out = mixed.float().contiguous()
        out.view(torch.int32).bitwise_xor_(sign_bits.bitwise_and_(-(1 << 31)))
        out = out.to(images.dtype)
        if label_mix is not None:
            label_mix = label_mix / label_mix.sum(1, keepdim=True)
        return out, label_mix
