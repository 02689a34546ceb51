"""The workers' numpy actor (hotprune.workers.numpy_policy) against the torch actor it replaces: the same
log-probabilities and actions (for every activation), samples that follow the distribution, seeded, and
malformed tensors refused."""

import numpy as np
import pytest
import torch

from hotprune.algorithms import ACTIVATIONS as ALGORITHM_ACTIVATIONS
from hotprune.envs import EnvSpec, env_spec
from hotprune.learning.policy import ACTIVATIONS as TORCH_ACTIVATIONS
from hotprune.learning.policy import Actor, actor_arrays, actor_from_tensors, expected_spec, make_actor
from hotprune.pruning.engine import Pruner, apply_masks
from hotprune.workers.numpy_policy import ACTIVATIONS, NumpyActor

torch.set_num_threads(1)

CARTPOLE, PENDULUM = env_spec("CartPole-v1"), env_spec("Pendulum-v1")
SHAPES = ["dense", "neuron-pruned", "small"]


def torch_actor(spec, shape: str) -> Actor:
    """A trained-looking actor (weights far from the near-uniform initial policy) of the given shape:
    dense [64, 64]; its neuron-pruned 90% form, as the store publishes it; or a hand-sized [7, 3]."""
    torch.manual_seed(3)
    actor = make_actor(spec, [7, 3] if shape == "small" else [64, 64])
    with torch.no_grad():
        for p in actor.parameters():
            p.add_(torch.randn_like(p) * 0.15)
    if shape != "neuron-pruned":
        return actor
    weights = actor_arrays(actor)
    masks = Pruner(expected_spec(actor), method="magnitude", structure="neuron", scope="layer").compute(weights, 0.9)
    return actor_from_tensors(apply_masks(weights, masks), spec.discrete)


def torch_log_prob(actor: Actor, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return actor.log_prob(actor.distribution(torch.from_numpy(obs)), torch.from_numpy(actions)).numpy()


def observations(spec, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, spec.obs_dim)).astype(np.float32)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("spec", [CARTPOLE, PENDULUM], ids=lambda s: s.env_id)
def test_log_probs_are_the_torch_actors(spec, shape):
    actor = torch_actor(spec, shape)
    if shape == "neuron-pruned":
        assert actor.net[0].weight.shape == (6, spec.obs_dim)  # 64 -> 6 units: physically smaller
    numpy_actor = NumpyActor(actor_arrays(actor), spec, np.random.default_rng(0))
    obs = observations(spec, 64)
    rng = np.random.default_rng(1)
    given = (rng.integers(spec.act_dim, size=64) if spec.discrete
             else rng.normal(0, 2, (64, spec.act_dim)).astype(np.float32))
    np.testing.assert_allclose(numpy_actor.log_prob(obs, given), torch_log_prob(actor, obs, given), atol=1e-5)
    actions, logp = numpy_actor.act(obs)  # what a worker records: the sampled actions' log-probabilities
    assert actions.dtype == (np.int64 if spec.discrete else np.float32) and logp.dtype == np.float32
    assert actions.shape == ((64,) if spec.discrete else (64, spec.act_dim)) and logp.shape == (64,)
    np.testing.assert_allclose(logp, torch_log_prob(actor, obs, actions), atol=1e-5)


def test_discrete_log_probs_of_logits_far_apart_are_finite_and_torchs():
    """Logits of +-1000 (exp overflows float32 at 89): the log-softmax is computed without exp of a logit."""
    numpy_actor = NumpyActor(actor_arrays(torch_actor(CARTPOLE, "small")), CARTPOLE, np.random.default_rng(0))
    logits = np.array([[1000, -1000], [-1000, 1000], [89, 90]], np.float32)
    actions = np.array([1, 1, 0])
    expected = torch.distributions.Categorical(logits=torch.from_numpy(logits)).log_prob(torch.from_numpy(actions))
    got = numpy_actor.log_prob_of(logits, actions)
    assert np.isfinite(got).all() and got[1] == 0
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)


