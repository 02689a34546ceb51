"""Lottery tickets (`hotprune lth`): masks from a kept run, files other tools load, a ticket run pruned
from its first epoch, and one-line refusals of unusable files."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from hotprune.runs import artifacts
from hotprune.commands import lth
from hotprune.roles.trainer import lottery
from hotprune.learning import ppo, sac
from hotprune.learning.learners import make_learner
from hotprune.config import ConfigError, load_config, to_toml
from hotprune.envs import env_spec
from hotprune.commands import grids
from hotprune.commands.experiments import _overrides, plan
from hotprune.commands.grids import lth_mask
from hotprune.learning.policy import make_actor, make_critic
from hotprune.pruning.engine import Pruner, allocate, erk_densities
from tests.servicekit import events, hotprune, of, run_cli, settings

HIDDEN = [16, 16]
EPOCHS = 3
CARTPOLE_HIDDEN = 16 * 4 + 16 * 16  # weights of the hidden layers a mask prunes (not the output layer)


def kept_run(tmp_path: Path, env_id: str = "CartPole-v1", hidden=HIDDEN, name: str = "dense") -> Path:
    """A finished dense run's files, as train-dense keeps them, without running the service: its
    config, its weights at epoch 0 and the last, and the transitions of its last epochs."""
    cfg = load_config(None, ["preset=none", f"env_id={env_id}", f"epochs={EPOCHS}", "keep_weights_every=10",
                             "keep_transitions=2", f"ppo.hidden_sizes={','.join(map(str, hidden))}",
                             f"runs_dir={json.dumps(str(tmp_path / 'runs'))}", f"run_id={name}",
                             "samples_per_epoch=256", "chunk_steps=32", "ppo.minibatches=2", "pruning.method=none"])
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "config.toml").write_text(to_toml(cfg))
    spec = env_spec(env_id)
    torch.manual_seed(cfg.seed)
    actor, critic = make_actor(spec, hidden), make_critic(spec, hidden)
    keeper = lottery.Keeper(cfg, actor, critic, {"run_id": cfg.run_id, "env_id": env_id, "hidden_sizes": hidden,
                                             "discrete": spec.discrete})
    keeper.after_epoch(0, None)
    rng = np.random.default_rng(0)
    for epoch in range(1, EPOCHS + 1):
        with torch.no_grad():
            for p in [*actor.parameters(), *critic.parameters()]:
                p.add_(0.1 * torch.randn_like(p))  # "training"
        t, n = 32, 8
        batch = ppo.Batch(obs=rng.normal(size=(t + 1, n, spec.obs_dim)).astype(np.float32),
                          actions=rng.integers(0, spec.act_dim, (t, n)), logprobs=np.full((t, n), -0.69, np.float32),
                          rewards=np.ones((t, n), np.float32), terminated=rng.random((t, n)) < 0.05,
                          truncated=np.zeros((t, n), bool), final_obs=np.zeros((t, n, spec.obs_dim), np.float32))
        keeper.after_epoch(epoch, batch)
    keeper.finish()
    return cfg.run_dir


SAC_HIDDEN = [16, 16]
PENDULUM_Q_HIDDEN = 16 * 4 + 16 * 16  # a Q network's prunable weights (obs 3 + action 1 in; not the output)


def kept_sac_run(tmp_path: Path, name: str = "sac", *overrides: str) -> Path:
    """kept_run's SAC twin (Pendulum): the learner's actor, twin critics and targets, alpha in the
    weights' metadata, and the replay rows of its last epochs."""
    cfg = load_config(None, ["preset=none", "env_id=Pendulum-v1", "algorithm=sac", f"epochs={EPOCHS}",
                             "keep_weights_every=10", "keep_transitions=2", "sac.hidden_sizes=16,16",
                             f"runs_dir={json.dumps(str(tmp_path / 'runs'))}", f"run_id={name}",
                             "samples_per_epoch=256", "chunk_steps=32", "sac.batch_size=64", "pruning.method=none",
                             *overrides])
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "config.toml").write_text(to_toml(cfg))
    spec = env_spec("Pendulum-v1")
    torch.manual_seed(cfg.seed)
    learner = make_learner(cfg, spec, torch.Generator())
    with torch.no_grad():
        learner.log_alpha.fill_(-1.0)
    keeper = lottery.Keeper(cfg, learner.actor, learner.ticket_critic, {"run_id": cfg.run_id, "env_id": cfg.env_id,
                        "hidden_sizes": SAC_HIDDEN, "discrete": False, "algorithm": "sac"}, learner.ticket_meta)
    keeper.after_epoch(0, None)
    rng = np.random.default_rng(0)
    for epoch in range(1, EPOCHS + 1):
        with torch.no_grad():
            for p in learner.ticket_critic.parameters():
                p.add_(0.1 * torch.randn_like(p))
            for p in learner.actor.parameters():
                p.add_(0.1 * torch.randn_like(p))
        t, n = 32, 8
        batch = ppo.Batch(obs=rng.normal(size=(t + 1, n, spec.obs_dim)).astype(np.float32),
                          actions=rng.uniform(-2, 2, (t, n, 1)).astype(np.float32),
                          logprobs=np.zeros((t, n), np.float32), rewards=-rng.random((t, n)).astype(np.float32),
                          terminated=np.zeros((t, n), bool), truncated=rng.random((t, n)) < 0.05,
                          final_obs=rng.normal(size=(t, n, spec.obs_dim)).astype(np.float32))
        keeper.after_epoch(epoch, batch)
    keeper.finish()
    return cfg.run_dir


