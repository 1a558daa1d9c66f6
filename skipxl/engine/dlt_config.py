"""Settings of Dynamic Layer Tying (Hay & Wolf, ICLR 2024, arXiv 2401.12819): the episode
schedule and the Q-learning agent. Plain frozen dataclasses (no torch), so the run config can
hold them; the mechanics are in :mod:`skipxl.engine.dlt_agent` and :mod:`skipxl.engine.dlt`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from skipxl.errors import require

REWARDS = ("neg_loss", "neg_ppl")


@dataclass(frozen=True)
class AgentConfig:
    """Q-learning hyper-parameters (defaults: the paper / released code)."""

    hidden: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    gamma: float = 0.99
    epsilon_start: float = 1.0
    epsilon_decay: float = 0.95
    epsilon_floor: float = 0.1
    reward: str = "neg_loss"
    reward_clip: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.hidden >= 1, f"agent hidden must be >= 1, got {self.hidden}")
        require(self.lr > 0, f"agent lr must be > 0, got {self.lr}")
        require(0.0 <= self.gamma <= 1.0, f"agent gamma must be in [0, 1], got {self.gamma}")
        require(
            0.0 <= self.epsilon_floor <= self.epsilon_start <= 1.0,
            "need 0 <= epsilon_floor <= epsilon_start <= 1",
        )
        require(0.0 < self.epsilon_decay <= 1.0, f"epsilon_decay must be in (0, 1], got {self.epsilon_decay}")
        require(self.reward in REWARDS, f"reward {self.reward!r} is unknown; choose one of {REWARDS}")
        require(self.reward_clip > 0, f"reward_clip must be > 0, got {self.reward_clip}")


@dataclass(frozen=True)
class DLTConfig:
    """The DLT schedule (optimizer steps trained per action) and its agent.

    ``agent.seed`` seeds the Q-network and the agent's generator (the recipes use the run's
    ``--seed``), so every rank builds the same agent and takes the same actions.
    """

    steps_per_action: int = 4
    agent: AgentConfig = field(default_factory=AgentConfig)

    def __post_init__(self) -> None:
        if isinstance(self.agent, dict):
            object.__setattr__(self, "agent", AgentConfig(**self.agent))
        require(self.steps_per_action >= 1, f"dlt steps_per_action must be >= 1, got {self.steps_per_action}")
