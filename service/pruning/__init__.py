"""Pruning, numpy only: importance criteria, the mask engine (unstructured and neuron), schedules."""