def hidden_pruned(masks: dict[str, np.ndarray], part: str) -> int:
    return sum(int((~m).sum()) for k, m in masks.items() if k.startswith(part))


@pytest.mark.parametrize("method", ["magnitude", "taylor", "gradient"])
def test_create_mask_prunes_exactly_the_planned_count_of_actor_and_critic_and_writes_safetensors_only(
        tmp_path, capsys, method):
    run = kept_run(tmp_path)
    code, out, err = run_cli(capsys, "lth", "create-mask", str(run), "--method", method, "--sparsity", "0.8",
                             "--targets", "actor,critic", "--num-batches", "4", "--batch-size", "64")
    assert code == 0, err
    assert "actor: 80.0% pruned" in out and "critic: 80.0% pruned" in out and "actor.net.0.weight" in out
    path = run / "masks" / f"{method}-weight-80.safetensors"
    masks = safetensors.numpy.load_file(path)
    assert set(masks) == {"actor.net.0.weight", "actor.net.2.weight", "critic.0.weight", "critic.2.weight"}
    for part in ("actor", "critic"):
        assert hidden_pruned(masks, part) == round(0.8 * CARTPOLE_HIDDEN)
    _, meta = artifacts.load(path)
    assert (meta["method"], meta["sparsity"], meta["env_id"], meta["run_id"]) == (method, 0.8, "CartPole-v1", "dense")
    assert meta["shapes"]["actor.net.0.weight"] == [16, 4]
    from_torch = safetensors.torch.load_file(path)  # what another tool reads, no hotprune needed
    for key, keep in masks.items():
        assert keep.dtype == bool
        assert np.array_equal(from_torch[key].numpy(), keep) and from_torch[key].dtype == torch.bool
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no .pt (a pickle), no .npz
    assert not zipfile.is_zipfile(path)  # a torch.save file is a zip holding a pickle


def test_saliency_masks_are_the_pruning_engines_on_the_gradients_of_ppos_loss_and_differ_from_magnitude(tmp_path):
    run = kept_run(tmp_path)
    cfg = lth.run_config(run)
    weights, _ = lth.tickets.read(lth.weights_path(run, EPOCHS), "weights", cfg, "float32")
    grads = lth.gradient_statistics(cfg, weights, lth.load_transitions(run, cfg), 4, 64, {})
    spec = {n: ("float32", a.shape) for n, a in weights["actor"].items()}
    made = {}
    for method in ("magnitude", "taylor", "gradient"):
        lth.create_mask(run, method, 0.9, num_batches=4, batch_size=64)
        made[method] = safetensors.numpy.load_file(run / "masks" / f"{method}-weight-90.safetensors")
        expected = Pruner(spec, method=method).compute(weights["actor"], 0.9, grads["actor"]).elements
        assert set(made[method]) == {f"actor.{n}" for n in expected}
        assert all(np.array_equal(made[method][f"actor.{n}"], m) for n, m in expected.items())
    for method in ("taylor", "gradient"):
        assert not all(np.array_equal(made[method][k], made["magnitude"][k]) for k in made["magnitude"])


