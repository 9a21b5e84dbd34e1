"""Carlini et al.'s recovery of InstaHide's private images from its encodings, steps 2 to 5
(fedisguise.attacks.instahide_attack says the whole attack): a similarity network on pairs of
encodings, communities of its nearest-neighbour graph, per-pixel phase retrieval for the images
and their mixing, and the sign each pixel keeps, fixed by the attacker's prior."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


def challenge_members(n: int, k: int, t: int, rng: np.random.Generator) -> torch.Tensor:
    """An M×k membership (M = n·t/k) in which each of n private images is in exactly t
    encodings and no encoding holds an image twice: the InstaHide Challenge's design
    (T = 50 encodings per private image). t stacked permutations are cut into rows of k;
    a row with a repeated image swaps a slot with a random other row until none is left."""
    if n < k or t < 1 or (n * t) % k:
        raise ValueError(f"n·t must be a multiple of k with n >= k, got n={n}, t={t}, k={k}")
    rows = np.concatenate([rng.permutation(n) for _ in range(t)]).reshape(-1, k)
    for _ in range(1000):
        ordered = np.sort(rows, 1)
        bad = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(1))
        if not len(bad):
            return torch.from_numpy(rows)
        other = rng.integers(0, len(rows), len(bad))
        a, b = rng.integers(0, k, len(bad)), rng.integers(0, k, len(bad))
        rows[bad, a], rows[other, b] = rows[other, b], rows[bad, a].copy()
    raise RuntimeError("could not draw a membership without repeated images")


# ---- 2. similarity ----------------------------------------------------------------------
class PairSimilarity(nn.Module):
    """Dense siamese similarity: an encoding's |x̃| -> a unit-norm feature map at half
    resolution; two encodings score the scaled cosine of their maps (a logit)."""

    def __init__(self, channels: int, width: int = 32, features: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, features, 3, padding=1))
        self.scale = nn.Parameter(torch.tensor(10.0))
        self.bias = nn.Parameter(torch.tensor(-5.0))

    def embed(self, absolute: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(absolute).flatten(1), dim=1)

    @torch.no_grad()
    def matrix(self, absolute: torch.Tensor, batch: int = 512) -> torch.Tensor:
        """M×M cosine similarities (diagonal included)."""
        self.eval()
        device = self.scale.device
        e = torch.cat([self.embed(absolute[i:i + batch].to(device)).cpu()
                       for i in range(0, len(absolute), batch)])
        return e @ e.T


def train_similarity(absolute: torch.Tensor, members: torch.Tensor, private: int, *,
                     steps: int, batch: int = 128, lr: float = 1e-3,
                     device: torch.device | str = "cpu", seed: int = 0, progress: bool = True
                     ) -> tuple[PairSimilarity, dict]:
    """Fit the similarity on the attacker's own encodings: half of every batch pairs two
    encodings of one private image (column 0 only in cross mode: public partners do not
    count), half pairs encodings at random (labelled by whether they share one)."""
    started = time.perf_counter()
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = PairSimilarity(absolute.shape[1]).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    incidence = torch.zeros(len(members), private, dtype=torch.bool)
    incidence[torch.arange(len(members))[:, None], members] = True
    # encodings per private image as a padded table, for drawing positive pairs in one go
    holders = [incidence[:, j].nonzero().flatten() for j in range(private)]
    usable = torch.tensor([len(h) >= 2 for h in holders])
    if not usable.any():
        raise ValueError("no private image is in two encodings: nothing to learn from")
    width = max(len(h) for h in holders)
    table = torch.stack([F.pad(h, (0, width - len(h)), value=-1) for h in holders])
    counts = torch.tensor([len(h) for h in holders])
    choices = usable.nonzero().flatten()
    half = batch // 2
    bar = tqdm(total=steps, desc="instahide similarity", disable=not progress, leave=False)
    loss = torch.tensor(0.0)
    net.train()
    for _ in range(steps):
        image = choices[torch.randint(len(choices), (half,), generator=gen)]
        first = (torch.rand(half, generator=gen) * counts[image]).long()
        second = (first + 1 + (torch.rand(half, generator=gen) * (counts[image] - 1)).long()
                  ) % counts[image]
        u = torch.cat([table[image, first], torch.randint(len(members), (half,), generator=gen)])
        v = torch.cat([table[image, second],
                       torch.randint(len(members), (half,), generator=gen)])
        label = (incidence[u] & incidence[v]).any(1).float().to(device)
        e = net.embed(absolute[torch.cat([u, v])].to(device))
        logit = net.scale * (e[:len(u)] * e[len(u):]).sum(1) + net.bias
        loss = F.binary_cross_entropy_with_logits(logit, label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.update(1)
    bar.close()
    return net.eval(), {"steps": steps, "final_loss": loss.item(),
                        "seconds": time.perf_counter() - started}


# ---- 3. clustering ----------------------------------------------------------------------
def communities(similarity: torch.Tensor, n: int, degree: int, iterations: int = 300,
                seed: int = 0) -> torch.Tensor:
    """M×n non-negative community strengths H with H·Hᵀ ≈ the kNN-sparsified similarity
    (symmetric NMF, Ding et al.'s multiplicative update with β = 1/2)."""
    m = len(similarity)
    degree = max(1, min(degree, m - 1))
    sim = similarity.clone().float()
    sim.fill_diagonal_(-math.inf)
    near = sim.topk(degree, 1).indices
    rows = torch.arange(m)[:, None].expand_as(near)
    graph = torch.zeros(m, m)
    graph[rows, near] = 1.0
    graph = ((graph + graph.T) > 0).float()
    graph.fill_diagonal_(1.0)
    weights = graph * similarity.float().clamp(min=0)
    gen = torch.Generator().manual_seed(seed)
    h = torch.rand(m, n, generator=gen) * (2 * (weights.mean() / n).sqrt())
    for _ in range(iterations):
        h = h * (0.5 + 0.5 * (weights @ h) / (h @ (h.T @ h) + 1e-9))
    return h


def candidates_from(similarity: torch.Tensor, n: int, slots: int, per_image: int,
                    extra: int, seed: int = 0) -> torch.Tensor:
    """Each encoding's candidate images: its `slots + extra` strongest communities of the
    similarity graph, whose expected degree is slots·(per_image − 1)."""
    h = communities(similarity, n, degree=max(1, slots * (per_image - 1)), seed=seed)
    return h.topk(min(n, slots + extra), 1).indices


# ---- 4. solving for the images ----------------------------------------------------------
class Mixing:
    """Encodings as index form: a_i = |Σ_c w_ic·s_{members[i, c]} + w_i,pub·s̄| (the last term
    in cross mode only), with the normal matrix LᵀL factorised once per assignment."""

    def __init__(self, members: torch.Tensor, weights: torch.Tensor, n: int,
                 public_weight: torch.Tensor | None, public_mean: torch.Tensor | None) -> None:
        self.members, self.weights, self.n = members, weights, n
        self.offset = None if public_weight is None else public_weight[:, None] * public_mean
        gram = torch.zeros(n, n, dtype=torch.float64)
        k = members.shape[1]
        for a, b in itertools.product(range(k), repeat=2):
            gram.index_put_((members[:, a], members[:, b]),
                            (weights[:, a] * weights[:, b]).double(), accumulate=True)
        gram += torch.eye(n, dtype=torch.float64) * 1e-6 * max(gram.diagonal().mean(), 1e-6)
        self.factor = torch.linalg.cholesky(gram)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """L·s (+ o) for s of shape n×P (pixel columns)."""
        out = torch.einsum("mk,mkp->mp", self.weights, s[self.members])
        return out if self.offset is None else out + self.offset

    def solve(self, target: torch.Tensor) -> torch.Tensor:
        """argmin_s ‖L·s − (target − o)‖² for target of shape M×P."""
        if self.offset is not None:
            target = target - self.offset
        rhs = torch.zeros(self.n, target.shape[1], dtype=torch.float64)
        for c in range(self.members.shape[1]):
            rhs.index_add_(0, self.members[:, c],
                           (self.weights[:, c:c + 1] * target).double())
        return torch.cholesky_solve(rhs, self.factor).float()


def retrieve_signs(mixing: Mixing, absolute: torch.Tensor, start: torch.Tensor | None,
                   restarts: int, iterations: int, gen: torch.Generator, beta: float = 0.9
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel: s ∈ [−1, 1]^n with |L·s + o| ≈ a. In the space of encodings z, with
    P_A(z) = sign(z)·a (the magnitudes) and P_B(z) = L·box(argmin_s ‖L·s + o − z‖) (what
    images can produce), relaxed averaged alternating reflections (RAAR, Luke 2005),
    z ← β/2·(R_B·R_A + I)·z + (1 − β)·P_A·z, escape the stagnation of plain alternating
    projections; a run of those then settles the result. From `restarts` starts (the given
    images, all −1, then uniform random), keeping per pixel the best fit.
    Returns (s: n×P, per-pixel mean squared residual)."""
    n, pixels = mixing.n, absolute.shape[1]

    def images_of(z: torch.Tensor) -> torch.Tensor:
        return mixing.solve(z).clamp_(-1, 1)

    def magnitudes(z: torch.Tensor) -> torch.Tensor:
        return torch.sign(z) * absolute

    best = residual = None
    for r in range(restarts):
        if r == 0 and start is not None:
            s = start.clone()
        elif r <= 1:
            s = -torch.ones(n, pixels)
        else:
            s = torch.rand(n, pixels, generator=gen) * 2 - 1
        z = mixing.forward(s)
        for _ in range(iterations):
            pa = magnitudes(z)
            reflected = 2 * pa - z
            z = beta / 2 * (2 * mixing.forward(images_of(reflected)) - reflected + z) + \
                (1 - beta) * pa
        s = images_of(magnitudes(z))
        for _ in range(iterations // 2):
            s = images_of(magnitudes(mixing.forward(s)))
        fit = (mixing.forward(s).abs() - absolute).pow(2).mean(0)
        if best is None:
            best, residual = s, fit
        else:
            better = fit < residual
            best = torch.where(better, s, best)
            residual = torch.minimum(fit, residual)
    return best, residual


def fit_weights(absolute: torch.Tensor, sources: torch.Tensor, iterations: int = 4
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """For B encodings a (B×P) and their candidate sources (B×c×P): non-negative weights
    summing to 1 with |wᵀ·sources| ≈ a (alternating signs and least squares), and the
    mean squared residual."""
    b, c, _ = sources.shape
    w = torch.full((b, c), 1.0 / c)
    gram = torch.einsum("bkp,bjp->bkj", sources, sources) + 1e-4 * torch.eye(c)
    for _ in range(iterations):
        target = torch.sign(torch.einsum("bk,bkp->bp", w, sources)) * absolute
        w = torch.linalg.solve(gram, torch.einsum("bkp,bp->bk", sources, target))
        w = w.clamp(min=0)
        w = w / w.sum(1, keepdim=True).clamp(min=1e-6)
    residual = (torch.einsum("bk,bkp->bp", w, sources).abs() - absolute).pow(2).mean(1)
    return w, residual


def assign(absolute: torch.Tensor, images: torch.Tensor, candidates: torch.Tensor, k: int,
           public_mean: torch.Tensor | None, chunk: int = 256
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Each encoding's best k of its candidate images (and the public mean in cross mode),
    with their weights: (members M×k, weights M×k, public weight M or None, residual M)."""
    m = len(absolute)
    subsets = torch.tensor(list(itertools.combinations(range(candidates.shape[1]), k)))
    members = torch.empty(m, k, dtype=torch.long)
    weights = torch.empty(m, k)
    public_weight = None if public_mean is None else torch.empty(m)
    residual = torch.empty(m)
    for start in range(0, m, chunk):
        rows = slice(start, min(start + chunk, m))
        a, cand = absolute[rows], candidates[rows]
        best = torch.full((len(a),), math.inf)
        for subset in subsets:
            chosen = cand[:, subset]
            sources = images[chosen]  # B×k×P
            if public_mean is not None:
                sources = torch.cat([sources, public_mean.expand(len(a), 1, -1)], 1)
            w, fit = fit_weights(a, sources)
            better = fit < best
            best = torch.where(better, fit, best)
            members[rows][better] = chosen[better]
            weights[rows][better] = w[better, :k]
            if public_weight is not None:
                public_weight[rows][better] = w[better, k]
        residual[rows] = best
    return members, weights, public_weight, residual


# ---- 5. the sign left -------------------------------------------------------------------
def orient(signed: torch.Tensor, prior: torch.Tensor, iterations: int = 50) -> torch.Tensor:
    """Flip each pixel (all images at once) to maximise Σ_p f_p·h_p + Σ_{p~q} f_p·f_q·J_pq,
    h_p: agreement of the images' mean with the prior's mean at p, J_pq: the images'
    correlation between neighbouring pixels (iterated conditional modes from the prior)."""
    n, c, h, w = signed.shape
    field = signed.sum(0) * prior  # C×H×W
    flip = torch.where(field >= 0, 1.0, -1.0)
    for _ in range(iterations):
        oriented = signed * flip
        pull = field.clone()
        for dim, shift in ((2, 1), (2, -1), (1, 1), (1, -1)):  # within a channel: x, y
            valid = torch.ones(c, h, w)
            edge = [slice(None)] * 3
            edge[dim] = 0 if shift == 1 else -1
            valid[tuple(edge)] = 0
            pull += (signed * torch.roll(oriented, shift, dim + 1)).sum(0) * valid
        if c > 1:  # colour channels at one position are correlated too
            pull += (signed * (oriented.sum(1, keepdim=True) - oriented)).sum(0)
        new = torch.where(pull >= 0, 1.0, -1.0)
        if torch.equal(new, flip):
            break
        flip = new
    return signed * flip


def recover(absolute: torch.Tensor, candidates: torch.Tensor, n: int, k: int,
            public_mean: torch.Tensor | None, prior: torch.Tensor, *, restarts: int,
            iterations: int, rounds: int, seed: int, progress: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Steps 4 and 5 from each encoding's candidate images (M×c, the first k, or 1 in cross
    mode where `public_mean` is the partners' mean, its starting members): the private
    images in [0, 1], their |2x − 1|, and the mean fit residual after each round."""
    m, shape = len(absolute), tuple(absolute.shape[1:])
    slots = k if public_mean is None else 1
    flat = absolute.flatten(1)
    members = candidates[:, :slots]
    weights = torch.full((m, slots), 1.0 / k)
    public_weight = None if public_mean is None else torch.full((m,), 1.0 - 1.0 / k)
    gen = torch.Generator().manual_seed(seed)
    s, history = None, []
    for round_ in tqdm(range(rounds + 1), desc="instahide solve", leave=False,
                       disable=not progress):
        if round_:
            members, weights, public_weight, _ = assign(flat, s, candidates, slots,
                                                        public_mean)
        mixing = Mixing(members, weights, n, public_weight, public_mean)
        s, fit = retrieve_signs(mixing, flat, s, restarts if round_ == 0 else
                                max(2, restarts // 2), iterations, gen)
        history.append(fit.mean().item())
    oriented = orient(s.view(n, *shape), prior)
    return ((oriented + 1) / 2).clamp(0, 1), s.view(n, *shape).abs(), history
