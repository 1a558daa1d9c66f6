"""The Q-learning agent of Dynamic Layer Tying (Hay & Wolf, ICLR 2024, arXiv 2401.12819).

Pure PyTorch, no engine: the agent maps the tying *state vector* ``s`` (length ``N``;
``s[i] = i`` trains layer ``i``, ``s[i] = j < i`` ties it to layer ``j``) to Q-values and
learns them by one-step TD.

* Q-network: ``N -> 128 -> N(N+1)/2`` (ReLU). Layer ``i``'s actions are the ``i + 1``
  outputs of its slice ``[i(i+1)/2, i(i+1)/2 + i + 1)``: action ``a < i`` = "tie to layer
  ``a``", action ``a = i`` = "train independently". The action *is* the new ``s[i]``.
* Choice: epsilon-greedy over layer ``i``'s slice. A random action is uniform over the
  ``i + 1`` legal ones (the released code draws ``randint(-1, i)`` with ``-1`` meaning
  independent: the same distribution). Every choice consumes exactly two draws of the
  agent's own generator, so its stream never depends on outcomes and the global RNG (dropout)
  is untouched.
* Update: target ``r + gamma * max_a Q(s', a)`` over layer ``i``'s slice of the next state
  (as released), prediction ``Q(s, a)``, MSE, AdamW (lr 1e-3, weight decay 0.01).
* epsilon: 1.0, times 0.95 per episode, floor 0.1 (paper; the code uses 0.01).
* Reward (:func:`reward_from_loss`): the released code uses ``-perplexity`` clipped to
  ``[-10, 10]`` (``"neg_ppl"``), which is the constant -10 whenever perplexity exceeds 10,
  i.e. for most of language-model training. The default ``"neg_loss"`` uses ``-log ppl``
  (the cross-entropy), the same ordering of outcomes, clipped likewise but informative up
  to perplexity e^10.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from skipxl.engine.dlt_config import REWARDS, AgentConfig
from skipxl.errors import require

__all__ = ["REWARDS", "AgentConfig", "QAgent", "action_slice", "epsilon_at", "legal_actions", "n_actions"]


def n_actions(n_layer: int) -> int:
    """Outputs of the Q-network: ``1 + 2 + ... + N = N(N+1)/2``."""
    return n_layer * (n_layer + 1) // 2


def action_slice(layer: int) -> slice:
    """Layer ``i``'s ``i + 1`` outputs: ``[i(i+1)/2, i(i+1)/2 + i + 1)``."""
    start = layer * (layer + 1) // 2
    return slice(start, start + layer + 1)


def legal_actions(layer: int) -> range:
    """``0..i-1`` (tie to that layer) and ``i`` (independent)."""
    return range(layer + 1)


def epsilon_at(episode: int, cfg: AgentConfig) -> float:
    """epsilon during episode ``episode`` (0-based): ``max(start * decay^episode, floor)``."""
    return max(cfg.epsilon_start * cfg.epsilon_decay**episode, cfg.epsilon_floor)


def reward_from_loss(loss: float, cfg: AgentConfig) -> float:
    """The reward of a mean cross-entropy ``loss`` (nats), clipped to ``[-clip, clip]``."""
    value = -loss if cfg.reward == "neg_loss" else -math.exp(min(loss, 700.0))
    return max(-cfg.reward_clip, min(cfg.reward_clip, value))


def td_target(reward: float, next_q: Tensor, layer: int, gamma: float) -> Tensor:
    """``r + gamma * max Q(s', .)`` over layer ``layer``'s slice; ``next_q`` is ``[N(N+1)/2]``."""
    return reward + gamma * next_q[action_slice(layer)].max()


def build_q_net(n_layer: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_layer, hidden), nn.ReLU(), nn.Linear(hidden, n_actions(n_layer)))


class QAgent:
    """Q-network, its optimizer, epsilon and a dedicated generator (all in :meth:`state_dict`).

    Built on the CPU from ``cfg.seed`` under a forked RNG, so every rank builds the same
    network and the global stream is not touched.
    """

    def __init__(self, n_layer: int, cfg: AgentConfig | None = None) -> None:
        require(n_layer >= 2, f"layer tying needs at least 2 layers, got {n_layer}")
        self.n_layer = n_layer
        self.cfg = cfg or AgentConfig()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)
            self.net = build_q_net(n_layer, self.cfg.hidden)
        self.optimizer = torch.optim.AdamW(
            self.net.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay
        )
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(self.cfg.seed + 1)
        self.epsilon = self.cfg.epsilon_start
        self.episode = 0

    @staticmethod
    def encode(sources: tuple[int, ...] | list[int]) -> Tensor:
        """The state vector as the network's ``[N]`` fp32 input (raw layer indices, as released)."""
        return torch.tensor([float(s) for s in sources], dtype=torch.float32)

    def q_values(self, sources: tuple[int, ...] | list[int]) -> Tensor:
        """``[N(N+1)/2]`` Q-values of a state (no gradient)."""
        with torch.no_grad():
            return self.net(self.encode(sources))

    def act(self, layer: int, sources: tuple[int, ...] | list[int]) -> tuple[int, bool]:
        """Choose layer ``layer``'s action epsilon-greedily; returns ``(action, explored)``."""
        require(1 <= layer < self.n_layer, f"layer {layer} has no tying choice (1..{self.n_layer - 1})")
        u = float(torch.rand((), generator=self.generator))
        random_action = int(torch.randint(0, layer + 1, (), generator=self.generator))
        if u < self.epsilon:
            return random_action, True
        return int(self.q_values(sources)[action_slice(layer)].argmax()), False

    def update(
        self,
        sources: tuple[int, ...] | list[int],
        layer: int,
        action: int,
        reward: float,
        next_sources: tuple[int, ...] | list[int],
    ) -> float:
        """One TD step on ``(s, a, r, s')`` for layer ``layer``; returns the Q-loss."""
        require(action in legal_actions(layer), f"action {action} is not legal for layer {layer}")
        with torch.no_grad():
            target = td_target(reward, self.net(self.encode(next_sources)), layer, self.cfg.gamma)
        predicted = self.net(self.encode(sources))[action_slice(layer)][action]
        loss = nn.functional.mse_loss(predicted, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def end_episode(self) -> None:
        """epsilon <- max(epsilon * decay, floor)."""
        self.episode += 1
        self.epsilon = max(self.epsilon * self.cfg.epsilon_decay, self.cfg.epsilon_floor)

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "epsilon": self.epsilon,
            "episode": self.episode,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.epsilon = float(state["epsilon"])
        self.episode = int(state["episode"])
