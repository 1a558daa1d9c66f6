"""The Dynamic Layer Tying Q-learning agent (skipxl.engine.dlt_agent)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from skipxl.engine.dlt_agent import (
    AgentConfig,
    QAgent,
    action_slice,
    epsilon_at,
    legal_actions,
    n_actions,
    reward_from_loss,
    td_target,
)
from skipxl.errors import SkipxlError


def test_action_slices_partition_the_outputs_layer_by_layer() -> None:
    n = 6
    covered: list[int] = []
    for layer in range(n):
        sl = action_slice(layer)
        assert sl.stop - sl.start == layer + 1 == len(legal_actions(layer))
        covered.extend(range(sl.start, sl.stop))
    assert covered == list(range(n_actions(n))) == list(range(21))
    q = torch.arange(float(n_actions(4)))  # [10]
    assert q[action_slice(1)].tolist() == [1.0, 2.0]
    assert q[action_slice(3)].tolist() == [6.0, 7.0, 8.0, 9.0]


def _manual_adamw_step(
    p: torch.Tensor, g: torch.Tensor, lr: float, wd: float, eps: float = 1e-8
) -> torch.Tensor:
    """First AdamW step by hand: decay, then m_hat = g and v_hat = g^2 after bias correction."""
    return p * (1 - lr * wd) - lr * g / (g.abs() + eps)


def test_q_update_equals_a_hand_computed_td_step_on_three_layers() -> None:
    cfg = AgentConfig(hidden=5, seed=3)
    agent = QAgent(3, cfg)
    w1, b1, w2, b2 = (t.detach().clone() for t in agent.net.parameters())
    s, s_next = (0, 0, 0), (0, 1, 0)  # layer 1 untied
    layer, action, reward = 1, 1, -4.25

    def q(state: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = torch.tensor([float(v) for v in state])
        pre = w1 @ x + b1  # [5]
        h = pre.clamp(min=0)  # [5]
        return x, pre, w2 @ h + b2  # [6]

    _, _, q_next = q(s_next)
    target = reward + 0.99 * q_next[1:3].max()  # layer 1's slice is outputs 1..2
    x, pre, q_now = q(s)
    k = 1 + action  # output index of (layer 1, action 1)
    err = q_now[k] - target
    loss = err**2
    dq = torch.zeros(6)
    dq[k] = 2 * err
    h = pre.clamp(min=0)
    g_w2, g_b2 = torch.outer(dq, h), dq
    dpre = (w2.T @ dq) * (pre > 0).float()
    g_w1, g_b1 = torch.outer(dpre, x), dpre

    got = agent.update(s, layer, action, reward, s_next)
    assert got == pytest.approx(float(loss), rel=1e-6)
    expected = [
        _manual_adamw_step(p, g, cfg.lr, cfg.weight_decay)
        for p, g in ((w1, g_w1), (b1, g_b1), (w2, g_w2), (b2, g_b2))
    ]
    for name, p, e in zip(("w1", "b1", "w2", "b2"), agent.net.parameters(), expected, strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=1e-5, atol=1e-7, msg=name)


def test_td_target_takes_the_max_over_the_layer_slice_only() -> None:
    q = torch.tensor([100.0, 1.0, 2.0, 50.0, -1.0, 0.0])  # N = 3; layer 2 = outputs 3..5
    assert float(td_target(-1.0, q, 1, 0.5)) == pytest.approx(-1.0 + 0.5 * 2.0)
    assert float(td_target(-1.0, q, 2, 0.5)) == pytest.approx(-1.0 + 0.5 * 50.0)


@pytest.mark.parametrize("floor", [0.1, 0.01])
def test_epsilon_schedule_decays_per_episode_to_its_floor(floor: float) -> None:
    cfg = AgentConfig(epsilon_floor=floor)
    agent = QAgent(4, cfg)
    seen = []
    for _ in range(120):
        seen.append(agent.epsilon)
        agent.end_episode()
    assert seen[0] == 1.0 and seen[1] == pytest.approx(0.95) and seen[10] == pytest.approx(0.95**10)
    assert seen[-1] == floor and min(seen) == floor
    first_floor = math.ceil(math.log(floor) / math.log(0.95))
    assert seen[first_floor - 1] > floor and seen[first_floor] == floor
    assert all(epsilon_at(e, cfg) == pytest.approx(v) for e, v in enumerate(seen))


@pytest.mark.parametrize("epsilon", [1.0, 0.0])
def test_every_action_is_legal_and_exploration_reaches_all_of_them(epsilon: float) -> None:
    agent = QAgent(5, AgentConfig(seed=1, epsilon_start=epsilon, epsilon_floor=0.0))
    state = (0, 0, 1, 0, 3)
    for layer in range(1, 5):
        actions = [agent.act(layer, state)[0] for _ in range(300)]
        assert set(actions) <= set(legal_actions(layer))
        if epsilon == 1.0:
            assert set(actions) == set(legal_actions(layer))  # uniform over i + 1 choices
        else:
            assert len(set(actions)) == 1  # greedy: the argmax of the slice
            assert actions[0] == int(agent.q_values(state)[action_slice(layer)].argmax())
    with pytest.raises(SkipxlError):
        agent.act(0, state)  # layer 0 has no choice
    with pytest.raises(SkipxlError, match="not legal"):
        agent.update(state, 2, 3, 0.0, state)


def test_agent_leaves_the_global_rng_alone_and_resumes_bitwise() -> None:
    before = torch.get_rng_state()
    a = QAgent(4, AgentConfig(seed=7))
    state = (0, 0, 0, 0)
    for layer in (1, 2, 3):
        action, _ = a.act(layer, state)
        nxt = (*state[:layer], action, *state[layer + 1 :])
        a.update(state, layer, action, -3.0, nxt)
        state = nxt
    a.end_episode()
    assert torch.equal(torch.get_rng_state(), before)
    b = QAgent(4, AgentConfig(seed=99))
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    trace = []
    for agent in (a, b):
        run = []
        s = state
        for layer in (1, 2, 3, 1, 2):
            action, explored = agent.act(layer, s)
            nxt = (*s[:layer], action, *s[layer + 1 :])
            run.append((action, explored, agent.update(s, layer, action, -2.5, nxt), agent.epsilon))
            s = nxt
        trace.append(run)
    assert trace[0] == trace[1]


def test_reward_modes_and_the_released_constant_reward() -> None:
    released = AgentConfig(reward="neg_ppl")
    assert reward_from_loss(math.log(5.0), released) == pytest.approx(-5.0)
    assert reward_from_loss(math.log(300.0), released) == -10.0  # ppl > 10: constant
    assert reward_from_loss(math.log(3000.0), released) == -10.0
    clean = AgentConfig()
    assert reward_from_loss(math.log(300.0), clean) == pytest.approx(-math.log(300.0))
    assert reward_from_loss(math.log(300.0), clean) != reward_from_loss(math.log(3000.0), clean)
    assert reward_from_loss(50.0, clean) == -10.0
    with pytest.raises(SkipxlError, match="reward"):
        AgentConfig(reward="ppl")
