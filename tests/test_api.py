"""The Python API (docs/api.md): Config, run, load_policy, diagnose, evaluate, experiments; every example of
docs/api.md run as written; a Ctrl-C during `hotprune.run` leaves nothing behind; files written by an earlier
version (tests/data/compat/) still load and resume."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import hotprune
from hotprune.config import load_config
from hotprune.learning.policy import make_actor, actor_arrays
from hotprune.envs import env_spec
from hotprune.protocol.store_layout import segment_name
from hotprune.runs import artifacts, runlog
from tests.servicekit import as_from_a_terminal, processes_mentioning, run_cli, socket_files, wait_for

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "api.md"
COMPAT = ROOT / "tests" / "data" / "compat"
COMPAT_RUN = COMPAT / "pendulum-compat"
torch.set_num_threads(1)


def python(code: str, cwd: Path, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def assert_left_nothing(run_dir: Path, cwd: Path) -> None:
    """No process of the run (started in `cwd`), no shared memory segment, no socket file."""
    wait_for(lambda: not processes_mentioning(run_dir.name, within=cwd), timeout=15,
             what="the run's processes to exit")
    assert not (Path("/dev/shm") / segment_name(run_dir)).exists()
    assert not socket_files(run_dir)


# --- import ---------------------------------------------------------------------------------------


def test_import_hotprune_loads_nothing_and_the_public_names_load_no_torch(tmp_path):
    result = python("""
        import sys
        import hotprune
        bare = sorted(m for m in ("torch", "zmq", "numpy", "gymnasium", "hotprune.config") if m in sys.modules)
        names = [getattr(hotprune, name) for name in hotprune.__all__]
        print(bare, "torch" in sys.modules, "zmq" in sys.modules)
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "False", "False"]


def test_the_public_names_are_there_and_a_wrong_one_is_an_attribute_error():
    assert hotprune.__all__ == sorted(hotprune.__all__)
    assert {"Config", "run", "RunResult", "RunHandle", "load_policy", "Policy", "diagnose", "evaluate",
            "experiments", "ConfigError"} <= set(hotprune.__all__) <= set(dir(hotprune))
    assert hotprune.Config is load_config(None).__class__
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        hotprune.nothing  # noqa: B018
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", hotprune.__version__)


# --- Config ---------------------------------------------------------------------------------------


def without_id(config):
    config.run_id = ""
    return config


def test_from_dict_is_set_dotted_or_nested_over_the_environments_preset():
    dotted = hotprune.Config.from_dict({"env_id": "CartPole-v1", "total_steps": 20000, "pruning.target_sparsity": 0.9,
                                        "ppo.hidden_sizes": [32, 32]})
    nested = hotprune.Config.from_dict({"env_id": "CartPole-v1", "total_steps": 2e4,
                                        "pruning": {"target_sparsity": 0.9}, "ppo": {"hidden_sizes": (32, 32)}})
    cli = load_config(None, ["env_id=CartPole-v1", "total_steps=20000", "pruning.target_sparsity=0.9",
                             "ppo.hidden_sizes=32,32"])
    assert dotted == nested == without_id(cli)
    assert dotted.preset == "CartPole-v1" and dotted.samples_per_epoch == 256 and dotted.epochs == 79
    assert dotted.run_id == "" and hotprune.Config.from_dict({"run_id": "mine"}).run_id == "mine"
    assert hotprune.Config.from_dict() == without_id(load_config(None))
    numpy = hotprune.Config.from_dict({"seed": np.int64(3), "pruning.target_sparsity": np.float32(0.5),
                                       "ppo.hidden_sizes": np.array([8, 8]), "runs_dir": Path("elsewhere")})
    assert (numpy.seed, numpy.pruning.target_sparsity, numpy.ppo.hidden_sizes, numpy.runs_dir) == \
        (3, 0.5, [8, 8], "elsewhere")


@pytest.mark.parametrize("settings, message", [
    ({"pruning.target_sparsity": 1.5}, "pruning.target_sparsity must be in [0, 1), got 1.5"),
    ({"pruning": {"methd": "taylor"}}, "unknown config key pruning.methd"),
    ({"mode": "fast"}, "mode must be one of async|sync, got 'fast'"),
    ({"seed": "one"}, "seed must be int, got 'one'"),
])
def test_a_bad_setting_is_the_line_hotprune_run_prints(capsys, settings, message):
    with pytest.raises(hotprune.ConfigError) as raised:
        hotprune.Config.from_dict(settings)
    assert str(raised.value).startswith(message)
    [(key, value)] = [(k, v) for k, v in _flat(settings).items()]
    code, _, err = run_cli(capsys, "run", "--set", f"{key}={value}")
    assert code == 2 and err.strip() == f"hotprune run: error: {raised.value}"