def test_a_mask_file_alone_makes_the_method_fixed_and_fixed_needs_one(tmp_path):
    assert load_config(None, ["pruning.mask_file=m.safetensors"]).pruning.method == "fixed"
    with pytest.raises(ConfigError, match="pruning.mask_file"):
        load_config(None, ["pruning.method=fixed"])
    with pytest.raises(ConfigError, match="pruning.mask_file"):
        load_config(None, ["pruning.method=magnitude", "pruning.mask_file=m.safetensors"])


def test_the_lth_grid_pairs_tickets_with_their_seeds_dense_run_and_reinitialises_with_another_seed(tmp_path):
    variants = {v.name: v for v in grids.builtin("lth").variants}
    base = tmp_path / "pruning_lth"
    ticket = _overrides(variants["ticket_taylor_90"], 2, base / "ticket_taylor_90" / "s2", [])
    assert f'pruning.mask_file="{base}/masks/s2/taylor-90.safetensors"' in ticket
    assert f'init_file="{base}/dense/s2/weights/epoch-0.safetensors"' in ticket and "seed=2" in ticket
    random = _overrides(variants["random_magnitude_80"], 2, base / "random_magnitude_80" / "s2", [])
    offset = variants["random_magnitude_80"].seed_offset
    assert offset > 0 and f"seed={2 + offset}" in random and not any(o.startswith("init_file") for o in random)
    assert {v.stage for v in variants.values() if v.name.startswith(("ticket", "random"))} == {1}
    gradual = load_config(None, list(variants["gradual_90"].overrides))
    assert (gradual.pruning.schedule, gradual.pruning.target_sparsity) == ("cubic", 0.9)
    assert gradual.pruning.targets == ["actor"]


def test_the_sac_lth_grid_prunes_actor_and_critics_in_its_gradual_runs_and_its_tickets_masks(tmp_path):
    grid = plan(grids.builtin("lth_sac"), [1], tmp_path, ["env_id=Pendulum-v1"])  # every run's config is valid
    assert all('algorithm="sac"' in v.overrides for v, _, _ in grid)
    gradual = load_config(None, [*{v.name: v for v, _, _ in grid}["gradual_80"].overrides, "env_id=Pendulum-v1"])
    assert gradual.pruning.targets == ["actor", "critic"] and gradual.pruning.schedule == "cubic"
    base = tmp_path / "pruning_lth_sac"
    (base / "dense").mkdir(parents=True)
    kept_sac_run(tmp_path).rename(base / "dense" / "s1")
    lth.grid_masks(base, [1], ["magnitude"], [0.8], lth_mask, log=lambda line: None)
    masks = safetensors.numpy.load_file(base / "masks" / "s1" / "magnitude-80.safetensors")
    assert {k.split(".")[0] for k in masks} == {"actor", "critic"}
    assert hidden_pruned(masks, "critic.qf1.") == round(0.8 * PENDULUM_Q_HIDDEN)


# --- refusals: one line, exit code 2, nothing written ---------------------------------------------


