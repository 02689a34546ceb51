"""GAE with gymnasium's flags: a cut-off episode bootstraps from its final observation, an ended one never;
and the explained variance the epoch line shows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hotprune.learning.ppo import Batch, advantages, explained_variance

torch.set_num_threads(1)
VALUE = 10.0
GAMMA = 0.9


def constant_critic() -> nn.Module:
    critic = nn.Linear(2, 1)
    nn.init.zeros_(critic.weight)
    nn.init.constant_(critic.bias, VALUE)
    return critic


def one_step(terminated: bool, truncated: bool) -> Batch:
    final_obs = np.zeros((1, 1, 2), np.float32)
    return Batch(obs=np.zeros((2, 1, 2), np.float32), actions=np.zeros((1, 1), np.int64),
                 logprobs=np.zeros((1, 1), np.float32), rewards=np.ones((1, 1), np.float32),
                 terminated=np.array([[terminated]]), truncated=np.array([[truncated]]), final_obs=final_obs)


@pytest.mark.parametrize(
    "terminated, truncated, expected",
    [
        (False, False, 1 + GAMMA * VALUE),  # the chunk ends mid-episode: bootstrap from the next obs
        (False, True, 1 + GAMMA * VALUE),  # cut off by the time limit: bootstrap from the final obs
        (True, False, 1.0),  # the episode ended
        (True, True, 1.0),  # ended on the step the time limit fired: still nothing to bootstrap
    ],
)
def test_one_step_return(terminated, truncated, expected):
    _, returns = advantages(one_step(terminated, truncated), constant_critic(), GAMMA, 0.95)
    assert returns.item() == pytest.approx(expected)


def test_explained_variance_is_one_for_values_that_are_the_returns_and_zero_for_their_mean():
    returns = torch.tensor([1.0, 2.0, 4.0, 8.0])
    assert explained_variance(torch.zeros(4), returns) == 1.0  # advantages = returns - values
    assert explained_variance(returns - returns.mean(), returns) == pytest.approx(0.0, abs=1e-6)
    assert explained_variance(2 * returns, returns) == pytest.approx(-3.0)  # values = -returns: worse than none
    assert explained_variance(torch.zeros(4), torch.ones(4)) is None  # returns that do not vary explain nothing
