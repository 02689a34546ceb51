"""The learning algorithms a run may use, and the actor each one trains: the one registry the config's
`algorithm` choices, the actor's tensor table (hotprune.actor_spec), the torch and numpy actors and
the trainer read. torch-free and import-free, so the config, the supervisor and the workers can ask it.

An actor is an MLP (`net.0`, `net.2`, ...) with one hidden activation (ACTIVATIONS; the config's
`<algorithm>.activation`, by default the algorithm's own) and one head:
- `categorical`: logits over Discrete actions;
- `gaussian`: the mean of a diagonal Gaussian whose log std is a parameter of its own (`log_std`);
- `squashed`: SAC's tanh-squashed Gaussian, mean and log std both outputs of the MLP (2 * act_dim
  units), the sample tanh(mean + std * eps) rescaled to the action box (CleanRL's
  sac_continuous_action.py).
"""

from __future__ import annotations

from dataclasses import dataclass

HEADS = ("categorical", "gaussian", "squashed")
# Hidden activations, the same functions in torch (hotprune.learning.policy) and numpy
# (hotprune.workers.numpy_policy): elu's alpha 1, leaky_relu's slope 0.01 (torch's defaults), gelu in
# its tanh form (numpy has no erf, and a worker imports nothing more for it).
ACTIVATIONS = ("tanh", "relu", "elu", "silu", "gelu", "leaky_relu")
# The squashed head's log std, tanh-rescaled into [LOG_STD_MIN, LOG_STD_MAX] (CleanRL, from SpinUp).
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


@dataclass(frozen=True)
class Algorithm:
    name: str
    module: str  # the learner: hotprune.learning.<module>.Learner (imported by the trainer only: torch)
    activation: str  # between the hidden layers, unless the config names another
    discrete_head: str | None  # None: the algorithm needs continuous actions
    continuous_head: str
    summary: str


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm("ppo", "ppo", "tanh", "categorical", "gaussian",
                  "on-policy PPO (CleanRL's ppo.py) on the epoch's chunks"),
        Algorithm("sac", "sac", "relu", None, "squashed",
                  "off-policy SAC (CleanRL's sac_continuous_action.py) from a replay buffer; Box actions only"),
    )
}


@dataclass(frozen=True)
class ActorKind:
    """What an actor computes besides its layer sizes: the hidden activation and the head."""

    activation: str
    head: str

    @property
    def outputs_per_action(self) -> int:
        return 2 if self.head == "squashed" else 1  # squashed: mean and log std


def actor_kind(algorithm: str, discrete: bool, activation: str | None = None) -> ActorKind:
    """The actor `algorithm` trains for an env with `discrete` actions, with `activation` (None: the
    algorithm's own, as every policy file from before the activation was a setting); ValueError if it
    cannot."""
    a = ALGORITHMS[algorithm]
    head = a.discrete_head if discrete else a.continuous_head
    if head is None:
        raise ValueError(f"algorithm {algorithm} needs continuous (Box) actions")
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {'|'.join(ACTIVATIONS)}, got {activation!r}")
    return ActorKind(activation or a.activation, head)
