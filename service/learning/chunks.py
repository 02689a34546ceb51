"""An epoch's trajectory chunks side by side, as the learners read them (PPO's GAE, SAC's transitions)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Batch:
    """Chunks side by side: time-major [T, N_total, ...] arrays."""

    obs: np.ndarray  # [T + 1, N, D]: the last row bootstraps the chunk's end
    actions: np.ndarray  # [T, N] discrete, [T, N, A] continuous
    logprobs: np.ndarray  # [T, N] behaviour log-probabilities
    rewards: np.ndarray  # [T, N]
    terminated: np.ndarray  # [T, N]
    truncated: np.ndarray  # [T, N]
    final_obs: np.ndarray  # [T, N, D]: final observation of each truncated step (zeros elsewhere)

    @classmethod
    def stack(cls, chunks: list[dict[str, np.ndarray]]) -> "Batch":
        """Chunks side by side along the env axis; a chunk's compact final_obs [K, D] is spread out."""

        def cat(arrays):
            return np.concatenate(arrays, axis=1)

        final_obs = []
        for chunk in chunks:
            dense = np.zeros_like(chunk["obs"][:-1])
            dense[chunk["truncated"]] = chunk["final_obs"]  # both in (t, n) order
            final_obs.append(dense)
        fields = ("obs", "actions", "logprobs", "rewards", "terminated", "truncated")
        return cls(*(cat([c[f] for c in chunks]) for f in fields), cat(final_obs))

    @property
    def size(self) -> int:
        return self.rewards.size

    def transitions(self) -> dict[str, np.ndarray]:
        """One row per env step (time-major, flattened): obs, actions, rewards, next_obs, terminated.
        next_obs is obs[t + 1], or the final observation of a truncated step (with same-step autoreset
        obs[t + 1] is then the next episode's first); after a terminated step it is never used."""
        next_obs = self.obs[1:].copy()
        next_obs[self.truncated] = self.final_obs[self.truncated]
        dim = self.obs.shape[-1]
        return {"obs": self.obs[:-1].reshape(-1, dim), "actions": self.actions.reshape(self.size, -1),
                "rewards": self.rewards.reshape(-1), "next_obs": next_obs.reshape(-1, dim),
                "terminated": self.terminated.reshape(-1)}
