"""ST-Adam (VisualMixer §IV-E): Adam's moment estimates without the bias corrections.

    g_t = ∇θ + λ·θ                       (weight decay, L2 as in torch Adam)
    m_t = β1·m_{t−1} + (1 − β1)·g_t
    v_t = β2·v_{t−1} + (1 − β2)·g_t²
    u_t = μ·u_{t−1} + m_t / (√v_t + ε)  (the added momentum term; μ = 0 disables it)
    θ_t = θ_{t−1} − η·u_t

Adam divides m_t by (1 − β1^t) and v_t by (1 − β2^t) before the step; ST-Adam keeps the raw
estimates, so its step length does not rescale with t: the paper's remedy for the gradient
oscillation that shuffled images cause. The first step is therefore (1 − β1)/√(1 − β2) ≈ 3.16
times Adam's with the default betas, and the two converge as t grows.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class STAdam(torch.optim.Optimizer):
    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if eps <= 0 or weight_decay < 0 or not 0 <= momentum < 1:
            raise ValueError("need eps > 0, weight_decay >= 0 and momentum in [0, 1)")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["weight_decay"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                    state["u"] = torch.zeros_like(p)
                m, v, u = state["m"], state["v"], state["u"]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                update = m / (v.sqrt() + group["eps"])
                if group["momentum"]:
                    update = u.mul_(group["momentum"]).add_(update)
                p.add_(update, alpha=-group["lr"])
        return loss