def test_discrete_samples_follow_the_categorical_distribution():
    """8 observations, each 5,000 times: the action counts against torch's probabilities, chi-square
    with 8 degrees of freedom (its 99.9% quantile is 26.1; a fixed seed makes the test deterministic)."""
    actor = torch_actor(CARTPOLE, "dense")
    obs = np.repeat(observations(CARTPOLE, 8), 5000, axis=0)
    actions, _ = NumpyActor(actor_arrays(actor), CARTPOLE, np.random.default_rng(5)).act(obs)
    with torch.no_grad():
        probs = actor.distribution(torch.from_numpy(obs[::5000])).probs.numpy().astype(np.float64)
    assert 0.1 < probs.min() < 0.35  # a distribution the check can tell from a wrong one
    counts = np.stack([np.bincount(a, minlength=2) for a in actions.reshape(8, 5000)])
    expected = probs * 5000
    assert ((counts - expected) ** 2 / expected).sum() < 26.1


def test_continuous_samples_follow_the_gaussian():
    """Standardised by the torch actor's mean and std, 40,000 samples have mean 0 and variance 1."""
    actor = torch_actor(PENDULUM, "dense")
    obs = np.repeat(observations(PENDULUM, 8), 5000, axis=0)
    actions, _ = NumpyActor(actor_arrays(actor), PENDULUM, np.random.default_rng(5)).act(obs)
    with torch.no_grad():
        dist = actor.distribution(torch.from_numpy(obs))
    z = ((actions - dist.mean.numpy()) / dist.stddev.numpy()).ravel()
    assert abs(z.mean()) < 4 / np.sqrt(z.size)  # 4 standard errors
    assert abs(z.var() - 1) < 0.03  # the variance's standard error is sqrt(2 / n) = 0.007
    assert abs((np.abs(z) < 1).mean() - 0.6827) < 0.01  # and the shape: 68% within one std


@pytest.mark.parametrize("spec", [CARTPOLE, PENDULUM], ids=lambda s: s.env_id)
def test_the_same_seed_gives_the_same_actions(spec):
    tensors, obs = actor_arrays(torch_actor(spec, "dense")), observations(spec, 4)
    first, second, other = (NumpyActor(tensors, spec, np.random.default_rng(seed)) for seed in (7, 7, 8))
    runs = [[a.act(obs)[0] for _ in range(50)] for a in (first, second, other)]
    assert all(np.array_equal(x, y) for x, y in zip(runs[0], runs[1]))
    assert not all(np.array_equal(x, y) for x, y in zip(runs[0], runs[2]))


def test_the_actor_runs_on_the_arrays_it_is_given():
    """No copy: a worker's store read is already its own, and the actor takes it as it is."""
    tensors = actor_arrays(torch_actor(PENDULUM, "dense"))
    actor = NumpyActor(tensors, PENDULUM, np.random.default_rng(0))
    assert actor.layers[0][0] is tensors["net.0.weight"] and actor.log_std is tensors["log_std"]


def without(tensors, *names):
    return {n: t for n, t in tensors.items() if n not in names}


def replaced(tensors, name, value):
    return {**tensors, name: value}


