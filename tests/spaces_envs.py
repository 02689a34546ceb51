"""Environments with structured observations for tests/test_spaces.py, registered with gymnasium when
this module is imported. A run's processes import it too: its id `tests.spaces_envs:Cue-v0` names
the module (gymnasium imports it), and they start from the repository root, where `tests` is a package.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

CUE_STEPS = 16


class Cue(gym.Env):
    """Each step shows a cue, one of 3, in a Dict beside noise, flags and counts (every kind of space
    hotprune flattens); the action equal to the cue earns 1. 16 steps: a uniform policy's return is
    about 5.3, one that reads the cue's one-hot gets 16."""

    observation_space = spaces.Dict({
        "cue": spaces.Discrete(3),
        "noise": spaces.Box(-1.0, 1.0, (2, 2), np.float32),
        "flags": spaces.MultiBinary(3),
        "counts": spaces.MultiDiscrete([2, 4]),
        "pair": spaces.Tuple((spaces.Discrete(2, start=1), spaces.Box(0.0, 1.0, (1,), np.float64))),
    })
    action_space = spaces.Discrete(3)

    def __init__(self, render_mode: str | None = None):  # hotprune eval passes one
        self.render_mode = render_mode

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        reward = float(action == self.cue)
        self.t += 1
        return self._obs(), reward, False, self.t >= CUE_STEPS, {}

    def _obs(self):
        rng = self.np_random  # seeded by reset
        self.cue = int(rng.integers(3))
        return {"cue": self.cue, "noise": rng.uniform(-1, 1, (2, 2)).astype(np.float32),
                "flags": rng.integers(0, 2, 3).astype(np.int8), "counts": rng.integers([2, 4]),
                "pair": (int(rng.integers(1, 3)), rng.uniform(0, 1, (1,)))}


class Pixels(gym.Env):
    """Image observations, which hotprune refuses until the pixel-policies work."""

    observation_space = spaces.Box(0, 255, (8, 8, 3), np.uint8)
    action_space = spaces.Discrete(2)


gym.register("Cue-v0", entry_point=Cue)
gym.register("Pixels-v0", entry_point=Pixels)
