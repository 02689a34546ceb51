"""What a run keeps (policy, masks, initial weights, progress.csv) and the commands on it: eval, export."""

from __future__ import annotations

import csv
import json
import os
import re
import struct
import subprocess
import warnings

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

import hotprune as api
from hotprune.roles.process import load_run_config
from hotprune.runs.artifacts import CHECKSUM, RUN_UID, ArtifactError, digest, load, load_policy, save
from hotprune.commands.export import export, load_torch_prune
from hotprune.envs import env_spec
from hotprune.learning.policy import actor_arrays, make_actor
from tests.servicekit import HOTPRUNE, events, hotprune, of, run_cli, settings

pytestmark = pytest.mark.slow
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One short run per structure."""
    out = {}
    for structure in ("weight", "neuron"):
        tmp = tmp_path_factory.mktemp(structure)
        extra = ["pruning.structure=neuron", "pruning.scope=layer"] if structure == "neuron" else ["tensorboard=true"]
        result = hotprune("run", *settings(tmp, structure, "epochs=5", *extra))
        assert result.returncode == 0, result.stderr
        out[structure] = tmp / "runs" / structure
    return out


@pytest.fixture(params=["weight", "neuron"])
def run_dir(request, runs):
    return runs[request.param]


def test_a_run_keeps_its_pruned_policy_masks_initial_weights_and_progress(run_dir):
    for name in ("policy.safetensors", "masks.safetensors", "initial.safetensors", "progress.csv"):
        assert (run_dir / name).is_file(), name
        if name.endswith(".safetensors"):  # safetensors: an 8-byte header length, then a JSON header
            head = (run_dir / name).read_bytes()[:9]
            assert head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] > 0, "not a safetensors file"
    summary = of(events(run_dir, "trainer"), "summary")[0]
    policy, meta = load(run_dir / "policy.safetensors")
    masks, _ = load(run_dir / "masks.safetensors")
    assert meta["final"] is True and meta["env_id"] == "CartPole-v1" and meta["run_id"] == run_dir.name
    assert meta["params_kept"] == summary["pruned_params_kept"]
    assert meta["weight_sparsity"] == pytest.approx(summary["pruned_sparsity"])
    for name, keep in masks.items():
        if policy[name].shape == keep.shape:  # weight structure: pruned weights are exactly +0.0
            assert (policy[name][~keep] == 0).all() and not np.signbit(policy[name][~keep]).any()
        else:  # neuron structure: the policy holds only the kept units
            assert policy[name].size == int(keep.sum())
    initial, initial_meta = load(run_dir / "initial.safetensors")
    assert initial_meta["epoch"] == 0 and (initial["net.0.weight"] != 0).all()  # dense, before any update
    rows = list(csv.DictReader(open(run_dir / "progress.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    steps = [int(r["global_step"]) for r in rows]
    assert steps == list(np.cumsum([int(r["samples"]) for r in rows]))


def test_every_file_a_run_keeps_carries_the_checksum_of_its_tensors_and_the_runs_uid(run_dir):
    uid = load_run_config(run_dir).run_uid
    assert re.fullmatch(r"[0-9a-f]{32}", uid)
    kept = sorted(p.name for p in run_dir.rglob("*.safetensors"))
    assert kept == ["checkpoint.safetensors", "initial.safetensors", "masks.safetensors", "policy.safetensors"]
    for name in kept:
        tensors, meta = load(run_dir / name)
        assert meta[RUN_UID] == uid and meta[CHECKSUM] == digest(tensors) and meta[CHECKSUM].startswith("sha256:")


def test_a_policy_with_a_flipped_bit_or_a_nan_is_refused_and_one_without_a_checksum_is_read_with_a_warning(
        runs, tmp_path, capsys):
    policy = tmp_path / "policy.safetensors"
    data = bytearray((runs["weight"] / "policy.safetensors").read_bytes())
    data[-3] ^= 0x40  # an exponent bit of the last weight: 0.1 -> ~1e19
    policy.write_bytes(bytes(data))
    code, _, err = run_cli(capsys, "eval", str(policy), "--episodes", "1")
    assert code == 2 and err.count("\n") == 1 and "is corrupt" in err, err
    tensors, meta = load(runs["weight"] / "policy.safetensors")
    tensors["net.0.weight"][3, 1] = np.inf
    save(policy, tensors, **meta)
    code, _, err = run_cli(capsys, "eval", str(policy), "--episodes", "1")
    assert code == 2 and err.count("\n") == 1 and "net.0.weight holds non-finite values" in err, err
    tensors, meta = load(runs["weight"] / "policy.safetensors")
    safetensors.numpy.save_file(tensors, str(policy), metadata={k: json.dumps(v) for k, v in meta.items()
                                                                if k != CHECKSUM})  # as written before checksums
    warnings = []
    for _ in range(2):  # warned once per file and process
        code, out, err = run_cli(capsys, "eval", str(policy), "--episodes", "1")
        assert code == 0 and "CartPole-v1: return" in out
        warnings += err.splitlines()
    assert len(warnings) == 1 and "has no checksum" in warnings[0] and "read unverified" in warnings[0]


def test_eval_runs_the_kept_policy_and_reports_its_parameters(run_dir, capsys):
    code, out, err = run_cli(capsys, "eval", str(run_dir), "--episodes", "3", "--deterministic")
    assert code == 0, err
    assert "CartPole-v1: return" in out and "over 3 episode(s) (deterministic actions)" in out
    actor, _ = load_policy(run_dir)
    nonzero = sum(int(torch.count_nonzero(p)) for p in actor.parameters())
    assert f"{nonzero:,} non-zero" in out


def test_torch_prune_export_rebuilds_the_same_policy_with_prune_reparametrisation(run_dir, tmp_path, capsys):
    out = tmp_path / "tp.safetensors"
    code, printed, _ = run_cli(capsys, "export", str(run_dir), "--format", "torch-prune", "--out", str(out))
    assert code == 0 and printed.strip() == str(out)
    exported = load_torch_prune(out)
    assert hasattr(exported.net[0], "weight_orig") and hasattr(exported.net[0], "weight_mask")
    assert exported.net[2].weight.shape == (64, 64)  # dense shapes, whatever the structure
    kept, _ = load_policy(run_dir)
    obs = torch.randn(200, 4)
    with torch.no_grad():
        assert torch.allclose(exported.net(obs), kept.net(obs), atol=1e-6)
    state = safetensors.torch.load_file(str(out))
    assert {"net.0.weight_orig", "net.0.weight_mask"} <= set(state)


def test_state_dict_export_loads_into_an_actor_of_its_shapes(run_dir):
    result = hotprune("export", str(run_dir), "--format", "state_dict")
    path = result.stdout.strip()
    assert result.returncode == 0 and path.endswith("export_state_dict.safetensors")
    kept, _ = load_policy(run_dir)
    kept.load_state_dict(safetensors.torch.load_file(path))  # same names and shapes


def exported_actions(path, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """The actions of `hotprune export`'s ONNX and TorchScript files of `path` (a run directory) for a
    batch, run with onnxruntime and torch.jit.load, and the ONNX file's initializers' shapes by name."""
    import onnx
    import onnxruntime

    files = {fmt: export(path, fmt) for fmt in ("onnx", "torchscript")}
    assert files == {"onnx": path / "export_onnx.onnx", "torchscript": path / "export_torchscript.pt"}
    session = onnxruntime.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
    (by_onnx,) = session.run(["action"], {"obs": obs})
    extra = {"hotprune.json": ""}
    with warnings.catch_warnings():  # torch deprecates TorchScript (for torch.export); the file is what users load
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(files["torchscript"]), _extra_files=extra)
    with torch.no_grad():
        by_torchscript = module(torch.from_numpy(obs)).numpy()
    model = onnx.load(str(files["onnx"]))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["hotprune"]) == json.loads(extra["hotprune.json"]) == load(path / "policy.safetensors")[1]
    return by_onnx, by_torchscript, {t.name: tuple(t.dims) for t in model.graph.initializer}


def test_onnx_and_torchscript_exports_act_as_the_policy_in_its_kept_shapes(run_dir):
    obs = np.random.default_rng(0).normal(size=(256, 4)).astype(np.float32)
    by_onnx, by_torchscript, shapes = exported_actions(run_dir, obs)
    expected = api.load_policy(run_dir).predict(obs)
    assert by_onnx.dtype == by_torchscript.dtype == np.int64
    assert (by_onnx == expected).all() and (by_torchscript == expected).all()
    policy, _ = load(run_dir / "policy.safetensors")
    assert shapes == {f"actor.{n}": a.shape for n, a in policy.items()}  # the kept shapes: smaller with neuron
    assert (shapes["actor.net.0.weight"][0] < 64) == (run_dir.name == "neuron")


@pytest.mark.parametrize("algorithm", ["ppo", "sac"])
def test_continuous_actors_export_their_deterministic_action_with_normalisation(algorithm, tmp_path):
    """PPO's Gaussian (its mean) and SAC's tanh-squashed actor (tanh of its mean in the box), both with
    observation statistics, held to predict within 1e-5; large observations reach the box's bounds."""
    spec = env_spec("Pendulum-v1")
    torch.manual_seed(0)
    actor = make_actor(spec, [32, 16], normalize_obs=True, algorithm=algorithm)
    actor.obs_norm.set(np.array([0.5, -0.5, 1.0]), np.array([0.2, 3.0, 4.0]))
    if algorithm == "ppo":  # its output layer starts tiny (gain 0.01): some means beyond the box, to be clipped
        with torch.no_grad():
            actor.net[-1].weight.mul_(300)
    save(tmp_path / "policy.safetensors", actor_arrays(actor), env_id="Pendulum-v1", discrete=False,
         algorithm=algorithm, version=1)
    obs = (np.random.default_rng(1).normal(size=(256, 3)) * [1, 1, 30]).astype(np.float32)
    by_onnx, by_torchscript, _ = exported_actions(tmp_path, obs)
    expected = api.load_policy(tmp_path).predict(obs)
    assert by_onnx.shape == by_torchscript.shape == expected.shape == (256, 1)
    np.testing.assert_allclose(by_onnx, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(by_torchscript, expected, rtol=0, atol=1e-5)
    assert (np.abs(expected) == 2).any() if algorithm == "ppo" else (np.abs(expected) < 2).all()  # clipped; squashed


def test_a_graph_export_that_cannot_be_made_says_one_line_and_writes_nothing(runs, tmp_path, capsys):
    run_dir = runs["weight"]
    shadow = tmp_path / "shadow" / "onnx"  # onnx not installed, as without the extra
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named onnx')\n")
    env = {**os.environ, "PYTHONPATH": str(shadow.parent)}
    out = tmp_path / "policy.onnx"
    result = subprocess.run([HOTPRUNE, "export", str(run_dir), "--format", "onnx", "--out", str(out)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr == \
        "hotprune export: error: --format onnx needs the onnx extra: pip install -e '.[onnx]'\n"
    assert not out.exists()
    other = tmp_path / "other"  # a policy of an environment this machine does not have, from before policy
    other.mkdir()               # files described their spaces: the environment must be made to read them
    tensors, meta = load(run_dir / "policy.safetensors")
    old = {k: v for k, v in meta.items() if k not in ("observation_space", "action_space")}
    save(other / "policy.safetensors", tensors, **{**old, "env_id": "NoSuchEnv-v0"})
    for fmt in ("onnx", "torchscript"):
        code, _, err = run_cli(capsys, "export", str(other), "--format", fmt)
        assert code == 2 and err.count("\n") == 1 and "env_id 'NoSuchEnv-v0'" in err, err
    assert sorted(p.name for p in other.iterdir()) == ["policy.safetensors"]
    assert not [p for p in [*run_dir.iterdir(), *tmp_path.iterdir()] if p.name.endswith(".tmp")]


def test_bad_inputs_are_one_line_errors(runs, tmp_path, capsys):
    run_dir = runs["weight"]
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    cases = [
        (["eval", str(garbage)], "is not a hotprune tensor file"),
        (["eval", str(tmp_path / "missing.safetensors")], "does not exist"),
        (["eval", str(run_dir), "--episodes", "0"], "--episodes must be in"),
        (["export", str(run_dir), "--format", "tflite"], "--format must be one of"),
        (["export", str(tmp_path)], "does not exist"),
        (["eval", str(run_dir), "--env", "Pendulum-v1"], "is a policy for CartPole-v1, not Pendulum-v1"),
        (["eval", str(run_dir / "masks.safetensors")], "masks.safetensors is a masks file (True: a weight kept), "
                                                        "not a policy: pass a run directory or its policy.safetensors"),
        (["eval", str(run_dir / "checkpoint.safetensors")], "checkpoint.safetensors is a trainer checkpoint"),
        (["eval", str(run_dir), "--seed", "-1"], "--seed must be >= 0"),
        (["export", str(run_dir), "--out", str(tmp_path)], "is a directory"),
        (["export", str(run_dir), "--out", str(tmp_path / "no" / "such" / "dir.safetensors")], "cannot write"),
    ]
    for args, message in cases:  # in this process: a `hotprune` each would import torch again, seconds
        code, out, err = run_cli(capsys, *args)
        assert code == 2, (args, out, err)
        assert err.count("\n") == 1 and message in err, (args, err)
    # and once as the installed command: its whole process, start-up included, says one line and exits 2
    args, message = cases[0]
    result = hotprune(*args)
    assert result.returncode == 2, (args, result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and message in result.stderr, (args, result.stderr)
    with pytest.raises(ArtifactError, match="is a policy for CartPole-v1, not Pendulum-v1"):
        load_policy(run_dir, env_id="Pendulum-v1")
    _, meta = load(run_dir / "policy.safetensors")
    json.dumps(meta)  # plain JSON metadata, no objects


def test_tensorboard_event_files_hold_cleanrl_and_pruning_tags_against_env_steps(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = runs["weight"]
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"charts/episodic_return", "charts/SPS", "losses/policy_loss", "losses/approx_kl",
            "losses/explained_variance", "sparsity/training", "sparsity/inference", "sparsity/net.0.weight",
            "sparsity/net.2.weight", "async/policy_lag"} <= tags
    rows = list(csv.DictReader(open(run_dir / "progress.csv")))
    logged = [(e.step, e.value) for e in acc.Scalars("sparsity/training")]
    assert logged == [(int(r["global_step"]), pytest.approx(float(r["training_sparsity"]), abs=1e-6)) for r in rows]
    assert not (runs["neuron"] / "tensorboard").exists()  # only when asked for


def test_eval_records_the_first_episode_as_a_video(runs, tmp_path):
    out = tmp_path / "episode.mp4"
    result = hotprune("eval", str(runs["weight"]), "--episodes", "2", "--video", str(out))
    assert result.returncode == 0, result.stderr
    frames = int(result.stdout.split("video of the first episode (")[1].split(" frames")[0])
    assert frames >= 10 and out.read_bytes()[4:8] == b"ftyp"  # an mp4 container
    assert "WARNING" not in result.stderr
