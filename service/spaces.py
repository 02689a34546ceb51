"""Observation spaces as the policy sees them: one flat float32 vector per observation.

`flatten(space, obs)` is `gymnasium.spaces.flatten` over a batch: a `Box` of any shape (or
`MultiBinary`) is its values in row-major order, a `Discrete` a one-hot of n, a `MultiDiscrete` the
one-hots of its components side by side, a `Tuple` or `Dict` its parts' in the space's order
(gymnasium's `Dict` sorts its keys); then float32. It is the one flattening of a run: the workers
apply it to what their vector env returns (so trajectories, the trainer's critic and the replay
buffer see flat float32 only: the wire format), and `hotprune eval` and `hotprune.load_policy(...)
.predict` to what they are given. tests/test_envs.py holds it to gymnasium's, row by row.

Image observations (`image_shape`: a uint8 Box of three dimensions, channels first, as
hotprune.envs makes MinAtar's and Atari's) are the exception: they keep their dtype, uint8 rows of
C*H*W in channel-major order (4x fewer bytes than float32 in every trajectory chunk); the CNN
reshapes and scales them itself (hotprune.learning.policy).

`describe(space)` is the space as JSON (a policy file's metadata keeps it, so a policy is run without
its environment) and `from_description` builds it back. Spaces that do not flatten to a fixed size
(Text, Graph, Sequence, OneOf) are refused with one line (`SpaceError`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gymnasium import spaces



class SpaceError(ValueError):
    """An observation space hotprune cannot flatten."""


def check(space: spaces.Space) -> int:
    """The flat size of `space`; SpaceError for spaces that do not flatten."""
    if isinstance(space, spaces.Box):
        return math.prod(space.shape)
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.MultiBinary):
        return math.prod(space.shape)
    if isinstance(space, spaces.MultiDiscrete):
        return int(space.nvec.sum())
    if isinstance(space, (spaces.Tuple, spaces.Dict)):
        parts = space.spaces.values() if isinstance(space, spaces.Dict) else space.spaces
        if any(image_shape(s) is not None for s in parts):
            raise SpaceError(f"an image observation must be the whole observation, not a part of {space}")
        return sum(check(s) for s in parts)
    raise SpaceError(f"observations must be Box, Discrete, MultiBinary, MultiDiscrete, or a Dict or Tuple of them, "
                     f"got {space}")


def image_shape(space: spaces.Space) -> tuple[int, int, int] | None:
    """(C, H, W) of an image observation space (a uint8 Box of three dimensions, channels first), else None."""
    if isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3:
        return tuple(int(n) for n in space.shape)
    return None


def flatten(space: spaces.Space, obs: Any, batched: bool = True) -> np.ndarray:
    """float32 [n, flat size] (an image: uint8 [n, C*H*W]): a batch of observations of `space` (each
    array with a leading batch axis, as a gymnasium vector env returns them), or with
    `batched=False` one observation (n = 1)."""
    if isinstance(space, spaces.Tuple):
        return np.concatenate([flatten(s, o, batched) for s, o in zip(space.spaces, obs)], axis=1)
    if isinstance(space, spaces.Dict):
        return np.concatenate([flatten(s, obs[k], batched) for k, s in space.spaces.items()], axis=1)
    array = np.asarray(obs)
    if not batched:
        array = array[None]
    n = len(array)
    if isinstance(space, spaces.Discrete):
        return _one_hot(array.reshape(n, 1) - space.start, np.array([space.n]))
    if isinstance(space, spaces.MultiDiscrete):
        return _one_hot(array.reshape(n, -1) - space.start.reshape(-1), space.nvec.reshape(-1))
    if image_shape(space) is not None:
        return np.ascontiguousarray(array.reshape(n, -1), np.uint8)
    return array.reshape(n, -1).astype(np.float32, copy=False)  # Box, MultiBinary


def _one_hot(index: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """index [n, k] into k one-hots of `sizes`, side by side: [n, sum(sizes)]."""
    if index.dtype.kind not in "iu":
        raise ValueError(f"discrete observations must be integers, got dtype {index.dtype}")
    if index.size and ((index < 0) | (index >= sizes)).any():
        raise ValueError(f"a discrete observation outside its space's {sizes.tolist()} values")
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    out = np.zeros((len(index), int(sizes.sum())), np.float32)
    np.put_along_axis(out, index.astype(np.int64) + offsets, 1.0, axis=1)
    return out


def is_batch(space: spaces.Space, obs: Any) -> bool:
    """Whether `obs` is a batch of observations of `space` (its first leaf has one axis more than the
    leaf's space) rather than one; ValueError with one line if it is neither."""
    while isinstance(space, (spaces.Tuple, spaces.Dict)):
        first = next(iter(space.spaces)) if isinstance(space, spaces.Dict) else 0
        try:
            obs, space = obs[first], space.spaces[first]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"an observation of {space} must be a {type(space).__name__} of its parts, "
                             f"got {type(obs).__name__}") from None
    ndim, leaf = np.ndim(obs), len(space.shape)
    if ndim not in (leaf, leaf + 1):
        raise ValueError(f"an observation of {space} has {leaf} dimension(s) (a batch {leaf + 1}), got {ndim}")
    return ndim == leaf + 1