def _flat(settings: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in settings.items():
        out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v}
    return out


def test_a_value_toml_cannot_hold_is_refused():
    with pytest.raises(hotprune.ConfigError, match=r"^seed must be a number, bool, string or list, got None$"):
        hotprune.Config.from_dict({"seed": None})


def test_from_toml_reads_the_file_as_config_does_and_settings_go_over_it(tmp_path):
    path = tmp_path / "my.toml"
    path.write_text('env_id = "Acrobot-v1"\nseed = 4\n[pruning]\nmethod = "taylor"\n')
    config = hotprune.Config.from_toml(path, {"seed": 5})
    assert config == without_id(load_config(path, ["seed=5"]))
    assert (config.env_id, config.seed, config.pruning.method, config.preset) == ("Acrobot-v1", 5, "taylor",
                                                                                   "Acrobot-v1")
    path.write_text('run_id = "named"\n')
    assert hotprune.Config.from_toml(path).run_id == "named"
    with pytest.raises(hotprune.ConfigError, match="does not exist"):
        hotprune.Config.from_toml(tmp_path / "none.toml")


def test_validate_says_the_first_bad_value_after_a_change():
    config = hotprune.Config.from_dict()
    config.validate()
    config.num_workers = 0
    with pytest.raises(hotprune.ConfigError, match=r"^num_workers must be in \[1, 64\], got 0$"):
        config.validate()


def test_run_refuses_a_bad_config_with_its_line_and_starts_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = hotprune.Config.from_dict({"num_workers": 1})
    config.pruning.target_sparsity = 2.0  # caught here, before any process starts
    with pytest.raises(hotprune.ConfigError, match=r"^pruning.target_sparsity must be in \[0, 1\), got 2.0$"):
        hotprune.run(config)
    config.pruning.target_sparsity, config.env_id, config.preset = 0.5, "NoSuchEnv-v0", "none"
    with pytest.raises(hotprune.ConfigError, match="^env_id 'NoSuchEnv-v0': "):  # refused by `hotprune run`
        hotprune.run(config, background=True)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# --- Policy ---------------------------------------------------------------------------------------


def write_policy(tmp_path: Path, env_id: str, algorithm: str = "ppo", normalize: bool = False):
    """A policy file as the compressor writes it, of a fresh actor (its obs statistics set, if any)."""
    spec = env_spec(env_id)
    torch.manual_seed(0)
    actor = make_actor(spec, [16, 16], normalize, algorithm)
    if normalize:
        actor.obs_norm.set(np.full(spec.obs_dim, 0.5), np.full(spec.obs_dim, 2.0))
    path = tmp_path / "policy.safetensors"
    artifacts.save(path, actor_arrays(actor), env_id=env_id, discrete=spec.discrete, algorithm=algorithm,
                   weight_sparsity=0.0, version=7)
    return path, spec


@pytest.fixture(params=[("CartPole-v1", "ppo", False), ("Pendulum-v1", "ppo", True), ("Pendulum-v1", "sac", True)],
                ids=["discrete", "gaussian-normalized", "sac-squashed"])
def policy_file(request, tmp_path):
    return write_policy(tmp_path, *request.param)


def test_predict_takes_one_observation_or_a_batch_and_to_torch_computes_the_same_actions(policy_file):
    path, spec = policy_file
    policy = hotprune.load_policy(path)
    obs = np.random.default_rng(1).normal(scale=3, size=(64, spec.obs_dim)).astype(np.float32)
    batch = policy.predict(obs)
    assert batch.shape == ((64,) if spec.discrete else (64, spec.act_dim))
    one = policy.predict(obs[5])
    assert np.shape(one) == (() if spec.discrete else (spec.act_dim,))
    np.testing.assert_allclose(one, batch[5], rtol=0, atol=1e-6)  # a matrix-vector product rounds otherwise
    assert np.array_equal(policy.predict(obs.astype(np.float64)), batch)  # any numbers, as float32
    with torch.no_grad():
        module = policy.to_torch()
        assert isinstance(module, torch.nn.Module)
        from_torch = module(torch.from_numpy(obs)).numpy()
    if spec.discrete:
        assert np.array_equal(from_torch, batch)
    else:
        np.testing.assert_allclose(from_torch, batch, rtol=0, atol=1e-6)
        assert (batch >= spec.action_low).all() and (batch <= spec.action_high).all()  # clipped to the box
    sampled = policy.predict(obs, deterministic=False)
    assert sampled.shape == batch.shape
    assert not np.array_equal(hotprune.load_policy(path, seed=1).predict(obs, deterministic=False),
                              hotprune.load_policy(path, seed=2).predict(obs, deterministic=False))
    assert (policy.env_id, policy.sparsity, policy.metadata["version"]) == (spec.env_id, 0.0, 7)
    assert policy.observation_space.shape == (spec.obs_dim,)


