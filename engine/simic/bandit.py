"""A linear contextual bandit (LinUCB, Li et al. 2010) over Tamiyo's decision points.

One ridge regression predicts every action's reward from phi(state, action) (training/learned.py): theta =
A^-1 b with A = ridge * I + sum(phi phi^T), b = sum(reward * phi). While it trains, an action is chosen at random
among the legal ones with a decaying probability (simic.epsilon), else by its predicted reward plus
`alpha * sqrt(phi^T A^-1 phi)`, optimism where it has seen little; deployed, by the prediction alone. The random
share is there because optimism alone measured badly: rewards are in points (tens), the bonus near 1, and the first
blueprint that paid well was never challenged (16 episodes never tried conv1d_block, the heuristic's best).
Its loss is the squared error of its predictions on each round's new decisions, before it learns from them: a
learning curve that does not need a held-out set.
"""

from __future__ import annotations

import torch


class LinUCB:
    def __init__(self, dim: int, ridge: float = 1.0) -> None:
        self.a = torch.eye(dim, dtype=torch.float64) * ridge
        self.b = torch.zeros(dim, dtype=torch.float64)
        self.samples = 0

    @property
    def theta(self) -> torch.Tensor:
        theta: torch.Tensor = torch.linalg.solve(self.a, self.b).to(torch.float32)
        return theta

    @property
    def a_inv(self) -> torch.Tensor:
        inv: torch.Tensor = torch.linalg.inv(self.a).to(torch.float32)
        return inv

    def loss(self, pairs: list[tuple[list[float], float]]) -> float | None:
        """Mean squared error of today's predictions on `pairs`; None without any."""
        if not pairs:
            return None
        x = torch.tensor([f for f, _ in pairs], dtype=torch.float32)
        y = torch.tensor([r for _, r in pairs], dtype=torch.float32)
        return float(((x @ self.theta - y) ** 2).mean())

    def update(self, pairs: list[tuple[list[float], float]]) -> None:
        for features, reward in pairs:
            x = torch.tensor(features, dtype=torch.float64)
            self.a += torch.outer(x, x)
            self.b += reward * x
        self.samples += len(pairs)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"a": self.a, "b": self.b, "samples": torch.tensor([self.samples])}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> LinUCB:
        a, b = tensors["a"].to(torch.float64), tensors["b"].to(torch.float64)
        if a.ndim != 2 or a.shape[0] != a.shape[1] or b.shape != (a.shape[0],):
            raise ValueError("bandit state of the wrong shape")
        bandit = cls(a.shape[0])
        bandit.a, bandit.b, bandit.samples = a, b, int(tensors["samples"][0])
        return bandit
