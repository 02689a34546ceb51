"""The processes of a run: supervisor, trainer, compressor (the workers are hotprune.workers), and what they
share: start-up, liveness, entry."""
