"""The actor as an inference worker runs it: numpy, float32, no torch.

Every process of a run starts at once on a few cores, and `import torch` would cost a worker over a
second of CPU and about 250 MB for a small MLP and a sample; torch's distribution objects were most of
its policy step, too (at batch 4 and 64-64, about 180 of 220 µs). The function is
`hotprune.learning.policy.Actor`'s: linear layers `net.0`, `net.2`, ... with its activation (by default
the algorithm's: tanh for PPO, ReLU for SAC; any of hotprune.algorithms.ACTIVATIONS) between each two,
then Categorical(logits), Normal(mean, exp(log_std)) or SAC's squashed Gaussian (tanh(mean + std * eps)
rescaled to the action box, its log-probability with the tanh correction), log-probabilities summed over
the action dimensions; a policy trained with observation normalisation carries its statistics
(`obs_norm.mean`, `obs_norm.var`) and normalises its input as the torch actor does.
A CNN actor (hotprune.config.ConvNet: image observations, uint8 rows of C*H*W) runs each conv layer as
im2col in three numpy calls: one strided copy of its input's windows into a patch matrix with a row (or
column) of ones, one matmul with the weight as [k * k * C + 1, C_out] (kernel rows in (kh, kw, c) order,
then the bias; the first layer's divided by the frames' scale, so the uint8 frames go in raw; made at
swap time), one in-place ReLU. An activation is laid out for the layer that reads it, so that the copy
moves long contiguous runs: channel-major with the batch innermost, (C, H, W, n), before a stride-1
layer (a window row is then Wo * n consecutive floats: MinAtar's whole 8-wide output row for every
observation), NHWC before a strided one (a window row is k * C consecutive floats: 32 to 128 in the
Nature CNN's first two layers; channel-major would leave runs of n). The last layer writes channel-major
[C_last, Ho * Wo * n], which is the head's input as it lies (a channel-major column per observation, as
torch's flatten): nothing is transposed, and the head's weights stay as they come (a worker swap copies
nothing of the Nature CNN's 1.6M-weight net.0). The buffers, window views and matmul operands are made
once per batch size (those of the last one kept): at batch 1 a Python-level view costs as much as a
small layer's matmul. scripts/bench_conv.py measures it against torch's conv (docs/pixels.md).
tests/test_numpy_policy.py holds its log-probabilities to the torch actor's (1e-5, for every activation)
and its samples to the distribution.
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

from hotprune.actor_spec import NORM_CLIP, NORM_EPS, OBS_NORM, conv_of, conv_weight_names, linear_weight_names
from hotprune.algorithms import LOG_STD_MAX, LOG_STD_MIN, actor_kind
from hotprune.config import ConvNet
from hotprune.envs import EnvSpec

LOG_SQRT_2PI = np.float32(0.5 * np.log(2 * np.pi))
SQUASH_EPS = np.float32(1e-6)  # as hotprune.learning.policy's
LOG_2 = np.float32(np.log(2))
GELU_C = np.float32(np.sqrt(2 / np.pi))
# hotprune.algorithms.ACTIVATIONS, as torch computes them (hotprune.learning.policy); each may
# overwrite its argument, a fresh product. sigmoid(x) = (1 + tanh(x / 2)) / 2: no overflow warnings.
ACTIVATIONS = {
    "tanh": lambda x: np.tanh(x, out=x),
    "relu": lambda x: np.maximum(x, 0, out=x),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
    "silu": lambda x: x * (0.5 + 0.5 * np.tanh(0.5 * x)),
    "gelu": lambda x: 0.5 * x * (1 + np.tanh(GELU_C * (x + np.float32(0.044715) * x * x * x))),
    "leaky_relu": lambda x: np.where(x >= 0, x, np.float32(0.01) * x),
}


class ConvPlan(NamedTuple):
    """The conv layers' buffers for one batch size, made once: a Python-level view (as_strided,
    transpose) costs microseconds per call, as much as a MinAtar layer's matmul at batch 1."""
    frames: np.ndarray  # the first layer's input (float32), indexed (n, C, H, W) as the observations are
    layers: list[tuple[np.ndarray, ...]]  # (windows over the input, the patches they fill, matmul operands, out)
    head_in: np.ndarray  # [C_last * H * W, n]: the last layer's out