CARTPOLE_TENSORS = actor_arrays(make_actor(CARTPOLE, [8, 8]))
PENDULUM_TENSORS = actor_arrays(make_actor(PENDULUM, [8, 8]))
MALFORMED = {
    "no layer at all": (CARTPOLE, {}, "not a chain"),
    "a missing layer": (CARTPOLE, without(CARTPOLE_TENSORS, "net.2.weight", "net.2.bias"), "not a chain"),
    "a missing bias": (CARTPOLE, without(CARTPOLE_TENSORS, "net.2.bias"), r"missing \['net.2.bias'\]"),
    "an unknown tensor": (CARTPOLE, replaced(CARTPOLE_TENSORS, "extra", np.zeros(2, np.float32)),
                          r"unexpected \['extra'\]"),
    "inner dims that do not chain": (CARTPOLE, replaced(CARTPOLE_TENSORS, "net.2.weight", np.zeros((8, 7), np.float32)),
                                     "net.2.weight"),
    "a bias of the wrong length": (CARTPOLE, replaced(CARTPOLE_TENSORS, "net.0.bias", np.zeros(7, np.float32)),
                                   "net.0.weight"),
    "a 1-D weight": (CARTPOLE, replaced(CARTPOLE_TENSORS, "net.4.weight", np.zeros(16, np.float32)), "net.4.weight"),
    "a 2-D bias": (CARTPOLE, replaced(CARTPOLE_TENSORS, "net.4.bias", np.zeros((2, 1), np.float32)), "net.4.weight"),
    "another obs dim": (CARTPOLE, actor_arrays(make_actor(EnvSpec("Wider", 5, 2, True), [8, 8])),
                        r"net.0.weight \(8, 5\) with bias \(8,\) does not take 4 inputs"),
    "another action count": (PENDULUM, PENDULUM_TENSORS | {"net.4.weight": np.zeros((2, 8), np.float32),
                                                           "net.4.bias": np.zeros(2, np.float32)}, "needs 1"),
    "log_std missing (continuous)": (PENDULUM, without(PENDULUM_TENSORS, "log_std"), r"missing \['log_std'\]"),
    "log_std present (discrete)": (CARTPOLE, replaced(CARTPOLE_TENSORS, "log_std", np.zeros(2, np.float32)),
                                   r"unexpected \['log_std'\]"),
    "log_std of the wrong shape": (PENDULUM, replaced(PENDULUM_TENSORS, "log_std", np.zeros(2, np.float32)),
                                   "log_std"),
    "float64": (CARTPOLE, replaced(CARTPOLE_TENSORS, "net.0.bias", np.zeros(8)), "float64, not float32"),
    "float16": (PENDULUM, replaced(PENDULUM_TENSORS, "log_std", np.zeros(1, np.float16)), "float16, not float32"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_tensors_that_are_not_an_actor_for_the_env_are_refused_with_the_reason(case):
    spec, tensors, reason = MALFORMED[case]
    with pytest.raises(ValueError, match=reason):
        NumpyActor(tensors, spec, np.random.default_rng(0))


def sac_actor(spec, shape: str = "dense") -> Actor:
    """A trained-looking SAC actor (ReLU, squashed head); dense 64-64 or its neuron-pruned 90% form."""
    torch.manual_seed(4)
    actor = make_actor(spec, [64, 64], algorithm="sac")
    with torch.no_grad():
        for p in actor.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    if shape == "dense":
        return actor
    weights = actor_arrays(actor)
    masks = Pruner(expected_spec(actor), method="magnitude", structure="neuron", scope="layer").compute(weights, 0.9)
    return actor_from_tensors(apply_masks(weights, masks), spec.discrete, "sac", (spec.action_low, spec.action_high))


HALF_BOX = EnvSpec("Box2", 5, 2, False, (-1.0, 0.0), (3.0, 0.5))  # bounds that are neither +-1 nor alike


@pytest.mark.parametrize("shape", ["dense", "neuron-pruned"])
@pytest.mark.parametrize("spec", [PENDULUM, HALF_BOX], ids=lambda s: s.env_id)
def test_squashed_gaussian_actions_and_log_probs_are_the_torch_sac_actors(spec, shape):
    """The same noise through both: the same actions, in the box, and the same tanh-corrected
    log-probabilities (1e-5); the log-probability of given actions too, back through the squash."""
    actor = sac_actor(spec, shape)
    numpy_actor = NumpyActor(actor_arrays(actor), spec, np.random.default_rng(9), "sac")
    obs = observations(spec, 64)
    actions, logp = numpy_actor.act(obs)
    eps = np.random.default_rng(9).standard_normal((64, spec.act_dim), np.float32)  # the draw act() made
    with torch.no_grad():
        dist = actor.distribution(torch.from_numpy(obs))
        torch_actions, torch_logp = actor.squash(dist, dist.mean + dist.stddev * torch.from_numpy(eps))
    assert actions.dtype == np.float32 and logp.dtype == np.float32 and logp.shape == (64,)
    np.testing.assert_allclose(actions, torch_actions.numpy(), atol=1e-5)
    np.testing.assert_allclose(logp, torch_logp.numpy(), atol=1e-5)
    assert (actions >= np.array(spec.action_low)).all() and (actions <= np.array(spec.action_high)).all()
    given = np.random.default_rng(1).uniform(spec.action_low, spec.action_high, (64, spec.act_dim)).astype(np.float32)
    np.testing.assert_allclose(numpy_actor.log_prob(obs, given), torch_log_prob(actor, obs, given), atol=1e-4,
                               rtol=1e-5)


def test_squashed_samples_follow_the_tanh_of_the_gaussian():
    """atanh of 40,000 rescaled samples, standardised by the torch actor's mean and std: mean 0, variance 1;
    and the deterministic action is tanh(mean) in the box."""
    actor = sac_actor(PENDULUM)
    obs = np.repeat(observations(PENDULUM, 8), 5000, axis=0)
    actions, _ = NumpyActor(actor_arrays(actor), PENDULUM, np.random.default_rng(5), "sac").act(obs)
    with torch.no_grad():
        dist = actor.distribution(torch.from_numpy(obs))
        mean, std = dist.mean.numpy(), dist.stddev.numpy()
        deterministic = actor.act(torch.from_numpy(obs[:1]), deterministic=True).numpy()
    x = np.arctanh(np.clip(actions / 2.0, -1 + 1e-6, 1 - 1e-6).astype(np.float64))  # Pendulum's box is +-2
    z = (x - mean) / std
    assert abs(z.mean()) < 0.02 and abs(z.var() - 1) < 0.03
    np.testing.assert_allclose(deterministic, 2.0 * np.tanh(mean[:1]), atol=1e-6)


def test_a_sac_actor_needs_its_two_outputs_per_action_and_no_log_std():
    tensors = actor_arrays(sac_actor(PENDULUM))
    with pytest.raises(ValueError, match="needs 2"):
        NumpyActor(without(PENDULUM_TENSORS, "log_std"), PENDULUM, np.random.default_rng(0), "sac")
    with pytest.raises(ValueError, match=r"unexpected \['log_std'\]"):
        NumpyActor(tensors | {"log_std": np.zeros(1, np.float32)}, PENDULUM, np.random.default_rng(0), "sac")
    with pytest.raises(ValueError, match="needs Box actions|continuous"):
        NumpyActor(tensors, CARTPOLE, np.random.default_rng(0), "sac")


def test_every_activation_is_in_both_actors():
    assert tuple(ACTIVATIONS) == tuple(TORCH_ACTIVATIONS) == ALGORITHM_ACTIVATIONS


@pytest.mark.parametrize("activation", ALGORITHM_ACTIVATIONS)
@pytest.mark.parametrize("algorithm, spec", [("ppo", CARTPOLE), ("ppo", PENDULUM), ("sac", HALF_BOX)],
                         ids=["ppo-discrete", "ppo-gaussian", "sac-squashed"])
def test_each_activation_gives_the_torch_actors_log_probs_and_actions(activation, algorithm, spec):
    """Pre-activations beyond +-4 (where elu, silu and gelu bend and saturate): log-probabilities and the
    most likely actions within 1e-5."""
    torch.manual_seed(4)
    actor = make_actor(spec, [32, 16], algorithm=algorithm, activation=activation)
    with torch.no_grad():  # the first layer far from its init, for wide pre-activations; the rest near it
        for name, p in actor.named_parameters():
            p.add_(torch.randn_like(p) * (0.5 if name.startswith("net.0.") else 0.1))
    numpy_actor = NumpyActor(actor_arrays(actor), spec, np.random.default_rng(0), algorithm, activation)
    obs = observations(spec, 64) * 3
    with torch.no_grad():
        hidden = actor.net[0](torch.from_numpy(obs))
        assert hidden.min() < -4 and hidden.max() > 4
        deterministic = actor.act(torch.from_numpy(obs), deterministic=True).numpy()
    rng = np.random.default_rng(1)
    if spec.discrete:
        given = rng.integers(spec.act_dim, size=64)
    else:  # inside the box (the squash's atanh is steep at its bounds)
        low, high = np.array(spec.action_low), np.array(spec.action_high)
        given = rng.uniform(low + 0.1 * (high - low), high - 0.1 * (high - low), (64, spec.act_dim)).astype(np.float32)
    np.testing.assert_allclose(numpy_actor.log_prob(obs, given), torch_log_prob(actor, obs, given), atol=1e-5,
                               rtol=1e-5)  # relative: a narrow squashed Gaussian's are in the thousands
    if spec.discrete:
        assert np.array_equal(numpy_actor.most_likely(obs), deterministic)
    else:
        np.testing.assert_allclose(numpy_actor.most_likely(obs), deterministic, atol=1e-5)


def test_an_actor_without_an_activation_has_its_algorithms_own():
    """Policy files from before the activation was a setting: tanh for PPO, ReLU for SAC."""
    assert make_actor(CARTPOLE, [4]).kind.activation == "tanh"
    assert make_actor(PENDULUM, [4], algorithm="sac").kind.activation == "relu"
    assert isinstance(make_actor(PENDULUM, [4], algorithm="sac", activation="silu").net[1], torch.nn.SiLU)
    with pytest.raises(ValueError, match=r"^activation must be one of tanh\|relu\|elu\|silu\|gelu\|leaky_relu, "
                                         r"got 'swish'"):
        NumpyActor(actor_arrays(make_actor(CARTPOLE, [4])), CARTPOLE, np.random.default_rng(0), "ppo", "swish")