def describe(space: spaces.Space) -> dict[str, Any]:
    """The space as JSON values (Box bounds that are not finite as the strings "inf", "-inf")."""
    if isinstance(space, spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "dtype": space.dtype.name,
                "low": _bound(space.low), "high": _bound(space.high)}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiBinary):
        n = space.n  # as it was given: MultiBinary(3) and MultiBinary([3]) are not equal spaces
        return {"type": "MultiBinary", "n": int(n) if np.ndim(n) == 0 else [int(k) for k in n]}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist(), "start": space.start.tolist()}
    if isinstance(space, spaces.Tuple):
        return {"type": "Tuple", "spaces": [describe(s) for s in space.spaces]}
    if isinstance(space, spaces.Dict):  # pairs: a JSON object's order is not every reader's
        return {"type": "Dict", "spaces": [[k, describe(s)] for k, s in space.spaces.items()]}
    raise SpaceError(f"cannot describe {space}")


def from_description(d: dict[str, Any]) -> spaces.Space:
    """The space `describe` wrote; SpaceError if `d` is not such a description."""
    try:
        kind = d["type"]
        if kind == "Box":
            shape, dtype = tuple(d["shape"]), np.dtype(d["dtype"])
            return spaces.Box(_unbound(d["low"], shape, dtype), _unbound(d["high"], shape, dtype), shape, dtype)
        if kind == "Discrete":
            return spaces.Discrete(d["n"], start=d["start"])
        if kind == "MultiBinary":
            return spaces.MultiBinary(d["n"])
        if kind == "MultiDiscrete":
            return spaces.MultiDiscrete(d["nvec"], start=d["start"])
        if kind == "Tuple":
            return spaces.Tuple([from_description(s) for s in d["spaces"]])
        if kind == "Dict":
            return spaces.Dict([(k, from_description(s)) for k, s in d["spaces"]])
    except (KeyError, TypeError, ValueError, AssertionError) as exc:
        if isinstance(exc, SpaceError):
            raise
        raise SpaceError(f"not an observation space description: {str(exc) or type(exc).__name__}") from None
    raise SpaceError(f"not an observation space description: type {d.get('type')!r}")


def _bound(values: np.ndarray) -> Any:
    """One number if every element is the same (the usual case), else the row-major list."""
    flat = [v if math.isfinite(v) else ("inf" if v > 0 else "-inf") for v in values.reshape(-1).tolist()]
    return flat[0] if flat and all(v == flat[0] for v in flat) else flat


def _unbound(value: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    values = np.array([float(v) for v in (value if isinstance(value, list) else [value])]).astype(dtype)
    return np.broadcast_to(values, shape) if len(values) == 1 else values.reshape(shape)
