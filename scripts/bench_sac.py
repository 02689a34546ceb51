"""SAC's update: milliseconds of training per env step, hotprune's learner against Stable-Baselines3's SAC
and CleanRL's sac_continuous_action.py update, the same algorithm, nets, batch and dimensions.

All at one critic step per env step (utd 1, batch 256, 256-256 ReLU nets, automatic entropy tuning,
tau 0.005) and as many actor steps: hotprune and CleanRL step the actor twice every second critic step
(policy_frequency 2), SB3 once every step. HalfCheetah-v5's dimensions (17 observations, 6 actions in
[-1, 1]); the update never steps the environment, so a replay buffer of random rows stands in for it
(MuJoCo need not be installed), the same rows for every system.

  hotprune        hotprune.learning.sac.Learner.update on an epoch of `--steps` env steps;
  hotprune_pruned the same, both pruned: actor and critics at 90% sparsity, their masks kept by the
                  trainer's own hooks (pruning.targets actor,critic);
  hotprune_compiled  (--compile) the dense one with its critic and actor losses through torch.compile (what
                  the user's `async_prune_compile` variant did), written to benchmarks/sac_speed_compile.*;
  sb3             stable_baselines3.SAC.train(gradient_steps=`--steps`, batch_size=256);
  cleanrl         CleanRL's update loop (sac_continuous_action.py, vwxyzjn/cleanrl commit 004f8a0, the
                  `if global_step > args.learning_starts:` block), written again here on plain
                  nn.Sequential nets: its script needs tyro and a MuJoCo env to start.

One torch thread; the systems alternate within each round (the order rotating), the first round is
discarded; per system the median and spread of its rounds, and per round SB3's time over each system's
(the paired speed-up, which the machine's load drifts less). Before the rounds, the float32 matrix
product the nets are made of (256 x 256 by 256) through MKL (`torch.addmm`: what SB3 and CleanRL run) and
through oneDNN (hotprune.learning.fast_linear: what hotprune runs), in GFLOP/s.

    .venv/bin/python scripts/bench_sac.py [--rounds 7] [--steps 128] [--compile] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import benchkit  # noqa: E402

from hotprune.config import load_config  # noqa: E402
from hotprune.envs import EnvSpec  # noqa: E402
from hotprune.learning import fast_linear  # noqa: E402
from hotprune.learning.chunks import Batch  # noqa: E402
from hotprune.learning.critic_masks import CriticMasks  # noqa: E402
from hotprune.learning.learners import make_learner  # noqa: E402
from hotprune.learning.training_masks import MaskedUpdate, TrainingMasks  # noqa: E402

OBS, ACT, HIDDEN, BATCH, ROWS = 17, 6, 256, 256, 20_000  # HalfCheetah-v5's dimensions


def random_rows(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"obs": rng.standard_normal((ROWS, OBS)).astype(np.float32),
            "actions": rng.uniform(-1, 1, (ROWS, ACT)).astype(np.float32),
            "rewards": rng.standard_normal(ROWS).astype(np.float32),
            "next_obs": rng.standard_normal((ROWS, OBS)).astype(np.float32),
            "terminated": (rng.random(ROWS) < 0.01).astype(np.float32)}


def env_steps(rng: np.random.Generator, n: int) -> Batch:
    """An epoch of n env steps (one env): what hotprune's learner adds to its buffer before its steps."""
    return Batch(obs=rng.standard_normal((n + 1, 1, OBS)).astype(np.float32),
                 actions=rng.uniform(-1, 1, (n, 1, ACT)).astype(np.float32), logprobs=np.zeros((n, 1), np.float32),
                 rewards=rng.standard_normal((n, 1)).astype(np.float32), terminated=np.zeros((n, 1), bool),
                 truncated=np.zeros((n, 1), bool), final_obs=np.zeros((n, 1, OBS), np.float32))


SPARSITY = 0.9  # hotprune_pruned's actor and critics