def bad_mask(tmp_path: Path, fault: str) -> Path:
    """A mask file for the kept run (CartPole, 16-16) with one fault."""
    keep = {"actor.net.0.weight": np.ones((16, 4), bool), "actor.net.2.weight": np.ones((16, 16), bool)}
    meta = {"env_id": "CartPole-v1"}
    if fault == "env":
        meta = {"env_id": "Acrobot-v1"}
    elif fault == "shape":
        keep["actor.net.2.weight"] = np.ones((64, 64), bool)
    elif fault == "dtype":
        keep["actor.net.2.weight"] = np.ones((16, 16), np.float32)
    elif fault == "empty_layer":
        keep["actor.net.0.weight"][:] = False
    elif fault == "unknown":
        keep["critic.9.weight"] = np.ones((1, 16), bool)
    path = tmp_path / f"{fault}.safetensors"
    artifacts.save(path, keep, **meta)
    if fault == "flipped":  # one kept entry of the last tensor turned pruned, after the file was written
        data = bytearray(path.read_bytes())
        data[-1] ^= 0x01
        path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("fault, says", [
    ("missing", "does not exist"), ("env", "is for Acrobot-v1, not for this run's CartPole-v1"),
    ("shape", "has shape (64, 64)"), ("dtype", "is float32, not bool"), ("empty_layer", "keeps nothing"),
    ("unknown", "does not have"), ("flipped", "is corrupt: its tensors do not match the checksum"),
])
def test_a_run_refuses_an_unusable_mask_file_in_one_line_before_writing_anything(tmp_path, capsys, fault, says):
    path = tmp_path / "nowhere.safetensors" if fault == "missing" else bad_mask(tmp_path, fault)
    code, _, err = run_cli(capsys, "run", *settings(tmp_path, "refused", "ppo.hidden_sizes=16,16",
                                                   f"pruning.mask_file={json.dumps(str(path))}"))
    assert code == 2
    assert err.count("\n") == 1 and says in err and err.startswith("hotprune run: error: mask file")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("fault, says", [("env", "Acrobot-v1"), ("shape", "has shape"), ("dtype", "is bool"),
                                         ("nan", "holds non-finite values")])
def test_a_run_refuses_an_unusable_init_file_in_one_line_before_writing_anything(tmp_path, capsys, fault, says):
    run = kept_run(tmp_path, env_id="Acrobot-v1" if fault == "env" else "CartPole-v1",
                   hidden=[8, 8] if fault == "shape" else HIDDEN)
    init = lth.weights_path(run, 0)
    if fault == "dtype":
        init = bad_mask(tmp_path, "none")
    if fault == "nan":
        weights, meta = artifacts.load(init)
        weights["actor.net.2.weight"][1, 2] = np.nan
        artifacts.save(init, weights, **meta)
    code, _, err = run_cli(capsys, "run", *settings(tmp_path, "refused", "ppo.hidden_sizes=16,16",
                                                   f"init_file={json.dumps(str(init))}"))
    assert code == 2 and err.count("\n") == 1 and says in err and "init file" in err
    assert not (tmp_path / "runs" / "refused").exists()


def test_lth_commands_refuse_runs_that_kept_nothing_and_a_random_reinit_that_would_be_the_ticket(tmp_path, capsys):
    run = kept_run(tmp_path)
    lth.weights_path(run, EPOCHS).unlink()
    lth.weights_path(run, 0).unlink()
    (run / lth.TRANSITIONS).unlink()
    code, _, err = run_cli(capsys, "lth", "create-mask", str(run), "--method", "magnitude", "--sparsity", "0.8")
    assert code == 2 and "kept no weights" in err and err.count("\n") == 1
    fresh = kept_run(tmp_path, name="fresh")
    (fresh / lth.TRANSITIONS).unlink()
    code, _, err = run_cli(capsys, "lth", "create-mask", str(fresh), "--method", "taylor", "--sparsity", "0.8")
    assert code == 2 and "kept no transitions" in err
    code, _, err = run_cli(capsys, "lth", "create-mask", str(fresh), "--method", "magnitude", "--sparsity", "1.5")
    assert code == 2 and "--sparsity must be in (0, 1)" in err
    assert not (fresh / "masks").exists() and not (run / "masks").exists()
    mask = bad_mask(tmp_path, "none")
    code, _, err = run_cli(capsys, "lth", "train-ticket", str(fresh), "--mask", str(mask), "--rewind", "epoch:7")
    assert code == 2 and "kept no weights of epoch 7 (kept epochs: 0, 3)" in err
    code, _, err = run_cli(capsys, "lth", "train-ticket", str(fresh), "--mask", str(mask), "--rewind", "random")
    assert code == 2 and "give another --seed" in err
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["dense", "fresh"]


# --- a ticket, through the real service ----------------------------------------------------------


