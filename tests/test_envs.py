"""Environments of the user's own: a `module:EnvName-vN` id imported from the run's directory, its
constructor's keyword arguments and wrappers, and the one-line errors when any of it is wrong."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hotprune

from hotprune.config import ConfigError
from hotprune.envs import EnvSource, env_spec, make_vector_env
from hotprune.runs import artifacts
from tests.servicekit import HOTPRUNE
from tests.test_readme import doc

MODULE = "hp_test_corridor"  # a name of its own: the module stays imported in this process
SOURCE = f'''
import gymnasium as gym
import numpy as np


class Corridor(gym.Env):
    def __init__(self, size=5):
        self.size = size
        self.observation_space = gym.spaces.Box(0.0, 1.0, (size,), np.float32)
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.position = 0
        return np.eye(self.size, dtype=np.float32)[0], {{}}

    def step(self, action):
        self.position = max(0, self.position + (1 if action == 1 else -1))
        done = self.position == self.size - 1
        return np.eye(self.size, dtype=np.float32)[self.position], float(done), done, False, {{}}


class AppendOne(gym.ObservationWrapper):
    def __init__(self, env):
        super().__init__(env)
        n = env.observation_space.shape[0] + 1
        self.observation_space = gym.spaces.Box(0.0, 2.0, (n,), np.float32)

    def observation(self, obs):
        return np.append(obs, np.float32(1.0))


class Double(gym.ObservationWrapper):
    def observation(self, obs):
        return obs * np.float32(2.0)


gym.register("{MODULE}-v0", entry_point=Corridor, max_episode_steps=20)
'''


@pytest.fixture(scope="module")
def env_dir(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("user")
    (directory / f"{MODULE}.py").write_text(SOURCE)
    (directory / "hp_test_broken.py").write_text("raise RuntimeError('the module is broken')\n")
    assert importlib.util.find_spec(MODULE) is None  # not importable but from its directory
    return str(directory)


def test_a_module_id_is_imported_from_its_directory_with_its_kwargs(env_dir):
    source = EnvSource(f"{MODULE}:{MODULE}-v0", {"size": 8}, (), env_dir)
    spec = env_spec(source)
    assert (spec.env_id, spec.obs_dim, spec.act_dim, spec.discrete) == (source.env_id, 8, 2, True)
    envs = make_vector_env(source, 3)  # what a worker steps
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (3, 8) and (obs[:, 0] == 1).all()
    envs.close()
    assert source.registered().max_episode_steps == 20


def test_wrappers_are_applied_in_their_order(env_dir):
    def first_obs(*wrappers: str) -> np.ndarray:
        env = EnvSource(f"{MODULE}:{MODULE}-v0", {"size": 3}, wrappers, env_dir).make()
        obs, _ = env.reset(seed=0)
        env.close()
        return obs

    append_then_double = first_obs(f"{MODULE}:AppendOne", f"{MODULE}:Double")
    double_then_append = first_obs(f"{MODULE}:Double", f"{MODULE}:AppendOne")
    assert append_then_double.tolist() == [2, 0, 0, 2] and double_then_append.tolist() == [2, 0, 0, 1]
    assert env_spec(EnvSource(f"{MODULE}:{MODULE}-v0", {}, (f"{MODULE}:AppendOne",), env_dir)).obs_dim == 6


def test_a_policy_file_records_what_makes_its_environment_again(env_dir):
    source = EnvSource(f"{MODULE}:{MODULE}-v0", {"size": 4}, (f"{MODULE}:Double",), env_dir)
    meta = {"env_id": source.env_id, **source.meta()}
    assert EnvSource.from_meta(meta) == source
    assert EnvSource("CartPole-v1").meta() == {}  # a plain id's files stay as they were
    assert EnvSource.from_meta({"env_id": "CartPole-v1"}) == EnvSource("CartPole-v1")


@pytest.mark.parametrize("env_id, kwargs, wrappers, message", [
    ("hp_test_nosuch:Corridor-v0", {}, (), "env_id 'hp_test_nosuch:Corridor-v0': cannot import hp_test_nosuch from "
                                          "{dir}: ModuleNotFoundError: No module named 'hp_test_nosuch'"),
    ("hp_test_broken:Corridor-v0", {}, (), "env_id 'hp_test_broken:Corridor-v0': cannot import hp_test_broken from "
                                          "{dir}: RuntimeError: the module is broken"),
    (f"{MODULE}:Nowhere-v0", {}, (), f"env_id '{MODULE}:Nowhere-v0': NameNotFound: Environment `Nowhere` doesn't "
                                     "exist."),
    (f"{MODULE}:{MODULE}-v0", {"length": 6}, (), f"env_id '{MODULE}:{MODULE}-v0' with env_kwargs {{'length': 6}}: "
                                                 "TypeError: Corridor.__init__() got an unexpected keyword argument "
                                                 "'length'"),
    (f"{MODULE}:{MODULE}-v0", {}, (f"{MODULE}:Triple",), f"env_wrappers '{MODULE}:Triple': {MODULE} has no callable "
                                                         "Triple"),
    (f"{MODULE}:{MODULE}-v0", {}, ("hp_test_nosuch:Wrap",), "env_wrappers 'hp_test_nosuch:Wrap': cannot import "
                                                            "hp_test_nosuch from {dir}"),
])
def test_an_environment_that_cannot_be_made_is_one_line(env_dir, env_id, kwargs, wrappers, message):
    with pytest.raises(ConfigError) as error:
        env_spec(EnvSource(env_id, kwargs, wrappers, env_dir))
    assert str(error.value).startswith(message.replace("{dir}", env_dir)) and "\n" not in str(error.value)


def run_readme_lines(cwd: Path) -> list[subprocess.CompletedProcess]:
    """The bash lines of docs/environments.md, each as it is, with the installed command."""
    block = re.search(r"```bash\n(.*?)```", doc("docs/environments.md"), re.S).group(1)
    path = f"{Path(HOTPRUNE).parent}{os.pathsep}{os.environ['PATH']}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PATH": path}
    return [subprocess.run(shlex.split(line), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
            for line in block.splitlines()]


@pytest.mark.slow
def test_the_readme_example_trains_and_evaluates_its_own_environment(tmp_path_factory, monkeypatch):
    tmp_path = tmp_path_factory.mktemp("readme")  # short: the run's socket paths are under it
    code = re.search(r"```python\n(.*?)```", doc("docs/environments.md"), re.S).group(1)
    (tmp_path / "corridor.py").write_text(code)
    run, evaluated = run_readme_lines(tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stderr == "" or "error" not in run.stderr
    assert evaluated.returncode == 0, evaluated.stderr
    assert re.match(r"corridor:Corridor-v0: return -?\d+\.\d\d ± \d+\.\d\d over 5 episode\(s\)", evaluated.stdout)
    run_dir = (tmp_path / "runs" / "latest").resolve()
    config = (run_dir / "config.toml").read_text()
    assert f"env_dir = \"{tmp_path.resolve()}\"" in config and 'env_kwargs = {"size" = 6}' in config
    # every kept file says what makes its environment again (artifacts.run_meta), not only the policy
    for kept in (artifacts.POLICY, artifacts.INITIAL, artifacts.CHECKPOINT, artifacts.MASKS):
        meta = artifacts.load(run_dir / kept)[1]
        assert (meta["env_kwargs"], meta["env_dir"]) == ({"size": 6}, str(tmp_path.resolve())), kept
    # from anywhere: the policy file says where its environment comes from (this process has never had
    # tmp_path on its module path)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert "corridor" not in sys.modules
    assert hotprune.evaluate(run_dir, episodes=1)["env_id"] == "corridor:Corridor-v0"
    # a module that is not there: one line, exit 2, no run directory
    before = sorted(p.name for p in (tmp_path / "runs").iterdir())
    result = subprocess.run([HOTPRUNE, "run", "--env", "corridors:Corridor-v0"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"cannot import corridors from {tmp_path.resolve()}: ModuleNotFoundError" in result.stderr
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == before