def hotprune_system(rows: dict[str, np.ndarray], steps: int, pruned: bool = False, compiled: bool = False):
    """hotprune's learner; `pruned`: both pruned, actor and critics (`pruning.targets` actor,critic) at
    SPARSITY, random masks kept by the trainer's own hooks (TrainingMasks for the actor, CriticMasks for the
    critics and their targets), as a both-pruned run's trainer steps them."""
    cfg = load_config(overrides=["algorithm=sac", "env_id=Pendulum-v1", "preset=none", "sac.learning_starts=0",
                                 f"sac.batch_size={BATCH}", f"sac.hidden_sizes={HIDDEN},{HIDDEN}",
                                 "samples_per_epoch=256", "chunk_steps=64", "envs_per_worker=4", "epochs=1000",
                                 "pruning.method=magnitude", "pruning.targets=actor,critic"])
    spec = EnvSpec("HalfCheetah-v5", OBS, ACT, False, (-1.0,) * ACT, (1.0,) * ACT)
    learner = make_learner(cfg, spec, torch.Generator().manual_seed(0))
    learner.buffer.add(rows)
    rng = np.random.default_rng(1)
    hooks, critic_hooks = [], []
    if pruned:
        params = dict(learner.actor.named_parameters())
        weights = [n for n in params if n.endswith("weight")]
        actor_masks = TrainingMasks({n: params[n] for n in weights}, learner.optimizer)
        actor_masks.apply({n: rng.random(tuple(params[n].shape)) >= SPARSITY for n in weights})
        critics = CriticMasks(learner.critics, learner.critic_targets, learner.critic_optimizer, cfg.pruning, 0)
        critics.fix({f"{c}.{n}": rng.random(tuple(p.shape)) >= SPARSITY for c, critic in learner.critics.items()
                     for n, p in critic.named_parameters() if n.endswith("weight")})
        hooks, critic_hooks = [MaskedUpdate(keeping=actor_masks)], [critics.hooks]
    if compiled:  # the losses (forward and backward) through torch.compile; compiling is the first update's time
        learner.critic_loss, learner.actor_loss = torch.compile(learner.critic_loss), torch.compile(learner.actor_loss)
        t0 = time.perf_counter()
        learner.update(env_steps(rng, 4), 1)
        print(f"hotprune_compiled: compiled in {time.perf_counter() - t0:.1f} s", flush=True)
    return lambda: learner.update(env_steps(rng, steps), 1, hooks, critic_hooks)["gradient_steps"]