@pytest.mark.slow
def test_a_ticket_runs_at_the_masks_sparsity_from_its_first_epoch_and_its_pruned_weights_end_exactly_zero(tmp_path):
    small = ["epochs=4", "ppo.hidden_sizes=16,16"]
    dense = hotprune("lth", "train-dense", *settings(tmp_path, "dense", *small, "keep_weights_every=2"))
    assert dense.returncode == 0, dense.stderr
    run = tmp_path / "runs" / "dense"
    assert sorted(p.name for p in (run / "weights").iterdir()) == [f"epoch-{k}.safetensors" for k in (0, 2, 4)]
    made = hotprune("lth", "create-mask", str(run), "--method", "taylor", "--sparsity", "0.75",
                    "--targets", "actor,critic")
    assert made.returncode == 0, made.stderr
    mask_path = run / "masks" / "taylor-weight-75.safetensors"
    masks = safetensors.numpy.load_file(mask_path)
    ticket = hotprune("lth", "train-ticket", str(run), "--mask", str(mask_path), "--set", "run_id=ticket")
    assert ticket.returncode == 0, ticket.stderr
    ticket_dir = tmp_path / "runs" / "ticket"
    sparsity = round(0.75 * CARTPOLE_HIDDEN) / CARTPOLE_HIDDEN
    first = of(events(ticket_dir, "trainer"), "epoch")[0]
    assert first["epoch"] == 1
    assert first["training_sparsity"] == pytest.approx(sparsity)
    assert first["inference_sparsity"] == pytest.approx(sparsity)
    line = next(x for x in ticket.stdout.splitlines() if x.startswith("epoch    1/4 |"))
    assert f"sparsity train {sparsity:.1%} infer {sparsity:.1%}" in line
    final, _ = artifacts.load(ticket_dir / artifacts.CHECKPOINT)
    policy, _ = artifacts.load(ticket_dir / artifacts.POLICY)
    rewound, _ = artifacts.load(lth.weights_path(run, 0))
    initial, _ = artifacts.load(ticket_dir / artifacts.INITIAL)  # the ticket's weights before its first update
    for key, keep in masks.items():
        part, name = key.split(".", 1)
        assert np.all(final[key][~keep] == 0) and np.all(np.signbit(final[key][~keep]) == 0)  # +0.0
        assert np.count_nonzero(final[key][keep]) == keep.sum()  # the zeros are exactly the mask's
        if part == "actor":
            assert np.all(policy[name][~keep] == 0)
            assert np.array_equal(initial[name][keep], rewound[key][keep]) and np.all(initial[name][~keep] == 0)


def test_neuron_masks_remove_whole_units_of_each_layer_with_their_biases(tmp_path, capsys):
    run = kept_run(tmp_path)
    code, _, err = run_cli(capsys, "lth", "create-mask", str(run), "--method", "magnitude", "--sparsity", "0.5",
                           "--structure", "neuron", "--scope", "layer")
    assert code == 0, err
    masks = safetensors.numpy.load_file(run / "masks" / "magnitude-neuron-50.safetensors")
    for layer in ("net.0", "net.2"):
        units = masks[f"actor.{layer}.bias"]
        assert units.sum() == 8 and np.array_equal(masks[f"actor.{layer}.weight"].any(axis=1), units)
    assert np.array_equal(masks["actor.net.4.weight"].any(axis=0), masks["actor.net.2.bias"])


def test_files_without_a_part_prefix_are_the_actors_and_the_critic_table_is_torchs(tmp_path):
    cfg = load_config(None, ["ppo.hidden_sizes=16,16"])
    keep = {"net.0.weight": np.ones((16, 4), bool)}  # a run's own masks.safetensors names the actor's tensors so
    artifacts.save(tmp_path / "masks.safetensors", keep, env_id="CartPole-v1")
    parts, _ = lth.tickets.read(tmp_path / "masks.safetensors", "mask file", cfg, "bool")
    assert set(parts["actor"]) == {"net.0.weight"} and parts["critic"] == {}
    critic = make_critic(env_spec("CartPole-v1"), [16, 16])
    assert lth.tickets.model_shapes(cfg)["critic"] == {n: tuple(t.shape) for n, t in critic.state_dict().items()}
    normalized = load_config(None, ["ppo.hidden_sizes=16,16", "normalize_obs=true"])
    actor = make_actor(env_spec("CartPole-v1"), [16, 16], True)
    critic = make_critic(env_spec("CartPole-v1"), [16, 16], actor.obs_norm)
    assert lth.tickets.model_shapes(normalized)["critic"] == {n: tuple(t.shape)
                                                                  for n, t in critic.state_dict().items()}
    for normalize in ("false", "true"):  # SAC's: twin critics and their targets, as the learner holds them
        cfg = load_config(None, ["env_id=Pendulum-v1", "algorithm=sac", "sac.hidden_sizes=16,16",
                                 f"normalize_obs={normalize}"])
        learner = make_learner(cfg, env_spec("Pendulum-v1"), torch.Generator())
        shapes = lth.tickets.model_shapes(cfg)
        assert shapes["critic"] == {n: tuple(t.shape) for n, t in learner.ticket_critic.state_dict().items()}
        assert shapes["actor"] == {n: tuple(t.shape) for n, t in learner.actor.state_dict().items()}


