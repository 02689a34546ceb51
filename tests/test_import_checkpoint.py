"""`hotprune import sb3|cleanrl`: models trained elsewhere act in hotprune exactly as they did there, start
a real run as its init_file, and anything that cannot be mapped is refused in one line, nothing written and
nothing unpickled. Also the init file's errors that name what is expected."""

from __future__ import annotations

import base64
import io
import json
import pickle
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import safetensors.numpy
import stable_baselines3 as sb3  # the test extra's (so never skipped); hotprune itself never imports it
import torch
from torch import nn

import hotprune
from hotprune.runs import artifacts
from tests.servicekit import hotprune as hotprune_cli
from tests.servicekit import run_cli, settings

TRAIN_STEPS = 2048  # enough to move the policy well away from its initialisation, in a few seconds


def observations(env_id: str, count: int = 512) -> np.ndarray:
    """Observations the environment visits under random actions, and as many drawn wide around them."""
    env = gym.make(env_id)
    obs, _ = env.reset(seed=0)
    visited = []
    for _ in range(count // 2):
        visited.append(obs)
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, _ = env.reset()
    visited = np.array(visited, np.float32)
    wide = np.random.default_rng(0).normal(size=visited.shape).astype(np.float32) * 2 * (visited.std(0) + 0.1)
    return np.concatenate([visited, wide])


@pytest.fixture(scope="module")
def sb3_cartpole(tmp_path_factory) -> Path:
    """An SB3 PPO MlpPolicy trained on CartPole-v1 in the test, saved as SB3 saves it."""
    folder = tmp_path_factory.mktemp("sb3")
    model = sb3.PPO("MlpPolicy", "CartPole-v1", n_steps=512, batch_size=128, n_epochs=4, seed=0, device="cpu")
    model.set_logger(sb3.common.logger.configure(str(folder / "log"), []))  # not SB3's default, a new /tmp/SB3-*
    model.learn(TRAIN_STEPS)
    path = folder / "ppo_cartpole.zip"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def sb3_untrained(tmp_path_factory) -> Path:
    """An SB3 PPO MlpPolicy for CartPole-v1 as it starts: what the refusals and the file errors need."""
    return saved_sb3(tmp_path_factory.mktemp("sb3"), "untrained", env_id="CartPole-v1")


def saved_sb3(tmp_path: Path, name: str, algorithm=None, env_id: str = "Pendulum-v1", **kwargs) -> Path:
    """An untrained SB3 model, saved: the layout, activation and spaces are what the import reads."""
    model = (algorithm or sb3.PPO)("MlpPolicy", env_id, seed=0, device="cpu", **kwargs)
    path = tmp_path / f"{name}.zip"
    model.save(path)
    return path


@pytest.mark.slow  # training the model: about 10 s
def test_an_sb3_ppo_model_imports_to_a_policy_acting_as_sb3s_deterministic_predict(sb3_cartpole, tmp_path, capsys):
    out = tmp_path / "imported.safetensors"
    code, stdout, err = run_cli(capsys, "import", "sb3", str(sb3_cartpole), "--env", "CartPole-v1", "--out", str(out))
    assert code == 0, err
    assert stdout.splitlines()[0] == str(out)
    assert "--set ppo.hidden_sizes=64,64" in stdout and f"--set init_file={out}" in stdout
    model = sb3.PPO.load(sb3_cartpole, device="cpu")
    obs = observations("CartPole-v1")
    policy = hotprune.load_policy(out)
    expected, _ = model.predict(obs, deterministic=True)
    assert 0.2 < expected.mean() < 0.8  # both actions occur: the comparison can fail
    assert (policy.predict(obs) == expected).all()
    assert policy.metadata["activation"] == "tanh" and policy.metadata["source"] == "sb3"
    # the value network came along as the run's critic (critic.0, critic.2, critic.4)
    tensors, _ = artifacts.load(out)
    critic = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    critic.load_state_dict({n.removeprefix("critic."): torch.from_numpy(a) for n, a in tensors.items()
                            if n.startswith("critic.")})
    with torch.no_grad():
        values = model.policy.predict_values(torch.from_numpy(obs))
        assert torch.allclose(critic(torch.from_numpy(obs)), values, atol=1e-5)


def test_an_sb3_gaussian_policy_keeps_its_log_std_and_acts_as_sb3_within_float_rounding(tmp_path):
    model = sb3.PPO("MlpPolicy", "Pendulum-v1", seed=0, device="cpu",
                    policy_kwargs={"log_std_init": -0.7, "net_arch": [32, 16]})
    with torch.no_grad():
        model.policy.action_net.weight.mul_(3000)  # actions out past the box too: both clip them alike
    model.save(tmp_path / "pendulum.zip")
    imported = hotprune.import_policy(tmp_path / "pendulum.zip", kind="sb3", env_id="Pendulum-v1")
    assert imported.path == tmp_path / "pendulum.safetensors" and imported.critic
    assert imported.settings["ppo.hidden_sizes"] == [32, 16]
    obs = observations("Pendulum-v1")
    expected, _ = model.predict(obs, deterministic=True)
    assert 0 < (np.abs(expected) == 2).mean() < 1
    assert np.allclose(hotprune.load_policy(imported).predict(obs), expected, atol=1e-5)
    tensors, _ = artifacts.load(imported.path)
    assert np.allclose(tensors["log_std"], -0.7)


class CleanRLAgent(nn.Module):
    """CleanRL's ppo.py Agent (discrete) and ppo_continuous_action.py Agent, their layer names as there."""

    def __init__(self, obs_dim: int, act_dim: int, continuous: bool):
        super().__init__()
        def mlp(out: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(obs_dim, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, out))
        self.critic = mlp(1)
        if continuous:
            self.actor_mean = mlp(act_dim)
            self.actor_logstd = nn.Parameter(torch.full((1, act_dim), -0.3))
        else:
            self.actor = mlp(act_dim)

    def most_likely(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor_mean(obs) if hasattr(self, "actor_mean") else self.actor(obs).argmax(-1)


@pytest.mark.parametrize("env_id, act_dim, continuous", [("Acrobot-v1", 3, False), ("Pendulum-v1", 1, True)])
def test_a_cleanrl_agent_state_dict_imports_and_acts_as_the_agent(tmp_path, env_id, act_dim, continuous):
    torch.manual_seed(0)
    agent = CleanRLAgent(gym.make(env_id).observation_space.shape[0], act_dim, continuous)
    path = tmp_path / "ppo.cleanrl_model"
    torch.save(agent.state_dict(), path)  # as CleanRL's --save-model writes it
    policy = hotprune.load_policy(hotprune.import_policy(path, kind="cleanrl", env_id=env_id))
    obs = observations(env_id)
    with torch.no_grad():
        expected = agent.most_likely(torch.from_numpy(obs)).numpy()
    if continuous:
        assert np.allclose(policy.predict(obs), np.clip(expected, -2, 2), atol=1e-5)
    else:
        assert len(set(expected)) > 1 and (policy.predict(obs) == expected).all()


class Touches:
    """Unpickled, it would create a file: proof that nothing was unpickled."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_pickles_in_an_sb3_zip_are_never_unpickled(sb3_untrained, tmp_path, capsys):
    marker = tmp_path / "unpickled"
    planted = tmp_path / "planted.zip"
    with zipfile.ZipFile(sb3_untrained) as source, zipfile.ZipFile(planted, "w") as target:
        data = json.loads(source.read("data"))
        data["policy_kwargs"] = {":type:": "<class 'dict'>",
                                 ":serialized:": base64.b64encode(pickle.dumps(Touches(marker))).decode()}
        target.writestr("data", json.dumps(data))
        target.writestr("policy.pth", source.read("policy.pth"))
    code, _, err = run_cli(capsys, "import", "sb3", str(planted), "--env", "CartPole-v1")
    assert code == 0, err
    poisoned = tmp_path / "poisoned.zip"
    with zipfile.ZipFile(poisoned, "w") as target:
        target.writestr("data", json.dumps(data))
        buffer = tmp_path / "weights.pth"
        torch.save({"log_std": torch.zeros(1), "hook": Touches(marker)}, buffer)
        target.writestr("policy.pth", buffer.read_bytes())
    code, _, err = run_cli(capsys, "import", "sb3", str(poisoned), "--env", "CartPole-v1")
    assert code == 2 and err.count("\n") == 1 and "is not a torch state_dict of tensors" in err
    assert not marker.exists() and not (tmp_path / "poisoned.safetensors").exists()


def refusals(tmp_path: Path, cartpole: Path) -> list[tuple[list[str], str]]:
    relu = saved_sb3(tmp_path, "relu", policy_kwargs={"activation_fn": nn.ReLU})
    sde = saved_sb3(tmp_path, "sde", use_sde=True)
    dqn = saved_sb3(tmp_path, "dqn", sb3.DQN, "CartPole-v1", buffer_size=100)
    torch.save({"network.0.weight": torch.zeros(120, 4), "network.0.bias": torch.zeros(120)}, tmp_path / "dqn.pt")
    (tmp_path / "garbage.zip").write_bytes(b"not a zip")
    return [
        (["sb3", str(relu), "--env", "Pendulum-v1"], "with ReLU activations; hotprune's PPO networks use Tanh"),
        (["sb3", str(sde), "--env", "Pendulum-v1"], "gSDE"),
        (["sb3", str(dqn), "--env", "CartPole-v1"], "holds no action_net: it is not an SB3 ActorCriticPolicy"),
        (["sb3", str(cartpole), "--env", "Acrobot-v1"], "weight (64, 4) and bias (64,); Acrobot-v1 has 6 "
                                                            "observations"),
        (["sb3", str(cartpole), "--env", "Pendulum-v1"], "its policy is logits for Discrete actions; "
                                                             "Pendulum-v1's actions are Box(1,)"),
        (["sb3", str(tmp_path / "garbage.zip"), "--env", "CartPole-v1"], "is not an SB3 model zip"),
        (["sb3", str(tmp_path / "missing.zip"), "--env", "CartPole-v1"], "does not exist"),
        (["sb3", str(cartpole), "--env", "NoSuchEnv-v0"], "NoSuchEnv-v0"),
        (["sb3", str(cartpole), "--env", "CartPole-v1", "--out", str(cartpole)], "is the model itself"),
        (["cleanrl", str(tmp_path / "dqn.pt"), "--env", "CartPole-v1"], "is not a CleanRL PPO Agent's state_dict"),
        (["cleanrl", str(tmp_path / "garbage.zip"), "--env", "CartPole-v1"], "is not a torch state_dict"),
    ]


def test_a_model_that_cannot_be_mapped_is_refused_in_one_line_naming_what_differs(sb3_untrained, tmp_path, capsys):
    for argv, says in refusals(tmp_path, sb3_untrained):
        before = sorted(tmp_path.iterdir())
        code, out, err = run_cli(capsys, "import", *argv)
        assert (code, out) == (2, ""), (argv, err)
        assert err.startswith("hotprune import: error: ") and err.count("\n") == 1 and says in err, (argv, err)
        assert sorted(tmp_path.iterdir()) == before  # nothing written


def test_an_init_file_by_hand_gets_errors_naming_the_expected_env_id_names_and_activation(sb3_untrained, tmp_path,
                                                                                          capsys):
    by_hand = tmp_path / "by_hand.safetensors"

    def refused(arrays: dict, metadata: dict) -> str:
        safetensors.numpy.save_file(arrays, str(by_hand), metadata=metadata)
        code, _, err = run_cli(capsys, "run", *settings(tmp_path, "refused", f"init_file={json.dumps(str(by_hand))}"))
        assert code == 2 and err.count("\n") == 1 and not (tmp_path / "runs").exists()
        return err

    with zipfile.ZipFile(sb3_untrained) as archive:  # SB3's names, as a user would save them
        sb3_names = {n: t.numpy() for n, t in torch.load(io.BytesIO(archive.read("policy.pth")),
                                                         weights_only=True).items()}
    assert "has no env_id in its metadata: expected env_id=CartPole-v1" in refused(sb3_names, {})
    err = refused(sb3_names, {"env_id": "CartPole-v1"})  # a plain value, not JSON-quoted: the string it is
    assert "holds action_net.bias, which this run's ppo actor" in err
    assert "expected names: actor.net.0.weight, actor.net.0.bias, actor.net.2.weight" in err
    assert "critic.4.bias (actor.<name> may be written <name>)" in err
    imported, meta = artifacts.load(hotprune.import_policy(sb3_untrained, kind="sb3", env_id="CartPole-v1",
                                                           out=tmp_path / "imported.safetensors").path)
    relu = {k: json.dumps(v) for k, v in {**meta, "activation": "relu"}.items()}
    assert "holds a relu network, this run's actor is tanh (actor.activation)" in refused(imported, relu)


@pytest.mark.slow
def test_an_imported_sb3_model_starts_a_real_run_pruned_to_90_percent(sb3_cartpole, tmp_path):
    imported = hotprune.import_policy(sb3_cartpole, kind="sb3", env_id="CartPole-v1", out=tmp_path / "sb3.safetensors")
    result = hotprune_cli("run", *settings(tmp_path, "from-sb3", f"init_file={json.dumps(str(imported.path))}",
                                           "ppo.hidden_sizes=64,64", "normalize_obs=false", "epochs=6",
                                           "pruning.target_sparsity=0.9"), "--quiet")
    assert result.returncode == 0, result.stderr
    run = tmp_path / "runs" / "from-sb3"
    initial, _ = artifacts.load(run / artifacts.INITIAL)
    tensors, _ = artifacts.load(imported.path)
    for name, value in initial.items():  # the run started from the model's weights
        assert np.array_equal(value, tensors[name]), name
    policy = hotprune.load_policy(run)
    assert policy.sparsity == pytest.approx(0.9, abs=1e-3)
