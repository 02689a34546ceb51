"""Write tests/data/compat/: files of a short run as today's code writes them, which every later version must
still read (tests/test_api.py: the policy loads and acts as it did; the checkpoint resumes).

A 2-epoch Pendulum-v1 PPO run (continuous actions, observation normalisation, both pruned: every kind
of tensor a policy file and a checkpoint hold), kept: config.toml, checkpoint.safetensors,
policy.safetensors, masks.safetensors; and expected.json, the actions the policy gave then for fixed
observations (deterministic, by the torch actor). Run it again only on purpose: a format change that
breaks reading the kept files breaks users' runs too.

    .venv/bin/python scripts/make_compat_fixture.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from hotprune.runs.artifacts import load_policy

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "compat"
RUN_ID = "pendulum-compat"
SETTINGS = ["env_id=Pendulum-v1", "preset=none", "epochs=2", "num_workers=1", "envs_per_worker=2",
            "chunk_steps=32", "samples_per_epoch=128", "ppo.minibatches=2", "ppo.hidden_sizes=16,16",
            "normalize_obs=true", "pruning.start_epoch=1", "pruning.every=1", f"run_id={RUN_ID}"]
KEPT = ("config.toml", "checkpoint.safetensors", "policy.safetensors", "masks.safetensors")
OBSERVATIONS = 8


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, "-m", "hotprune.cli", "run", "--quiet", *(x for s in SETTINGS for x in ("--set", s))]
        subprocess.run(argv, cwd=tmp, check=True)
        run_dir = Path(tmp) / "runs" / RUN_ID
        shutil.rmtree(OUT, ignore_errors=True)
        (OUT / RUN_ID).mkdir(parents=True)
        for name in KEPT:
            shutil.copy(run_dir / name, OUT / RUN_ID / name)
    actor, _ = load_policy(OUT / RUN_ID)
    obs = np.random.default_rng(0).normal(size=(OBSERVATIONS, 3)).astype(np.float32)
    with torch.no_grad():
        actions = actor.act(torch.from_numpy(obs), deterministic=True).numpy()
    (OUT / "expected.json").write_text(json.dumps({"observations": obs.tolist(), "actions": actions.tolist()}) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