# --- SAC: actor and twin critics ------------------------------------------------------------------


def test_sac_masks_rank_each_twin_critic_on_its_own_and_never_name_the_targets(tmp_path, capsys):
    run = kept_sac_run(tmp_path)
    weights, meta = artifacts.load(lth.weights_path(run, EPOCHS))
    assert meta["alpha"] == pytest.approx(np.exp(-1.0)) and meta["algorithm"] == "sac"
    assert {k.split(".")[1] for k in weights if k.startswith("critic.")} == {"qf1", "qf2", "qf1_target", "qf2_target"}
    code, out, err = run_cli(capsys, "lth", "create-mask", str(run), "--method", "taylor", "--sparsity", "0.75",
                             "--targets", "actor,critic", "--num-batches", "3", "--batch-size", "64")
    assert code == 0, err
    assert "critic.qf1: 75.0% pruned" in out and "critic.qf2: 75.0% pruned" in out
    masks = safetensors.numpy.load_file(run / "masks" / "taylor-weight-75.safetensors")
    assert set(masks) == {f"{p}.net.{i}.weight" for p in ("actor", "critic.qf1", "critic.qf2") for i in (0, 2)}
    shapes = {f"net.{i}.weight": masks[f"critic.qf1.net.{i}.weight"].shape for i in (0, 2)}
    erk = allocate({n: int(np.prod(s)) for n, s in shapes.items()}, erk_densities(shapes, 0.75),
                   round(0.75 * PENDULUM_Q_HIDDEN))
    for critic in ("qf1", "qf2"):  # each exactly at the sparsity: ranked on its own, not over both
        assert hidden_pruned(masks, f"critic.{critic}.") == round(0.75 * PENDULUM_Q_HIDDEN)
        # each layer at its ERK share, as the trainer prunes its critics (pruning.critic_distribution)
        assert {n: int((~masks[f"critic.{critic}.{n}"]).sum()) for n in shapes} == erk
    assert not all(np.array_equal(masks[f"critic.qf1.net.{i}.weight"], masks[f"critic.qf2.net.{i}.weight"])
                   for i in (0, 2))


@pytest.mark.parametrize("minimum", [0, 1])
def test_masks_that_cut_off_an_input_say_so_and_by_default_no_mask_cuts_the_critics_action(tmp_path, capsys, minimum):
    run = kept_sac_run(tmp_path, "sac", f"pruning.min_weights_per_input={minimum}", "pruning.critic_distribution=actor")
    weights, meta = artifacts.load(lth.weights_path(run, EPOCHS))
    weights["critic.qf1.net.0.weight"][:, 3] *= 1e-4  # the action's weights: the lightest of qf1's
    artifacts.save(lth.weights_path(run, EPOCHS), weights, **meta)
    code, out, err = run_cli(capsys, "lth", "create-mask", str(run), "--method", "magnitude", "--sparsity", "0.5",
                             "--targets", "actor,critic")
    assert code == 0, err
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    masks, mask_meta = artifacts.load(run / "masks" / "magnitude-weight-50.safetensors")
    assert masks["critic.qf1.net.0.weight"][:, 3].sum() == minimum  # the minimum, no more: the lightest weights
    assert hidden_pruned(masks, "critic.qf1.") == round(0.5 * PENDULUM_Q_HIDDEN)  # the budget moved, not lost
    if minimum:
        assert warnings == [] and mask_meta["inputs_cut"] == {}
        return
    assert len(warnings) == 1 and "critic.qf1 has every weight of input 3 pruned (action 0)" in warnings[0]
    assert mask_meta["inputs_cut"] == {"critic.qf1": [3]}