class Spaces(gym.Env):
    """HalfCheetah-v5's spaces, for SB3 to build its model from; never stepped."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (ACT,), np.float32)


def sb3_system(rows: dict[str, np.ndarray], steps: int):
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import Logger

    model = SAC("MlpPolicy", Spaces(), batch_size=BATCH, buffer_size=ROWS, learning_starts=0, device="cpu",
                policy_kwargs={"net_arch": [HIDDEN, HIDDEN]}, seed=0)
    model.set_logger(Logger(None, []))  # writes nowhere (configure() would make a /tmp/SB3-* folder)
    buffer = model.replay_buffer
    buffer.observations[:, 0] = rows["obs"]
    buffer.next_observations[:, 0] = rows["next_obs"]
    buffer.actions[:, 0] = rows["actions"]
    buffer.rewards[:, 0] = rows["rewards"]
    buffer.dones[:, 0] = rows["terminated"]
    buffer.full = True

    def run() -> int:
        model.train(gradient_steps=steps, batch_size=BATCH)
        return 2 * steps
    return run


def cleanrl_system(rows: dict[str, np.ndarray], steps: int):
    """CleanRL's update (see the module's docstring), its hyperparameters: q_lr 1e-3, policy_lr 3e-4,
    gamma 0.99, tau 0.005, policy_frequency 2, target_network_frequency 1, autotune."""
    torch.manual_seed(0)

    def q_net() -> nn.Module:
        return nn.Sequential(nn.Linear(OBS + ACT, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                             nn.Linear(HIDDEN, 1))

    trunk = nn.Sequential(nn.Linear(OBS, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU())
    heads = nn.Linear(HIDDEN, ACT), nn.Linear(HIDDEN, ACT)  # its fc_mean and fc_logstd
    actor = nn.ModuleList([trunk, *heads])
    qf1, qf2, qf1_target, qf2_target = (q_net() for _ in range(4))
    qf1_target.load_state_dict(qf1.state_dict())
    qf2_target.load_state_dict(qf2.state_dict())
    q_optimizer = torch.optim.Adam([*qf1.parameters(), *qf2.parameters()], lr=1e-3)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=3e-4)
    log_alpha = torch.zeros(1, requires_grad=True)
    a_optimizer = torch.optim.Adam([log_alpha], lr=1e-3)
    target_entropy, state = -float(ACT), {"alpha": 1.0, "step": 0}
    data_rows = {k: torch.from_numpy(v) for k, v in rows.items()}
    generator = torch.Generator().manual_seed(0)

    def get_action(obs):
        h = trunk(obs)
        mean, log_std = heads[0](h), torch.tanh(heads[1](h))
        log_std = -5 + 0.5 * (2 - -5) * (log_std + 1)
        normal = torch.distributions.Normal(mean, log_std.exp())
        x_t = normal.rsample()
        y_t = torch.tanh(x_t)
        log_prob = (normal.log_prob(x_t) - torch.log(1 - y_t.pow(2) + 1e-6)).sum(1, keepdim=True)
        return y_t, log_prob

    def q(net, obs, actions):
        return net(torch.cat([obs, actions], 1))

    def one_step() -> None:
        state["step"] += 1
        index = torch.randint(ROWS, (BATCH,), generator=generator)
        obs, actions, rewards, next_obs, dones = (data_rows[k][index] for k in
                                                  ("obs", "actions", "rewards", "next_obs", "terminated"))
        alpha = state["alpha"]
        with torch.no_grad():
            next_actions, next_log_pi = get_action(next_obs)
            min_next = torch.min(q(qf1_target, next_obs, next_actions),
                                 q(qf2_target, next_obs, next_actions)) - alpha * next_log_pi
            next_q_value = rewards + (1 - dones) * 0.99 * min_next.view(-1)
        qf_loss = F.mse_loss(q(qf1, obs, actions).view(-1), next_q_value) + \
            F.mse_loss(q(qf2, obs, actions).view(-1), next_q_value)
        q_optimizer.zero_grad()
        qf_loss.backward()
        q_optimizer.step()
        if state["step"] % 2 == 0:
            for _ in range(2):
                pi, log_pi = get_action(obs)
                actor_loss = (alpha * log_pi - torch.min(q(qf1, obs, pi), q(qf2, obs, pi))).mean()
                actor_optimizer.zero_grad()
                actor_loss.backward()
                actor_optimizer.step()
                with torch.no_grad():
                    _, log_pi = get_action(obs)
                alpha_loss = (-log_alpha.exp() * (log_pi + target_entropy)).mean()
                a_optimizer.zero_grad()
                alpha_loss.backward()
                a_optimizer.step()
                alpha = state["alpha"] = log_alpha.exp().item()
        for net, target in ((qf1, qf1_target), (qf2, qf2_target)):
            for param, target_param in zip(net.parameters(), target.parameters()):
                target_param.data.copy_(0.005 * param.data + (1 - 0.005) * target_param.data)

    def run() -> int:
        for _ in range(steps):
            one_step()
        return 2 * steps
    return run


def gemm_gflops(repeats: int = 200) -> dict[str, float]:
    """GFLOP/s of the nets' float32 product, 256 x 256 by 256 with a bias, through MKL and through oneDNN."""
    gen = torch.Generator().manual_seed(0)
    x, weight, bias = torch.randn(BATCH, HIDDEN, generator=gen), torch.randn(HIDDEN, HIDDEN, generator=gen), \
        torch.randn(HIDDEN, generator=gen)
    out = {}
    for name, product in (("mkl", lambda: torch.addmm(bias, x, weight.t())),
                          ("onednn", lambda: fast_linear.linear(x, weight, bias))):
        for _ in range(10):
            product()
        t0 = time.process_time()
        for _ in range(repeats):
            product()
        out[name] = 2 * BATCH * HIDDEN * HIDDEN * repeats / (time.process_time() - t0) / 1e9
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds after the discarded first")
    parser.add_argument("--steps", type=int, default=128, help="env steps (critic steps) each system trains per round")
    parser.add_argument("--compile", action="store_true", help="also hotprune_compiled: the losses through "
                        "torch.compile (benchmarks/sac_speed_compile.*)")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 8 env steps: does it run")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps = 2, 8
    benchkit.one_thread()
    rows = random_rows(np.random.default_rng(0))
    makers = {"hotprune": lambda: hotprune_system(rows, args.steps),
              "hotprune_pruned": lambda: hotprune_system(rows, args.steps, pruned=True),
              **({"hotprune_compiled": lambda: hotprune_system(rows, args.steps, compiled=True)}
                 if args.compile else {}),
              "sb3": lambda: sb3_system(rows, args.steps), "cleanrl": lambda: cleanrl_system(rows, args.steps)}
    systems = {name: make() for name, make in makers.items()}
    names = tuple(systems)
    start = benchkit.machine()
    gflops = gemm_gflops()
    clocks = {"cpu": time.process_time, "wall": time.perf_counter}
    per_step = {clock: {name: [] for name in names} for clock in clocks}
    for round_ in range(args.rounds + 1):
        order = names[round_ % len(names):] + names[:round_ % len(names)]
        for name in order:
            t0 = {clock: now() for clock, now in clocks.items()}
            gradient_steps = systems[name]()
            assert gradient_steps == 2 * args.steps, (name, gradient_steps)  # a critic and an actor step each
            for clock, now in clocks.items():
                if round_:
                    per_step[clock][name].append((now() - t0[clock]) * 1e3 / args.steps)
        if round_:
            print(f"round {round_} (cpu ms): " + ", ".join(f"{n} {per_step['cpu'][n][-1]:.2f}" for n in names),
                  flush=True)
    report(args, start, gflops, per_step)


