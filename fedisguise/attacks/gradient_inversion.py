"""Gradient inversion: recover a client's training images from the update it uploaded.

- DLG (Zhu et al., NeurIPS 2019): optimise dummy images so that their gradient matches the
  observed one in squared L2 distance, with L-BFGS.
- Inverting Gradients (Geiping et al., NeurIPS 2020): match in cosine similarity instead,
  plus total variation; Adam on the signed gradient, step decay, images boxed to [0, 1].
- iDLG (Zhao et al., 2020): labels read off the last layer's gradient before any optimisation.
  For CE loss its bias gradient is mean(softmax − onehot): with ReLU features, only the true
  labels' entries are negative. Batches: one label per negative entry, more where the
  negative mass says so.

What the server holds is an update, not a gradient. A FedSGD step (one SGD step) gives the
gradient exactly: (θ_global − θ_client) / lr. A multi-step FedAvg delta is handled either as
an effective gradient (the delta divided by lr·steps, matched as above) or by unrolling the
client's `steps` SGD steps on the dummy batch and matching the simulated delta (Geiping §5).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from fedisguise.attacks.base import (
    Attack,
    Evidence,
    Figure,
    GroundTruth,
    Knowledge,
    Reconstruction,
    Runtime,
    register,
)
from fedisguise.attacks.memo import once
from fedisguise.attacks.scoring import Scorer, matching_order
from fedisguise.attacks.update_algebra import (
    recover_labels,
    total_variation,
    trainable,
    update_delta,
)
from fedisguise.models import build_model

METHODS = ("ig", "dlg")
DELTA_MODES = ("effective-gradient", "unrolled")
INITS = ("uniform", "zeros", "gray")  # where the dummy images start
DEFAULT_STEP_SIZE = {"ig": 0.1, "dlg": 1.0}  # Adam's lr; L-BFGS's first trial step
LBFGS_ITERATIONS_PER_STEP = 20  # torch's default max_iter; DLG's iterations round up to it


UNROLLED_OPTIMIZERS = ("sgd", "adam", "st-adam")  # the client optimizers unrolled below
ADAM_BETA2, ADAM_EPS = 0.999, 1e-8  # fedisguise.training's Adam and ST-Adam (torch defaults)
# The attack's soft sign (see _simulated_delta), measured with bench/adam_inversion.py on
# one-image ST-Adam updates: 0.003 / 0.01 / 0.03 / 0.1 / 0.3 gave 10.5 / 11.1 / 11.6 / 10.7 /
# 9.6 dB, the effective gradient 4.5 dB.
DEFAULT_SOFTNESS = 0.03
# An Adam-family update holds signs only, so the image prior weighs more: TV 0.001 / 0.01 /
# 0.05 / 0.15 / 0.5 gave 9.4 / 11.6 / 13.3 / 13.9 / 12.3 dB on the same updates.
DEFAULT_ADAM_TV_WEIGHT = 0.15


def _simulated_delta(model: nn.Module, params: dict[str, torch.Tensor], images: torch.Tensor,
                     labels: torch.Tensor, lr: float, steps: int | Sequence[int],
                     momentum: float = 0.0, create_graph: bool = True, optimizer: str = "sgd",
                     weight_decay: float = 0.0, softness: float = 0.0
                     ) -> dict[str, torch.Tensor]:
    """θ0 − θ_end after the client's local steps on the dummy batch (Geiping et al. §5).

    `steps` is a count (equal consecutive slices) or the size of every step, as the server
    knows them from num_examples, batch size and local steps (`ServerView.step_sizes`); the
    dummies are taken in order and reused from the start once an epoch is used up (the
    client's reshuffle between epochs is unknown to the server).

    `optimizer` is the client's, with fedisguise.training's settings and a fresh state each
    round: "sgd" (`momentum` its heavy-ball term), "adam" (β1 = `momentum` or 0.9) or
    "st-adam" (fedisguise.optim: Adam without bias corrections, `momentum` its added term);
    `weight_decay` is L2 added to the gradient, as torch does. An Adam step is
    m/(√v + ε): its first one is ±lr per weight, the gradient's sign, whose derivative is
    zero almost everywhere, so an inversion through it learns nothing. `softness` > 0 is the
    attack's remedy, a soft sign: ε becomes softness·RMS(√v) per tensor, so entries well
    above that RMS keep their sign and small ones stay linear and differentiable. 0 replays
    the client exactly.
    """
    if optimizer not in UNROLLED_OPTIMIZERS:
        raise ValueError(f"cannot unroll optimizer {optimizer!r}; valid: {UNROLLED_OPTIMIZERS}")
    if softness < 0:
        raise ValueError(f"softness must be >= 0, got {softness}")
    if isinstance(steps, int):
        slices = [len(c) for c in images.chunk(steps)]
    else:
        slices = list(steps)
    n, start = len(images), 0
    beta1 = (momentum or 0.9) if optimizer == "adam" else 0.9
    current, first, second, velocity = dict(params), None, None, None
    for t, size in enumerate(slices, start=1):
        idx = (torch.arange(start, start + size, device=images.device) % n)
        start = (start + size) % n
        loss = F.cross_entropy(functional_call(model, current, (images[idx],)), labels[idx])
        grads = list(torch.autograd.grad(loss, list(current.values()),
                                         create_graph=create_graph))
        if weight_decay:
            grads = [g + weight_decay * p for g, p in zip(grads, current.values(), strict=True)]
        if optimizer != "sgd":
            first = [(1 - beta1) * g for g in grads] if first is None else [
                beta1 * m + (1 - beta1) * g for m, g in zip(first, grads, strict=True)]
            second = [(1 - ADAM_BETA2) * g * g for g in grads] if second is None else [
                ADAM_BETA2 * v + (1 - ADAM_BETA2) * g * g
                for v, g in zip(second, grads, strict=True)]
            m_hat, v_hat = first, second
            if optimizer == "adam":  # torch's bias corrections; ST-Adam keeps the raw moments
                m_hat = [m / (1 - beta1 ** t) for m in first]
                v_hat = [v / (1 - ADAM_BETA2 ** t) for v in second]
            grads = []
            for m, v in zip(m_hat, v_hat, strict=True):
                root = (v + 1e-30).sqrt() if create_graph else v.sqrt()  # √0's gradient is inf
                eps = ADAM_EPS + softness * (v.mean() + 1e-30).sqrt() if softness else ADAM_EPS
                grads.append(m / (root + eps))
        if momentum and optimizer != "adam":  # SGD: heavy ball; ST-Adam: its added term
            velocity = grads if velocity is None else [
                momentum * u + g for u, g in zip(velocity, grads, strict=True)]
            grads = velocity
        current = {n_: p - lr * g for (n_, p), g in zip(current.items(), grads, strict=True)}
    return {n_: params[n_] - current[n_] for n_ in params}


def invert(model: nn.Module, delta: Mapping[str, torch.Tensor], *, batch_size: int,
           image_shape: tuple[int, int, int], lr: float, steps: int | Sequence[int] = 1,
           momentum: float = 0.0, optimizer: str = "sgd", weight_decay: float = 0.0,
           softness: float = DEFAULT_SOFTNESS, labels: torch.Tensor | None = None,
           method: str = "ig",
           delta_mode: str = "effective-gradient", iterations: int = 2000,
           step_size: float | None = None, tv_weight: float = 1e-4, restarts: int = 1,
           signed: bool = True, init: str = "uniform", seed: int = 0,
           box: tuple[float, float] = (0.0, 1.0), progress: bool = True) -> dict:
    """Reconstruct `batch_size` images from an update `delta` = θ_global − θ_client.

    `model` holds θ_global. Returns images (B×C×H×W in [0, 1]), labels (recovered unless
    given), the final matching loss, iterations run and seconds taken. `step_size` is Adam's
    learning rate for IG (default 0.1) and L-BFGS's for DLG (default 1, the step the
    strong-Wolfe line search starts from). `box` bounds the images' values: [0, 1] for
    plain images; a disguise's output range where the attacker knows its algorithm.
    `optimizer`, `momentum` and `weight_decay` are the client's, used where delta_mode is
    "unrolled" (_simulated_delta; the effective gradient reads every update as SGD's), and
    `softness` is the soft sign an Adam-family unrolling matches with. The same model,
    update and settings are inverted once per process (fedisguise.attacks.memo: a chain at
    Level 1 and Level 2 inverts one update alike); a reused answer says `reused`.
    """
    # every argument but the model, the update and the progress bar
    settings = {k: v for k, v in locals().items() if k not in ("model", "delta", "progress")}
    device = str(next(model.parameters()).device)
    out, reused = once("gradient inversion", (model, dict(delta), settings, device),
                       lambda: _invert(model, delta, **settings, progress=progress))
    return {**out, "reused": True} if reused else out


def _invert(model: nn.Module, delta: Mapping[str, torch.Tensor], *, batch_size: int,
            image_shape: tuple[int, int, int], lr: float, steps: int | Sequence[int],
            momentum: float, optimizer: str, weight_decay: float, softness: float,
            labels: torch.Tensor | None, method: str, delta_mode: str, iterations: int,
            step_size: float | None, tv_weight: float, restarts: int, signed: bool,
            init: str, seed: int, box: tuple[float, float], progress: bool) -> dict:
    if method not in METHODS:
        raise ValueError(f"unknown gradient inversion method {method!r}; valid: {METHODS}")
    if delta_mode not in DELTA_MODES:
        raise ValueError(f"unknown delta_mode {delta_mode!r}; valid: {DELTA_MODES}")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; valid: {INITS}")
    step_count = steps if isinstance(steps, int) else len(steps)
    if batch_size < 1 or step_count < 1 or iterations < 1 or restarts < 1:
        raise ValueError("batch_size, steps, iterations and restarts must be >= 1")
    if lr <= 0:
        raise ValueError(f"the client's learning rate must be > 0, got {lr}")
    if step_size is None:
        step_size = DEFAULT_STEP_SIZE[method]
    if step_size <= 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    low, high = box
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"box must be two finite numbers, low < high, got {box}")
    started = time.perf_counter()
    device = next(model.parameters()).device
    model.eval()  # no dropout; BatchNorm would need the client's batch statistics
    params = {n: p.detach() for n, p in trainable(model).items()}
    target = {n: delta[n].to(device).float() for n in params}
    gradient = {n: t / (lr * step_count) for n, t in target.items()}  # effective gradient
    if labels is None:
        labels = recover_labels(model, gradient, batch_size)
    labels = labels.to(device)
    if delta_mode == "effective-gradient":
        target = gradient
    names = list(params)
    target_flat = torch.cat([target[n].flatten() for n in names])

    def observed(x: torch.Tensor) -> dict[str, torch.Tensor]:
        if delta_mode == "unrolled":
            return _simulated_delta(model, params, x, labels, lr, steps, momentum,
                                    optimizer=optimizer, weight_decay=weight_decay,
                                    softness=softness)
        loss = F.cross_entropy(functional_call(model, params, (x,)), labels)
        return dict(zip(names, torch.autograd.grad(loss, [params[n] for n in names],
                                                   create_graph=True), strict=True))

    def objective(x: torch.Tensor) -> torch.Tensor:
        g = observed(x)
        if method == "dlg":
            return sum((g[n] - target[n]).pow(2).sum() for n in names)
        flat = torch.cat([g[n].flatten() for n in names])
        distance = 1 - F.cosine_similarity(flat, target_flat, dim=0)
        return distance + tv_weight * total_variation(x)

    for name in names:
        params[name].requires_grad_(True)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    best_x, best_loss = None, math.inf
    per_step = LBFGS_ITERATIONS_PER_STEP if method == "dlg" else 1
    steps_per_restart = math.ceil(iterations / per_step)
    bar = tqdm(total=steps_per_restart * per_step * restarts,
               desc=f"gradient inversion ({method})", disable=not progress, leave=False)
    for _ in range(restarts):
        x = low + (high - low) * torch.rand((batch_size, *image_shape), generator=gen)
        if init == "zeros":
            x.fill_(max(low, 0.0))
        elif init == "gray":
            x.fill_((low + high) / 2)
        x = x.to(device).requires_grad_(True)
        if method == "dlg":
            # L-BFGS iterations run in chunks of `per_step` per step() call. Not one per call:
            # max_eval defaults to int(1.25 · max_iter), so max_iter=1 leaves the strong-Wolfe
            # line search no evaluations to bracket or zoom with, and it stalls near 40 dB;
            # each call also spends one extra evaluation before it iterates.
            opt = torch.optim.LBFGS([x], lr=step_size, max_iter=per_step,
                                    max_eval=per_step * 5 // 4, history_size=100,
                                    line_search_fn="strong_wolfe")
            scheduler = None
        else:
            opt = torch.optim.Adam([x], lr=step_size)
            milestones = [int(iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
            scheduler = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1)

        def closure(x: torch.Tensor = x, opt: torch.optim.Optimizer = opt) -> torch.Tensor:
            opt.zero_grad()
            loss = objective(x)
            loss.backward()
            if method == "ig" and signed:
                x.grad.sign_()
            return loss

        for _ in range(steps_per_restart):
            opt.step(closure)
            if scheduler is not None:
                scheduler.step()
            if method == "ig":
                with torch.no_grad():
                    x.clamp_(low, high)
            bar.update(per_step)
        final = objective(x).item()
        if final < best_loss or best_x is None:
            best_x, best_loss = x.detach().clone(), final
    bar.close()
    for name in names:
        params[name].requires_grad_(False)
    # DLG's image stays free while L-BFGS runs: a clamp moves x behind L-BFGS's back, so its
    # curvature pairs and line search no longer describe the objective (clamped after every
    # iteration: 0 of 10 Fashion-MNIST test images near-exact on lenet-dlg; free: 10 of 10).
    # Only the answer is boxed, so that every method returns valid images.
    return {"images": best_x.clamp(low, high).cpu(), "labels": labels.cpu(), "loss": best_loss,
            "iterations": steps_per_restart * per_step * restarts,
            "seconds": time.perf_counter() - started}


def match_reconstructions(reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """The reconstructions in the originals' order (for tests and benches that hold both)."""
    return reconstructed[matching_order(reconstructed, original)]


def label_accuracy(recovered: torch.Tensor, true: torch.Tensor, num_classes: int) -> float:
    """Fraction of the batch's labels recovered, as multisets (order is unknown)."""
    a = torch.bincount(recovered.long(), minlength=num_classes)
    b = torch.bincount(true.long(), minlength=num_classes)
    return float(torch.minimum(a, b).sum()) / len(true)


def output_range(knowledge: Knowledge, seed: int, sample: int = 256) -> tuple[float, float]:
    """Where the images a client trains on can lie: [0, 1] unless the attacker knows the
    disguise (Level 1+), which tells it the range of the algorithm's outputs on its own
    public images under its own key (DisguisedNets' X·R + Δ and InstaHide leave [0, 1])."""
    if knowledge.level < 1 or knowledge.algorithm is None:
        return 0.0, 1.0
    images = knowledge.public.images[:sample]
    out = knowledge.own_disguise(seed).apply(images, knowledge.public.labels[:sample])[0]
    low, high = (float(v) for v in torch.aminmax(out))
    return min(low, 0.0), max(high, 1.0)


@register
class GradientInversion(Attack):
    """Inverts one captured update. The number of images, their shape and the client's
    steps come from the server's view: num_examples, batch size, local steps and epochs,
    learning rate, optimizer, momentum and weight decay are what the server itself
    configured. `delta_mode = "auto"` unrolls the client's steps when the update holds more
    than one SGD step or any Adam / ST-Adam step (whose update is a sign, no gradient), and
    matches the effective gradient otherwise (identical for one SGD step). `tv_weight`
    weighs the image prior against an SGD update, `adam_tv_weight` against an Adam / ST-Adam
    one; figures record the one used."""

    name = "gradient_inversion"
    chain_stage = "first"  # the default chain's estimate of the images behind an update
    evidence = "update"
    figures = (
        Figure("psnr_vs_original", "GI PSNR vs original (dB)"),
        Figure("ssim_vs_original", "GI SSIM vs original"),
        Figure("recognisability", "GI recognisability"),
        Figure("psnr_vs_disguised", "GI PSNR vs disguised (dB)"),
        Figure("label_accuracy", "GI label recovery"),
    )

    def __init__(self, method: str = "ig", delta_mode: str = "auto", iterations: int = 1000,
                 step_size: float | None = None, tv_weight: float = 0.01, restarts: int = 1,
                 max_batch: int = 256, init: str = "uniform",
                 softness: float = DEFAULT_SOFTNESS,
                 adam_tv_weight: float = DEFAULT_ADAM_TV_WEIGHT) -> None:
        if method not in METHODS or delta_mode not in (*DELTA_MODES, "auto"):
            raise ValueError(f"method must be one of {METHODS} and delta_mode one of "
                             f"{(*DELTA_MODES, 'auto')}, got {method!r}, {delta_mode!r}")
        if min(iterations, restarts, max_batch) < 1:
            raise ValueError("iterations, restarts and max_batch must be >= 1")
        if step_size is not None and (isinstance(step_size, bool)
                                      or not isinstance(step_size, int | float)
                                      or step_size <= 0):
            raise ValueError(f"step_size must be a number > 0 (or None: 0.1 for ig, 1.0 for "
                             f"dlg), got {step_size!r}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; valid: {INITS}")
        for name, value in (("softness", softness), ("tv_weight", tv_weight),
                            ("adam_tv_weight", adam_tv_weight)):
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        self.softness, self.adam_tv_weight = float(softness), float(adam_tv_weight)
        self.method, self.delta_mode, self.iterations = method, delta_mode, iterations
        self.step_size, self.tv_weight, self.restarts = step_size, tv_weight, restarts
        self.max_batch, self.init = max_batch, init

    def reconstruct(self, evidence: Evidence, knowledge: Knowledge, runtime: Runtime
                    ) -> Reconstruction:
        view = evidence.view
        count, sizes = view.images_behind_update(), view.step_sizes()
        settings = {"method": self.method, "round": view.server_round,
                    "client": view.partition_id, "batch_size": count,
                    "local_steps": len(sizes)}
        if count > self.max_batch:
            return Reconstruction(figures={
                **settings, "status": "not applicable",
                "reason": f"the update covers {count} images (> max_batch {self.max_batch})"})
        unrolled = (self.delta_mode == "unrolled" or (
            self.delta_mode == "auto" and (len(sizes) > 1 or view.optimizer != "sgd")))
        c, h, w = view.image_shape
        model = build_model(view.model_name, c, view.num_classes, (h, w)).to(runtime.device)
        model.load_state_dict(view.global_state)
        delta = update_delta(model, view.global_state, view.client_state)
        box = output_range(knowledge, runtime.seed)
        tv_weight = self.tv_weight if view.optimizer == "sgd" else self.adam_tv_weight
        out = invert(model, delta, batch_size=count, image_shape=view.image_shape, lr=view.lr,
                     steps=sizes, momentum=view.momentum if unrolled else 0.0,
                     optimizer=view.optimizer, weight_decay=view.weight_decay,
                     softness=self.softness, method=self.method,
                     delta_mode="unrolled" if unrolled else "effective-gradient",
                     iterations=self.iterations, step_size=self.step_size,
                     tv_weight=tv_weight, restarts=self.restarts, init=self.init,
                     seed=runtime.seed, box=box, progress=runtime.progress)
        return Reconstruction(images=out["images"], labels=out["labels"], space="disguised",
                              figures={**settings, "status": "ok", "box": list(box),
                                       "delta_mode": "unrolled" if unrolled
                                       else "effective-gradient",
                                       "optimizer": view.optimizer, "tv_weight": tv_weight,
                                       "iterations": out["iterations"],
                                       "seconds": out["seconds"], "final_loss": out["loss"],
                                       "reused": bool(out.get("reused")),
                                       "iterations_per_s": out["iterations"] / out["seconds"]})

    def score(self, reconstruction: Reconstruction, truth: GroundTruth, scorer: Scorer
              ) -> dict:
        figures = dict(reconstruction.figures)
        if reconstruction.images is None:
            return figures
        scored = scorer.images(reconstruction.images, truth.batch_plain, truth.batch_labels,
                               disguised=truth.batch_disguised)
        rec = scored.pop("_matched")
        figures.update(scored)
        figures["label_accuracy"] = label_accuracy(reconstruction.labels, truth.batch_labels,
                                                   scorer.public.num_classes)
        figures["_grid"] = (truth.batch_plain[:8], truth.batch_disguised[:8], rec[:8])
        return figures
