"""Inference (rollout) workers: hot-swap pruned weights from shared memory between env steps."""