def test_sac_saliency_is_the_actor_loss_for_the_actor_and_the_critic_loss_for_the_critics(tmp_path):
    run = kept_sac_run(tmp_path)
    cfg = lth.run_config(run)
    weights, meta = lth.tickets.read(lth.weights_path(run, EPOCHS), "weights", cfg, "float32")
    batches = lth.load_transitions(run, cfg)
    assert len(batches) == 2  # keep_transitions=2: the replay buffer's newest two epochs
    grads = lth.gradient_statistics(cfg, weights, batches, 1, 64, meta)
    # the same minibatch by hand: one backward per loss, at the file's alpha, as SAC's trainer steps them
    torch.manual_seed(cfg.seed)
    learner = make_learner(cfg, env_spec("Pendulum-v1"), torch.Generator())
    learner.actor.load_state_dict({n: torch.from_numpy(a) for n, a in weights["actor"].items()})
    learner.ticket_critic.load_state_dict({n: torch.from_numpy(a) for n, a in weights["critic"].items()})
    rows = {k: np.concatenate([b.transitions()[k] for b in batches]).astype(np.float32) for k in sac.TRANSITION_FIELDS}
    mb = torch.randperm(len(rows["rewards"]), generator=torch.Generator().manual_seed(cfg.seed))[:64]
    data = {k: torch.from_numpy(v)[mb] for k, v in rows.items()}
    learner.actor_loss(data["obs"], meta["alpha"]).backward()
    actor_grad = learner.actor.net[0].weight.grad.abs().numpy().copy()
    learner.ticket_critic.zero_grad()
    learner.critic_loss(data, meta["alpha"])[0].backward()
    critic_grad = learner.qf2.net[2].weight.grad.abs().numpy()
    np.testing.assert_allclose(grads["actor"]["net.0.weight"], actor_grad, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grads["critic"]["qf2.net.2.weight"], critic_grad, rtol=1e-5, atol=1e-7)
    assert not any(n.split(".")[0].endswith("_target") for n in grads["critic"])


def test_a_sac_mask_file_may_not_mask_a_target_and_an_init_file_without_targets_copies_its_critics(tmp_path, capsys):
    run = kept_sac_run(tmp_path)
    keep = {"actor.net.0.weight": np.ones((16, 3), bool), "critic.qf1_target.net.0.weight": np.ones((16, 4), bool)}
    artifacts.save(tmp_path / "target.safetensors", keep, env_id="Pendulum-v1")
    code, _, err = run_cli(capsys, "run", *settings(tmp_path, "refused", "env_id=Pendulum-v1", "algorithm=sac",
                                                   "sac.hidden_sizes=16,16", "pruning.mask_file="
                                                   + json.dumps(str(tmp_path / "target.safetensors"))))
    assert code == 2 and err.count("\n") == 1 and "keeps its critic's mask" in err
    assert not (tmp_path / "runs" / "refused").exists()
    weights, _ = artifacts.load(lth.weights_path(run, EPOCHS))
    twins = {k: a for k, a in weights.items() if not k.split(".")[1].endswith("_target")}
    artifacts.save(tmp_path / "twins.safetensors", twins, env_id="Pendulum-v1")
    cfg = load_config(None, ["env_id=Pendulum-v1", "algorithm=sac", "sac.hidden_sizes=16,16",
                             f"init_file={json.dumps(str(tmp_path / 'twins.safetensors'))}"])
    learner = make_learner(cfg, env_spec("Pendulum-v1"), torch.Generator())
    lottery.load_initial(cfg, learner.actor, learner.ticket_critic)
    for name, value in learner.qf1_target.state_dict().items():
        assert np.array_equal(value.numpy(), weights[f"critic.qf1.{name}"])