def table(per_step: dict[str, list[float]]) -> tuple[list[str], dict]:
    """The markdown rows of one clock, and each system's summary and paired speed-ups over SB3."""
    sb3 = np.asarray(per_step["sb3"])
    out, rows = {}, []
    for name in per_step:
        s, r = benchkit.summary(per_step[name]), sb3 / np.asarray(per_step[name])
        out[name] = {**s, "sb3_over_this": r.tolist(), "sb3_over_this_median": float(np.median(r))}
        rows.append(f"| {name} | {s['median_ms']:.2f} | {s['min_ms']:.2f} | {s['max_ms']:.2f} | "
                    f"{1e3 / s['median_ms']:.0f} | {np.median(r):.2f} [{r.min():.2f}, {r.max():.2f}] |")
    return rows, out


def report(args, start: dict, gflops: dict[str, float], per_step: dict[str, dict[str, list[float]]]) -> None:
    end = benchkit.machine()
    results = {"machine_start": start, "machine_end": end, "steps_per_round": args.steps, "rounds": args.rounds,
               "gemm_gflops": gflops, "ms_per_env_step": per_step}
    lines = ["# SAC's update: ms of training per env step (lower is better)", "",
             "HalfCheetah-v5's dimensions, 256-256 nets, batch 256, one critic step and one actor step per env "
             f"step, one torch thread; {args.rounds} rounds of {args.steps} env steps per system, alternating "
             f"(scripts/bench_sac.py). Load average at the start {start['loadavg']}, at the end {end['loadavg']} "
             f"on {start['cpus']} CPUs: `cpu` is the process's CPU time (what the update computes, whoever else "
             "holds the cores: the fair measure on a shared machine), `wall` the elapsed time (which the other "
             "processes' share of the cores inflates).", "",
             f"The nets' float32 product (256 x 256 by 256) on this CPU, one thread: MKL {gflops['mkl']:.0f} GFLOP/s "
             f"(what SB3 and CleanRL run), oneDNN {gflops['onednn']:.0f} GFLOP/s (what hotprune runs; "
             "docs/sac_speed.md)."]
    for clock in ("cpu", "wall"):
        rows, results[clock] = table(per_step[clock])
        lines += ["", f"## {clock} time", "",
                  "| system | median ms/env step | min | max | env steps/s (median) "
                  "| speed-up over SB3 in the same round (SB3's time / this one's), median [min, max] |",
                  "|---|---|---|---|---|---|", *rows]
    flag = " --compile" if args.compile else ""
    lines += ["", f"Command: `.venv/bin/python scripts/bench_sac.py --rounds {args.rounds} --steps {args.steps}{flag}`"]
    benchkit.write("sac_speed_compile" if args.compile else "sac_speed", results, lines)


if __name__ == "__main__":
    main()