class NumpyActor:
    """A policy over the arrays it is given, which it keeps without copying (a worker's store read is
    its own buffer, not written while it runs on it: hotprune.workers.dense). Any layer sizes: a
    neuron-pruned policy comes as smaller matrices, a channel-pruned CNN as fewer channels. `conv`: a
    CNN's strides, input shape and scale (its channels and kernels are read from `tensors`)."""

    def __init__(self, tensors: Mapping[str, np.ndarray], spec: EnvSpec, rng: np.random.Generator,
                 algorithm: str = "ppo", activation: str | None = None, conv: ConvNet | None = None):
        kind = actor_kind(algorithm, spec.discrete, activation)
        self.conv = conv_of(tensors, conv) if conv is not None else None
        self.conv_layers = checked_conv_layers(tensors, spec, self.conv)
        self.layers = [(weight, bias[:, None]) for weight, bias in checked_layers(tensors, spec, algorithm, self.conv)]
        self.plan: ConvPlan | None = None  # the conv buffers for the last batch size (a worker's never changes)
        self.tensors = tensors  # what it runs on, by name
        self.discrete, self.head, self.rng = spec.discrete, kind.head, rng
        self.activation = ACTIVATIONS[kind.activation]
        if self.head == "squashed":
            low, high = np.asarray(spec.action_low, np.float32), np.asarray(spec.action_high, np.float32)
            self.action_scale, self.action_bias = (high - low) / 2, (high + low) / 2
        self.obs_norm = None
        if OBS_NORM[0] in tensors:  # (mean, 1 / std) as columns
            mean, var = (tensors[n] for n in OBS_NORM)
            self.obs_norm = (mean[:, None], (1.0 / np.sqrt(var + np.float32(NORM_EPS)))[:, None])
        if self.head == "gaussian":
            self.log_std = tensors["log_std"]
            self.std = np.exp(self.log_std)

    def act(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A sampled action for each observation of a batch (obs_dim columns), and its log-probability."""
        out = self.forward(obs)
        if self.head == "squashed":
            mean, log_std = self.mean_log_std(out)
            eps = self.rng.standard_normal(mean.shape, np.float32)
            return self.squash(mean + np.exp(log_std) * eps, -0.5 * eps * eps - log_std - LOG_SQRT_2PI)
        if self.discrete:  # Gumbel-max: the argmax of logits + Gumbel noise is a sample of Categorical(logits)
            actions = np.argmax(out + self.rng.gumbel(size=out.shape), axis=-1)
        else:
            actions = out + self.std * self.rng.standard_normal(out.shape, np.float32)
        return actions, self.log_prob_of(out, actions)

    def most_likely(self, obs: np.ndarray) -> np.ndarray:
        """The most likely action for each observation of a batch, as the torch actor's
        `act(obs, deterministic=True)`: the argmax of the logits, the Gaussian's mean, or tanh of SAC's
        mean in the action box."""
        out = self.forward(obs)
        if self.head == "squashed":
            return np.tanh(self.mean_log_std(out)[0]) * self.action_scale + self.action_bias
        return np.argmax(out, axis=-1) if self.discrete else out

    def log_prob(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """log pi(actions | obs), one per observation of the batch."""
        return self.log_prob_of(self.forward(obs), actions)

    def forward(self, obs: np.ndarray) -> np.ndarray:
        """The MLP's output, a row per observation: logits (discrete) or the Gaussian's mean (continuous)."""
        # The batch as columns, weight @ h: at [1024, 1024] and batch 4 numpy's OpenBLAS (one thread)
        # takes half the time of h @ weight.T (scripts/bench_inference.py), about 1.5 µs more on tiny layers.
        h = np.asarray(obs, np.float32).T if self.conv is None else self.features(obs)
        if self.obs_norm is not None:
            mean, inv_std = self.obs_norm
            h = np.clip((h - mean) * inv_std, -NORM_CLIP, NORM_CLIP)
        for weight, bias in self.layers[:-1]:
            h = weight @ h
            h += bias
            h = self.activation(h)
        weight, bias = self.layers[-1]
        return (weight @ h + bias).T

    def features(self, obs: np.ndarray) -> np.ndarray:
        """The conv layers' output as the head's input: a channel-major column per observation
        [C_last * H * W, n] (from uint8 rows of C*H*W). The buffers are reused: valid until the next call."""
        plan = self.plan
        if plan is None or len(plan.frames) != len(obs):
            plan = self.plan = self.conv_plan(len(obs))
        np.copyto(plan.frames, np.asarray(obs).reshape(plan.frames.shape))  # uint8 -> float32
        for windows, patches, left, right, out in plan.layers:
            np.copyto(patches, windows)  # im2col: one strided copy
            np.matmul(left, right, out=out)  # the bias too: the patches' ones
            np.maximum(out, 0, out=out)
        return plan.head_in

    def conv_plan(self, n: int) -> ConvPlan:
        """The buffers, window views and matmul operands of the conv layers for a batch of `n`: a layer's
        input channel-major (C, H, W, n) if its stride is 1, else NHWC; the last layer's output channel-major."""
        channels, h, w = self.conv.in_shape
        channel_major = [stride == 1 for _, _, stride in self.conv_layers] + [True]  # each layer's input, the head's
        x = np.empty((channels, h, w, n) if channel_major[0] else (n, h, w, channels), np.float32)
        frames = x.transpose((3, 0, 1, 2) if channel_major[0] else (0, 3, 1, 2))
        layers = []
        for i, (weight, k, stride) in enumerate(self.conv_layers):
            cm_in, cm_out = channel_major[i], channel_major[i + 1]
            ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
            step = dict(zip("chwn" if cm_in else "nhwc", x.strides))  # bytes along each axis of the input
            at = [(ho, step["h"] * stride), (wo, step["w"] * stride)]  # a window's place, in `out`'s order
            at = at + [(n, step["n"])] if cm_out else [(n, step["n"])] + at
            kernel = [(k, step["h"]), (k, step["w"]), (channels, step["c"])]  # the weight's (kh, kw, c) rows
            shape, strides = zip(*(kernel + at if cm_in else at + kernel))
            windows = as_strided(x, shape, strides, writeable=False)
            if cm_in:  # patches [k * k * C + 1, P]: runs along x (and the batch) land contiguous
                cols = patches = np.empty((k * k * channels + 1, n * ho * wo), np.float32)
                fill = patches[:-1].reshape(shape)
            else:  # patches [P, k * k * C + 1]: runs along (kw, c) land contiguous
                patches = np.empty((n * ho * wo, k * k * channels + 1), np.float32)
                fill, cols = patches[:, :-1].reshape(shape), patches.T
            cols[-1] = 1  # the row the bias meets; `fill` is a view (reshape only splits axes here)
            channels, h, w = weight.shape[1], ho, wo
            if cm_out:  # weight^T @ patches: [C_out, (y, x, observation)]
                out = np.empty((channels, n * h * w), np.float32)
                layers.append((windows, fill, weight.T, cols, out))
                x = out.reshape(channels, h, w, n)
            else:  # patches @ weight: [(observation, y, x), C_out], NHWC
                out = np.empty((n * h * w, channels), np.float32)
                layers.append((windows, fill, cols.T, weight, out))
                x = out.reshape(n, h, w, channels)
        return ConvPlan(frames, layers, out.reshape(-1, n))

    def mean_log_std(self, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The squashed head's Gaussian (before tanh): the output's halves, the log std tanh-rescaled."""
        mean, log_std = np.split(out, 2, axis=-1)
        return mean, np.float32(LOG_STD_MIN) + np.float32(0.5 * (LOG_STD_MAX - LOG_STD_MIN)) * (np.tanh(log_std) + 1)

    def squash(self, x: np.ndarray, gaussian_logp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """tanh(x) * scale + bias, and its log-probability from x's (per dimension) with the tanh
        correction log(scale) + 2 (log 2 - x - softplus(-2x)), as hotprune.learning.policy's."""
        log_det = np.log(self.action_scale) + 2 * (LOG_2 - x - np.logaddexp(np.float32(0), -2 * x))
        return np.tanh(x) * self.action_scale + self.action_bias, (gaussian_logp - log_det).sum(axis=-1)

    def log_prob_of(self, out: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """log pi(actions) under the distribution the MLP's output `out` makes."""
        if self.head == "squashed":  # back through the squash; actions at the bounds are pulled inside
            mean, log_std = self.mean_log_std(out)
            y = np.clip((actions - self.action_bias) / self.action_scale, -1 + SQUASH_EPS, 1 - SQUASH_EPS)
            x = np.arctanh(y)
            z = (x - mean) / np.exp(log_std)
            return self.squash(x, -0.5 * z * z - log_std - LOG_SQRT_2PI)[1]
        if self.discrete:  # logit - logsumexp(logits): logaddexp cannot overflow, one call instead of five
            return out[np.arange(len(actions)), actions] - np.logaddexp.reduce(out, axis=-1)
        z = (actions - out) / self.std
        return (-0.5 * z * z - self.log_std - LOG_SQRT_2PI).sum(axis=-1)


def checked_conv_layers(tensors: Mapping[str, np.ndarray], spec: EnvSpec,
                        conv: ConvNet | None) -> list[tuple[np.ndarray, int, int]]:
    """(weight as [k * k * C_in + 1, C_out]: its kernel in (kh, kw, c) row order, the first one divided
    by the frames' scale, then its bias as the last row; k, stride) of each conv layer, input first; none
    for an MLP. ValueError unless the conv weights are a chain conv.0, conv.2, ... of square 4-D kernels
    from the observations' channels, as many layers as `conv` has strides, each fitting its input."""
    names = conv_weight_names(tensors)
    if conv is None:
        if names:
            raise ValueError(f"conv layers {names} in an actor without image observations")
        return []
    if names != [f"conv.{2 * i}.weight" for i in range(len(conv.strides))]:
        raise ValueError(f"conv layers {names} are not a chain conv.0, conv.2, ... of {len(conv.strides)}")
    if spec.image != conv.in_shape:
        raise ValueError(f"the actor takes observations {conv.in_shape}, {spec.env_id} gives {spec.image}")
    layers, channels = [], conv.in_shape[0]
    for name, stride in zip(names, conv.strides):
        weight, bias = tensors[name], tensors[name.removesuffix("weight") + "bias"]
        if weight.ndim != 4 or weight.shape[1] != channels or weight.shape[2] != weight.shape[3] \
                or bias.shape != weight.shape[:1]:
            raise ValueError(f"{name} {weight.shape} with bias {bias.shape} does not take {channels} channels")
        cols = weight.transpose(2, 3, 1, 0).reshape(-1, len(weight))  # (kh, kw, c) rows: a window's order
        if not layers:  # the frames' scale, folded into the first layer's weights (uint8 frames go in raw)
            cols = cols * np.float32(1 / conv.scale)
        layers.append((np.vstack([cols, bias[None]]), weight.shape[-1], stride))
        channels = weight.shape[0]
    conv.out_hw()  # ValueError if a kernel outgrows its input
    return layers


def checked_layers(tensors: Mapping[str, np.ndarray], spec: EnvSpec, algorithm: str = "ppo",
                   conv: ConvNet | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (weight, bias) of each linear layer, input first; ValueError unless `tensors` are exactly an
    actor of `algorithm` for `spec`: a chain net.0, net.2, ... from obs_dim inputs to act_dim outputs
    (2 * act_dim for a squashed head), 2-D weights, 1-D biases, `log_std` of act_dim iff the head is
    Gaussian, optionally the observation
    statistics (both, of obs_dim, the variances finite and >= 0), all float32; with `conv`, the conv
    layers' tensors too, and the chain starts from their flattened output."""
    weights = linear_weight_names(tensors)
    chain = [f"net.{2 * i}.weight" for i in range(len(weights))]
    if not weights or weights != chain:
        raise ValueError(f"linear layers {weights} are not a chain net.0, net.2, ...")
    kind = actor_kind(algorithm, spec.discrete)
    head = kind.head
    names = {n for w in weights + conv_weight_names(tensors) for n in (w, w.removesuffix("weight") + "bias")}
    if head == "gaussian":
        names.add("log_std")
    if OBS_NORM[0] in tensors or OBS_NORM[1] in tensors:
        names.update(OBS_NORM)
    if set(tensors) != names:
        raise ValueError(f"missing {sorted(names - set(tensors))}, unexpected {sorted(set(tensors) - names)}")
    for name, t in tensors.items():
        if t.dtype != np.float32:
            raise ValueError(f"{name} is {t.dtype}, not float32")
    if OBS_NORM[0] in tensors:
        mean, var = (tensors[n] for n in OBS_NORM)
        if mean.shape != (spec.obs_dim,) or var.shape != (spec.obs_dim,):
            raise ValueError(f"observation statistics {mean.shape}, {var.shape} should be ({spec.obs_dim},)")
        if not (np.isfinite(mean).all() and np.isfinite(var).all() and (var >= 0).all()):
            raise ValueError("observation statistics are not finite, or a variance is negative")
    layers, width = [], spec.obs_dim
    if conv is not None:
        width = conv.channels[-1] * math.prod(conv.out_hw())
    for name in weights:
        weight, bias = tensors[name], tensors[name.removesuffix("weight") + "bias"]
        if weight.ndim != 2 or weight.shape[1] != width or bias.shape != weight.shape[:1]:
            raise ValueError(f"{name} {weight.shape} with bias {bias.shape} does not take {width} inputs")
        layers.append((weight, bias))
        width = weight.shape[0]
    outputs = spec.act_dim * kind.outputs_per_action
    if width != outputs:
        raise ValueError(f"the actor has {width} outputs, {spec.env_id} needs {outputs}")
    if head == "gaussian" and tensors["log_std"].shape != (spec.act_dim,):
        raise ValueError(f"log_std {tensors['log_std'].shape} should be ({spec.act_dim},)")
    return layers
