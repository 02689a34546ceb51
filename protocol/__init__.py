"""Formats only: the message codec and its validation, the weight store's byte layout, endpoint names."""
