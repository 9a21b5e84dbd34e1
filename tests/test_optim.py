import pytest
import torch

from fedisguise.optim import STAdam
from fedisguise.training import OPTIMIZERS


def _grads(t: int) -> torch.Tensor:
    return torch.tensor([0.5, -2.0, 1e-3]) * (1 + 0.3 * t) * (-1) ** t


def test_updates_follow_the_paper_rule_step_by_step():
    lr, b1, b2, eps, wd, mu = 0.01, 0.9, 0.999, 1e-8, 0.1, 0.5
    p = torch.nn.Parameter(torch.tensor([1.0, -1.0, 0.5]))
    opt = STAdam([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, momentum=mu)
    theta, m, v, u = p.detach().clone(), torch.zeros(3), torch.zeros(3), torch.zeros(3)
    for t in range(6):
        p.grad = _grads(t).clone()
        opt.step()
        g = _grads(t) + wd * theta
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        u = mu * u + m / (v.sqrt() + eps)  # no m/(1−β1^t), no v/(1−β2^t)
        theta = theta - lr * u
        assert torch.allclose(p.detach(), theta, atol=1e-7), f"step {t}"


def test_departs_from_adam_by_the_missing_bias_corrections():
    p_st = torch.nn.Parameter(torch.zeros(3))
    p_adam = torch.nn.Parameter(torch.zeros(3))
    st, adam = STAdam([p_st], lr=0.01), torch.optim.Adam([p_adam], lr=0.01)
    g = torch.tensor([0.5, -2.0, 3.0])
    p_st.grad, p_adam.grad = g.clone(), g.clone()
    st.step()
    adam.step()
    # First step: Adam moves lr·sign(g); ST-Adam (1 − β1)/√(1 − β2) times that.
    assert torch.allclose(p_adam.detach(), -0.01 * g.sign(), atol=1e-6)
    ratio = (p_st.detach() / p_adam.detach())
    assert torch.allclose(ratio, torch.full((3,), 0.1 / 0.001 ** 0.5), rtol=1e-4)
    for _ in range(3000):  # with a constant gradient both settle on the same step length
        p_st.grad, p_adam.grad = g.clone(), g.clone()
        before_st, before_adam = p_st.detach().clone(), p_adam.detach().clone()
        st.step()
        adam.step()
    step_st, step_adam = p_st.detach() - before_st, p_adam.detach() - before_adam
    assert torch.allclose(step_st, step_adam, rtol=0.05)


def test_selectable_by_name_and_validated():
    model = torch.nn.Linear(2, 2)
    assert isinstance(OPTIMIZERS["st-adam"](model.parameters(), 1e-3, 0.0, 0.0), STAdam)
    with pytest.raises(ValueError, match="lr must be > 0"):
        STAdam(model.parameters(), lr=0)