def test_a_policy_file_holds_what_rebuilds_its_actor_without_the_env(tmp_path):
    """A SAC policy's squashed head needs its action bounds: they come from the metadata, as do its
    activation and observation space; no environment of that id exists."""
    from gymnasium import spaces as gs

    from hotprune.actor_spec import policy_metadata
    from hotprune.envs import spec_of

    spec = spec_of("Nowhere-v0", gs.Box(-1.0, 1.0, (2, 3)), gs.Box(np.float32([-1, 0]), np.float32([3, 0.5])))
    config = hotprune.Config.from_dict({"algorithm": "sac", "env_id": "Pendulum-v1", "actor.activation": "silu"})
    torch.manual_seed(0)
    actor = make_actor(spec, [16, 16], True, "sac", "silu")
    path = tmp_path / "policy.safetensors"
    artifacts.save(path, actor_arrays(actor), **policy_metadata(spec, config), version=3)
    meta = artifacts.load(path)[1]
    assert {k: meta[k] for k in ("activation", "head", "normalize_obs")} == \
        {"activation": "silu", "head": "squashed", "normalize_obs": False}
    assert (meta["action_space"]["low"], meta["action_space"]["high"]) == ([-1.0, 0.0], [3.0, 0.5])
    policy = hotprune.load_policy(path)
    obs = np.random.default_rng(0).uniform(-1, 1, (32, 2, 3)).astype(np.float32)
    actions = policy.predict(obs)
    with torch.no_grad():
        expected = actor.act(torch.from_numpy(obs.reshape(32, 6)), deterministic=True).numpy()
        from_torch = policy.to_torch()(torch.from_numpy(obs.reshape(32, 6))).numpy()
    np.testing.assert_allclose(actions, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(from_torch, expected, rtol=0, atol=1e-6)
    assert actions.shape == (32, 2) and (actions >= [-1, 0]).all() and (actions <= [3, 0.5]).all()
    assert policy.predict(obs[0]).shape == (2,)


@pytest.mark.parametrize("obs, message", [
    (np.zeros(5, np.float32), r"observation shape \(5,\) does not fit CartPole-v1: \(4,\) for one observation, "
                              r"\(n, 4\) for a batch"),
    (np.zeros((2, 3), np.float32), r"observation shape \(2, 3\) does not fit"),
    (np.zeros((1, 2, 4), np.float32), r"observation shape \(1, 2, 4\) does not fit"),
    (np.array(["a", "b", "c", "d"]), r"observations must be numbers \(float32\), got dtype <U1"),
    (np.zeros(4, bool), r"observations must be numbers \(float32\), got dtype bool"),
])
def test_a_wrong_observation_is_one_line(tmp_path, obs, message):
    path, _ = write_policy(tmp_path, "CartPole-v1")
    with pytest.raises(ValueError, match=f"^{message}"):
        hotprune.load_policy(path).predict(obs)


def test_a_file_that_is_not_a_policy_is_one_line(tmp_path):
    with pytest.raises(hotprune.ArtifactError, match="does not exist"):
        hotprune.load_policy(tmp_path)
    with pytest.raises(hotprune.ArtifactError, match=r"masks.safetensors is a masks file .*, not a policy: "):
        hotprune.load_policy(COMPAT_RUN / "masks.safetensors")  # a masks file, with a policy's metadata


# --- files written by an earlier version ----------------------------------------------------------


def test_a_policy_file_of_an_earlier_version_acts_as_it_did(tmp_path):
    expected = json.loads((COMPAT / "expected.json").read_text())
    obs = np.array(expected["observations"], np.float32)
    actions = np.clip(np.array(expected["actions"], np.float32), -2, 2)  # Pendulum's box
    policy = hotprune.load_policy(COMPAT_RUN)
    assert (policy.env_id, policy.metadata["run_id"]) == ("Pendulum-v1", COMPAT_RUN.name)
    np.testing.assert_allclose(policy.predict(obs), actions, rtol=0, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(policy.to_torch()(torch.from_numpy(obs)).numpy(), actions, rtol=0, atol=1e-6)
    result = python(f"""
        import sys
        import numpy as np
        import hotprune
        print(hotprune.load_policy({str(COMPAT_RUN)!r}).predict(np.zeros((2, 3), np.float32)).shape,
              "torch" in sys.modules)
    """, tmp_path)
    assert result.stdout.strip() == "(2, 1) False", result.stderr  # predict needs no torch


@pytest.mark.slow
def test_a_checkpoint_of_an_earlier_version_resumes(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("compat") / "runs" / COMPAT_RUN.name  # short: its socket paths are under it
    shutil.copytree(COMPAT_RUN, run_dir)
    (run_dir / "sock").mkdir(mode=0o700)  # what the run's start made (git keeps no empty directory)
    config = run_dir / "config.toml"  # its 2 epochs are done: one more to resume into
    config.write_text(config.read_text().replace("\nepochs = 2\n", "\nepochs = 3\n"))
    result = subprocess.run([sys.executable, "-m", "hotprune.cli", "run", "--resume", str(run_dir), "--quiet"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    run = runlog.load(run_dir)
    [resumed] = run.events("trainer", "trainer_resumed")
    assert resumed["epoch"] == 2 and resumed["pruned"] > 0  # the checkpoint's epoch and masks
    assert run.events("compressor", "compressor_resumed")[0]["masks"] is True
    assert run.summary["completed"] and run.summary["epochs"] == 3
    assert hotprune.load_policy(run_dir).metadata["epoch"] == 3


# --- running the service --------------------------------------------------------------------------


def docs_examples() -> str:
    return "\n".join(re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S))


def test_the_docs_examples_are_python():
    assert len(re.findall(r"```python\n", DOCS.read_text())) >= 6
    compile(docs_examples(), str(DOCS), "exec")


@pytest.mark.slow
def test_every_example_in_the_docs_runs_as_written_and_leaves_nothing_behind(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("docs")  # short: the grid's socket paths are under it
    (tmp_path / "examples.py").write_text(docs_examples())
    result = subprocess.run([sys.executable, "examples.py"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "=== Summary" in result.stdout  # the blocking run printed the command's console
    runs = [p.resolve() for p in (tmp_path / "runs").iterdir() if not p.is_symlink()]
    assert len(runs) == 2  # the blocking and the background run, each with its own id
    for run_dir in [*runs, *(tmp_path / "logs" / "pruning_presets").glob("*/s1")]:
        assert_left_nothing(run_dir, tmp_path)


@pytest.mark.slow
def test_ctrl_c_in_a_blocking_run_stops_the_run_cleanly_then_raises_keyboard_interrupt(tmp_path):
    script = """
        import hotprune
        try:
            hotprune.run(hotprune.Config.from_dict({"run_id": "interrupted", "num_workers": 1}))
        except KeyboardInterrupt:  # raised once the run has stopped: its supervisor has said so
            print("KeyboardInterrupt after:", hotprune.load_run("runs/interrupted").finished["outcome"])
    """
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=as_from_a_terminal)
    run_dir = tmp_path / "runs" / "interrupted"
    try:
        wait_for(lambda: runlog.Tail(run_dir / "logs").events() and
                 len(runlog.load(run_dir).events("supervisor", "process_started")) == 3,
                 timeout=120, what="the run's processes to start")
        proc.send_signal(signal.SIGINT)  # as a terminal's Ctrl-C, or a notebook's interrupt, reaches Python
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0 and out.splitlines()[-1] == "KeyboardInterrupt after: stopped by SIGINT", out + err
    assert_left_nothing(run_dir, tmp_path)


@pytest.mark.slow
def test_a_background_run_whose_program_is_killed_stops_cleanly(tmp_path):
    script = """
        import time
        import hotprune
        hotprune.run(hotprune.Config.from_dict({"run_id": "orphaned", "num_workers": 1}), background=True)
        print("started", flush=True)
        time.sleep(300)
    """
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=tmp_path, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline() == "started\n"
    finally:
        proc.kill()  # SIGKILL: the program can do nothing; the run's parent-death signal does it
    run_dir = tmp_path / "runs" / "orphaned"
    wait_for(lambda: runlog.load(run_dir).finished, timeout=60, what="the run to finish")
    assert runlog.load(run_dir).finished["outcome"] == "stopped by SIGTERM"
    assert_left_nothing(run_dir, tmp_path)
