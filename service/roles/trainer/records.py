"""The trainer's record of the run: each epoch's line, the epochs a killed trainer never logged, and the summary.

An epoch's record is one dict for three readers: the `epoch` event (docs/events.md; diagnose and the
console read it), a row of progress.csv, and the trackers' scalars (TensorBoard, W&B: hotprune.runs.metrics).
The records are checkpointed with the run's sample counts and largest policy lag, so a resumed trainer's
summary covers the whole run.
"""

from __future__ import annotations

import json
import statistics

from hotprune.config import Config
from hotprune.roles.trainer.collection import Collected, WorkerReports
from hotprune.roles.trainer.state import Tensors, load_counters
from hotprune.runs import artifacts, metrics

SUMMARY_LAST_EPOCHS = 10


class EpochRecords:
    COUNTERS = ("samples_total", "samples_received", "samples_dropped_stale", "max_lag")

    def __init__(self, cfg: Config, reports: WorkerReports, log):
        self.cfg, self.reports, self.log = cfg, reports, log
        self.rows: list[dict] = []  # the epoch records, in order
        self.samples_total = 0  # samples trained on
        self.samples_received = 0  # samples in the valid chunks taken: trained on, or dropped as stale
        self.samples_dropped_stale = 0
        self.max_lag = 0
        self.progress: artifacts.Progress | None = None
        self.trackers: list[metrics.Tracker] = []

    def open(self) -> None:
        """progress.csv, from the rows kept (a resumed trainer drops the epochs it redoes), and the trackers."""
        self.progress = artifacts.Progress(self.cfg.run_dir / artifacts.PROGRESS, self.rows)
        self.trackers = metrics.trackers(self.cfg)

    @property
    def completed(self) -> bool:
        return len(self.rows) == self.cfg.total_epochs

    def add(self, epoch: int, collected: Collected, samples: int, lags: list[int], times: tuple[float, float, float],
            training_sparsity: float, critic_sparsity: float | None, losses: dict) -> dict:
        """Epoch `epoch`'s record: `samples` trained on, of chunks `lags` versions old; `times` = (start,
        collected, trained) in perf_counter seconds."""
        t0, t1, t2 = times
        self.max_lag = max(self.max_lag, *lags)
        self.samples_total += samples
        self.samples_received += collected.received
        self.samples_dropped_stale += collected.dropped_stale
        inference = self.reports.inference
        record = {
            "epoch": epoch,
            "global_step": self.samples_total,  # env samples trained on so far (CleanRL's x axis)
            "epochs": self.cfg.total_epochs,
            "reward_mean": self.reports.reward_mean(),
            "episodes": collected.episodes,
            "samples": samples,
            "samples_received": collected.received,  # = samples + samples_dropped_stale
            "samples_dropped_stale": collected.dropped_stale,
            "rollout_s": t1 - t0,
            "train_s": t2 - t1,
            "epoch_s": t2 - t0,
            "samples_per_s": samples / (t2 - t0),
            "training_sparsity": training_sparsity,
            "inference_sparsity": inference[1],
            "inference_version": inference[0],
            "inference_nonzero_params": inference[2],
            "policy_lag": statistics.fmean(lags),
            **({"critic_sparsity": critic_sparsity} if critic_sparsity is not None else {}),
            **losses,
        }
        self.rows.append(record)
        return record

    def write(self, record: dict, layers: dict[str, dict]) -> None:
        """The record out: progress.csv, the trackers (with each layer's sparsity), then the `epoch` line."""
        self.progress.write(record)
        if self.trackers:
            values = metrics.scalars(record, {n: v["sparsity"] for n, v in layers.items()})
            for tracker in self.trackers:
                tracker.log(values, record["global_step"])
        self.log.info("epoch", **record)

    def log_lost_epochs(self) -> None:
        """The checkpoint of epoch e is written before epoch e's line is logged: a trainer killed in
        between left a checkpoint with an epoch its log lacks. Log those epochs now (`replayed`), so
        the run's history has every epoch exactly once."""
        logged = set()
        path = self.cfg.run_dir / "logs" / "trainer.jsonl"
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if path.exists() else []:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the kill
                continue
            if isinstance(event, dict) and event.get("event") == "epoch":
                logged.add(event.get("epoch"))
        for record in self.rows:
            if record["epoch"] not in logged:
                self.log.info("epoch", **record, replayed=True)

    def close(self) -> None:
        if self.progress:
            self.progress.close()
        for tracker in self.trackers:
            tracker.close()

    def summary(self, *, training_sparsity: float, training: dict, pruned_policy: dict | None,
                compression_failures: int, target_sparsity: float, params_total: int, trainer_starts: int,
                critic_sparsity: float | None, critics_sparsity: dict[str, float]) -> dict:
        """The `summary` event: the records, and the final state of the other parts (`training`: the
        training model's masked_stats; `pruned_policy`: the newest compression the compressor reported;
        `critics_sparsity`: each critic's measured sparsity, pruned or not)."""
        r, c = self.rows, self.cfg

        def mean(key, rows=r):
            values = [row[key] for row in rows if row[key] is not None]
            return statistics.fmean(values) if values else None

        lat = sorted(self.reports.swap_latencies)
        pruned = pruned_policy or {}
        return {
            "mode": c.mode,
            "prune_training_model": c.prune_training_model,
            "method": c.pruning.method,
            "epochs": len(r),
            "completed": self.completed,
            "reward_mean": mean("reward_mean"),
            "last_n": SUMMARY_LAST_EPOCHS,
            "reward_mean_last": mean("reward_mean", r[-SUMMARY_LAST_EPOCHS:]),
            "epoch_s_mean": mean("epoch_s"),
            "rollout_s_mean": mean("rollout_s"),
            "train_s_mean": mean("train_s"),
            "samples_per_s_mean": mean("samples_per_s"),
            "samples_received": self.samples_received,  # = samples_used + samples_dropped_stale
            "samples_used": self.samples_total,
            "samples_dropped_stale": self.samples_dropped_stale,
            "max_policy_lag": c.max_policy_lag if c.mode == "async" else 0,
            "final_training_sparsity": training_sparsity,
            "training_layers": training["layers"],
            "training_params_kept": training["params_kept"],
            "final_inference_sparsity": r[-1]["inference_sparsity"],  # what the workers last reported running
            "inference_nonzero_params": r[-1]["inference_nonzero_params"],
            # the pruned policy the compressor last produced (what the workers run from then on)
            "pruned_sparsity": pruned.get("weight_sparsity"),
            "pruned_params_kept": pruned.get("params_kept"),
            "compression_failures": compression_failures,
            "target_sparsity": target_sparsity,
            "structure": c.pruning.structure,
            "params_total": params_total,
            "swaps": len(lat),
            "swap_latency_ms_median": statistics.median(lat) if lat else None,
            "swap_latency_ms_p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
            "policy_lag_mean": mean("policy_lag"),
            "policy_lag_max": self.max_lag,
            "trainer_starts": trainer_starts,
            "algorithm": c.algorithm,
            **({"final_critic_sparsity": critic_sparsity} if critic_sparsity is not None else {}),
            "critics_sparsity": critics_sparsity,
        }

    def state_dict(self) -> tuple[Tensors, dict]:
        return {}, {"records": self.rows, **{k: getattr(self, k) for k in self.COUNTERS}}

    def load_state_dict(self, tensors: Tensors, meta: dict) -> None:
        load_counters(self, meta, self.COUNTERS)
        self.rows = meta["records"]
