"""Observation and reward normalisation, as gymnasium's `NormalizeObservation` and `NormalizeReward`
wrappers (and SB3's VecNormalize) do it, but with one set of statistics for the whole run, kept by
the trainer.

The wrappers would keep statistics per worker process: workers would normalise differently, a
restarted worker would start from nothing, and nobody could say which statistics a policy needs.
Here the trainer updates them from the chunks it takes, and:
- the observation statistics are part of the actor (`obs_norm.mean`, `obs_norm.var`, see
  hotprune.actor_spec): they travel with the weights through the snapshot, the store and the policy
  files, so a worker, `hotprune evaluate` and a user's own code normalise exactly as the policy
  was trained;
- the reward scale is the trainer's alone (only the learner sees scaled rewards; episode returns
  everywhere are the environment's own).
Both are checkpointed with the trainer.

Torch-free: plain numpy, float64 statistics.
"""

from __future__ import annotations

import numpy as np

from hotprune.actor_spec import NORM_CLIP, NORM_EPS


class RunningMeanStd:
    """Mean and variance of everything seen so far (Chan et al.'s parallel update, as gymnasium's)."""

    def __init__(self, shape: tuple[int, ...] = ()):
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = NORM_EPS  # as gymnasium: the first batch's statistics then count almost fully

    def update(self, batch: np.ndarray) -> None:
        """Take in a batch of rows (first axis) of the tracked shape."""
        batch = np.asarray(batch, np.float64)
        if not len(batch):
            return
        b_mean, b_var, b_count = batch.mean(axis=0), batch.var(axis=0), len(batch)
        delta, total = b_mean - self.mean, self.count + b_count
        self.mean = self.mean + delta * b_count / total
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total
        self.var, self.count = m2 / total, total

    def state(self) -> dict[str, np.ndarray]:
        """As arrays of at least one dimension (a tensor file keeps no 0-d arrays)."""
        return {"mean": np.atleast_1d(self.mean).copy(), "var": np.atleast_1d(self.var).copy(),
                "count": np.array([self.count])}

    def load(self, state: dict[str, np.ndarray]) -> None:
        shape = np.atleast_1d(self.mean).shape
        if state["mean"].shape != shape or state["var"].shape != shape or state["count"].shape != (1,):
            raise ValueError(f"normalisation statistics of shape {state['mean'].shape}, expected {shape}")
        self.mean = state["mean"].reshape(self.mean.shape).copy()
        self.var = state["var"].reshape(self.var.shape).copy()
        self.count = state["count"].item()


class RewardScaler:
    """Rewards divided by the running standard deviation of the discounted return and clipped to
    +-NORM_CLIP (gymnasium's NormalizeReward; CleanRL's continuous PPO uses it).

    The discounted return runs on per environment of each worker, over that environment's chunks in
    the order they arrive (a worker's chunks arrive in order on its pipe). A worker process that
    starts again (a new `worker_start`) starts its returns from 0.
    """

    def __init__(self, num_workers: int, envs_per_worker: int, gamma: float):
        self.gamma = gamma
        self.stats = RunningMeanStd()
        self.returns = np.zeros((num_workers, envs_per_worker), np.float64)
        self.starts = np.zeros(num_workers, np.int64)  # the worker process whose returns run on

    def scale(self, worker_id: int, worker_start: int, rewards: np.ndarray, done: np.ndarray) -> np.ndarray:
        """A chunk's rewards [T, envs], scaled (float32); the statistics take them in first."""
        if worker_start != self.starts[worker_id]:
            self.starts[worker_id], self.returns[worker_id] = worker_start, 0.0
        ret = self.returns[worker_id]
        seen = np.empty(rewards.shape, np.float64)
        for t in range(len(rewards)):
            ret = ret * self.gamma + rewards[t]
            seen[t] = ret
            ret = np.where(done[t], 0.0, ret)
        self.returns[worker_id] = ret
        self.stats.update(seen.reshape(-1))
        return np.clip(rewards / np.sqrt(self.stats.var + NORM_EPS), -NORM_CLIP, NORM_CLIP).astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        return {**self.stats.state(), "returns": self.returns.copy(), "starts": self.starts.copy()}

    def load(self, state: dict[str, np.ndarray]) -> None:
        self.stats.load(state)
        if state["returns"].shape != self.returns.shape:
            raise ValueError(f"reward returns of shape {state['returns'].shape}, expected {self.returns.shape}")
        self.returns, self.starts = state["returns"].copy(), state["starts"].copy()
