"""An SB3 PPO policy on CartPole-v1, imported and pruned to 90% by hotprune, keeping its return (docs/import.md,
"Starting from a model trained elsewhere").

Per seed: SB3's PPO with RL Zoo's CartPole hyperparameters (the ones hotprune's preset copies) for 100k
steps; `hotprune import sb3`; a hotprune run from it (init_file: actor and critic) that prunes the actor
to 90% (magnitude, cubic from epoch 2 to PRUNE_END, then fine-tuning at 90%); and, for contrast, the
imported actor pruned to 90% at once by the same criterion with no training. Each policy is evaluated
over 20 episodes with deterministic actions (SB3's model through the imported file, which acts exactly as
its `predict`; tests/test_import_checkpoint.py holds that). Needs the bench extra (stable-baselines3).

    python scripts/bench_sb3_import.py [--seeds 1 2 3] [--root /tmp/hotprune-sb3] [--steps 30000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure

import hotprune
from hotprune.pruning.engine import Pruner, apply_masks
from hotprune.runs import artifacts

EPISODES = 20
SB3_STEPS = 100_000
PRUNE_END = 60  # epochs of 256 samples: 90% is reached at 15,360 steps


def linear(start: float):
    return lambda progress: progress * start  # SB3's progress goes from 1 to 0


def train_sb3(seed: int, path: Path) -> float:
    """RL Zoo's hyperparams/ppo.yml for CartPole-v1; returns the training time in seconds."""
    began = time.perf_counter()
    env = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
                ent_coef=0.0, learning_rate=linear(1e-3), clip_range=linear(0.2), seed=seed, device="cpu")
    model.set_logger(configure(str(path.parent / f"sb3_log_s{seed}"), []))  # not a new /tmp/SB3-* folder
    model.learn(SB3_STEPS)
    model.save(path)
    return time.perf_counter() - began


def pruned_at_once(imported: Path, out: Path) -> Path:
    """The imported actor with 90% of its weights pruned by global magnitude (the compressor's engine), no training."""
    tensors, meta = artifacts.load(imported)
    actor = {n: a for n, a in tensors.items() if not n.startswith("critic.")}
    pruner = Pruner({n: ("float32", a.shape) for n, a in actor.items()}, method="magnitude")
    artifacts.save(out, apply_masks(actor, pruner.compute(actor, 0.9)), **meta)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--root", type=Path, default=Path("/tmp/hotprune-sb3"))
    parser.add_argument("--steps", type=int, default=30_000, help="env steps of the hotprune run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.root.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        zip_path = args.root / f"sb3_ppo_cartpole_s{seed}.zip"
        sb3_s = train_sb3(seed, zip_path) if not zip_path.exists() else float("nan")
        imported = hotprune.import_policy(zip_path, kind="sb3", env_id="CartPole-v1")
        before = hotprune.evaluate(imported.path, episodes=EPISODES, deterministic=True)
        at_once = hotprune.evaluate(pruned_at_once(imported.path, args.root / f"at_once_s{seed}.safetensors"),
                                    episodes=EPISODES, deterministic=True)
        config = hotprune.Config.from_dict({
            **imported.settings, "seed": seed, "total_steps": args.steps, "runs_dir": str(args.root / "runs"),
            "run_id": f"sb3-import-s{seed}", "pruning.target_sparsity": 0.9, "pruning.schedule": "cubic",
            "pruning.start_epoch": 2, "pruning.every": 2, "pruning.end_epoch": PRUNE_END})
        began = time.perf_counter()
        result = hotprune.run(config, quiet=True)
        run_s = time.perf_counter() - began
        after = hotprune.evaluate(result.run_dir, episodes=EPISODES, deterministic=True)
        sparsity = hotprune.load_policy(result.run_dir).sparsity
        rows.append((seed, before["return_mean"], after["return_mean"], after["return_std"], sparsity,
                     at_once["return_mean"]))
        print(f"seed {seed}: SB3 {before['return_mean']:.1f} -> pruned {after['return_mean']:.1f} "
              f"± {after['return_std']:.1f} at {sparsity:.1%} (SB3 training {sb3_s:.0f} s, hotprune run {run_s:.0f} s)",
              flush=True)
    print("\n| seed | SB3 PPO (dense, imported) | hotprune run, pruned to 90% | sparsity | 90% at once, no training |")
    print("| --- | --- | --- | --- | --- |")
    for seed, before, after, std, sparsity, at_once in rows:
        print(f"| {seed} | {before:.1f} | {after:.1f} ± {std:.1f} | {sparsity:.1%} | {at_once:.1f} |")
    means = [statistics.mean(r[i] for r in rows) for i in (1, 2, 5)]
    print(f"| mean | {means[0]:.1f} | {means[1]:.1f} | | {means[2]:.1f} |")


if __name__ == "__main__":
    main()
