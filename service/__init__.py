"""The trainer, compressor, pruning, supervisor, config and logging of hotprune."""