@pytest.mark.slow
def test_a_sac_ticket_keeps_actor_critics_and_targets_exactly_zero_from_its_first_epoch(tmp_path):
    # 128 gradient steps an epoch (utd 0.25): the masks' zeros must survive Adam's steps, not many of them
    sac_run = ["env_id=Pendulum-v1", "algorithm=sac", "total_steps=1536", "sac.hidden_sizes=16,16",
               "sac.learning_starts=256", "sac.batch_size=64", "sac.utd=0.25", "keep_weights_every=1",
               "normalize_obs=true"]
    dense = hotprune("lth", "train-dense", *settings(tmp_path, "dense", *sac_run))
    assert dense.returncode == 0, dense.stderr
    run = tmp_path / "runs" / "dense"
    made = hotprune("lth", "create-mask", str(run), "--method", "gradient", "--sparsity", "0.75",
                    "--targets", "actor,critic", "--num-batches", "4")
    assert made.returncode == 0, made.stderr
    mask_path = run / "masks" / "gradient-weight-75.safetensors"
    masks = safetensors.numpy.load_file(mask_path)
    ticket = hotprune("lth", "train-ticket", str(run), "--mask", str(mask_path), "--rewind", "epoch:1",
                      "--set", "run_id=ticket")
    assert ticket.returncode == 0, ticket.stderr
    ticket_dir = tmp_path / "runs" / "ticket"
    first = of(events(ticket_dir, "trainer"), "epoch")[0]
    assert first["epoch"] == 1 and first["critic_sparsity"] == pytest.approx(0.75, abs=1e-3)
    assert first["training_sparsity"] == pytest.approx(0.75, abs=1e-3)
    final, _ = artifacts.load(ticket_dir / artifacts.CHECKPOINT)
    rewound, _ = artifacts.load(lth.weights_path(run, 1))
    initial, _ = artifacts.load(ticket_dir / artifacts.INITIAL)
    assert of(events(ticket_dir, "trainer"), "summary")[0]["final_critic_sparsity"] == pytest.approx(0.75, abs=1e-3)
    for key, keep in masks.items():
        part, name = key.split(".", 1)
        owners = [key] if part == "actor" else [name, name.replace(".", "_target.", 1)]
        for owner in owners:  # the checkpoint's actor, each critic and its target
            assert np.all(final[owner][~keep] == 0) and np.count_nonzero(final[owner][keep]) == keep.sum()
        if part == "actor":  # rewound to epoch 1's weights, the mask's zeros on them
            assert np.array_equal(initial[name][keep], rewound[key][keep])
    # the rewound actor's observation statistics go on from those it was trained with, not from nothing
    _, rewound_meta = artifacts.load(lth.weights_path(run, 1))
    assert rewound_meta["obs_count"] == pytest.approx(512)
    assert final["obs_stats.count"][0] == pytest.approx(512 + 1536)
    assert np.array_equal(initial["obs_norm.mean"], rewound["actor.obs_norm.mean"])


def test_the_lth_command_module_loads_no_torch_so_train_dense_starts_its_console_first():
    """`hotprune lth train-dense` reads TRAIN_DENSE from hotprune.commands.lth before its console starts; torch
    (seconds of start-up) loads only for the steps that run a model (create-mask)."""
    found = subprocess.run([sys.executable, "-c", "import sys, hotprune.commands.lth; print('torch' in sys.modules)"],
                           capture_output=True, text=True, timeout=60)
    assert found.stdout.strip() == "False", found.stderr


def test_create_mask_can_rank_the_critics_as_the_actor_is_ranked_and_refuses_an_unknown_distribution(tmp_path):
    run = kept_sac_run(tmp_path)  # the run's own pruning.critic_distribution: erk
    with pytest.raises(ConfigError, match="--critic-distribution must be one of erk|actor"):
        lth.create_mask(run, "magnitude", 0.9, targets=("actor", "critic"), critic_distribution="uniform")
    assert not (run / "masks").exists()
    path, _ = lth.create_mask(run, "magnitude", 0.9, targets=("actor", "critic"), critic_distribution="actor")
    masks, meta = artifacts.load(path)
    weights, _ = artifacts.load(lth.weights_path(run, EPOCHS))
    spec = {f"net.{i}.weight": ("float32", weights[f"critic.qf1.net.{i}.weight"].shape) for i in (0, 2, 4)}
    expected = Pruner(spec, method="magnitude", min_weights_per_input=1).compute(
        {n: weights[f"critic.qf1.{n}"] for n in spec}, 0.9).elements  # one global threshold, inputs covered
    assert meta["critic_distribution"] == "actor"
    assert all(np.array_equal(masks[f"critic.qf1.{n}"], m) for n, m in expected.items())
