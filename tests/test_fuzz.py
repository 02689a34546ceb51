"""Fuzzing the wire format: whatever bytes arrive, `decode` returns a valid Message or raises
MessageRejected with a short reason, and so do the trajectory checks a chunk passes next.

Never another exception: every receive loop catches MessageRejected only, so any other type would
kill the process that received the bytes. Never a long reason: each rejection is a log line.
The examples are derandomized (the same every run, as CI needs); HOTPRUNE_FUZZ_EXAMPLES=20000 digs
deeper by hand. The live counterpart, against a running service, is tests/test_fuzz_live.py.
"""

from __future__ import annotations

import math
import os

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hotprune.protocol.codec import (
    ENVELOPE_FIELDS,
    INT64_MAX,
    INT64_MIN,
    KIND_FIELDS,
    MAX_SENDER_CHARS,
    REASON_CHARS,
    SHOWN_CHARS,
    WIRE_DTYPES,
    Encoder,
    Message,
    MessageRejected,
    decode,
    shown,
)
from hotprune.protocol.trajectory import check_trajectory, check_trajectory_fields

FUZZ = settings(max_examples=int(os.environ.get("HOTPRUNE_FUZZ_EXAMPLES", "300")), deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
RUN = "fuzz-run"
MAX_FRAME = 4096  # small, so that an oversize frame is cheap to make
STEPS, ENVS, OBS_DIM, ACT_DIM, BOUND, MAX_PARAMS = 4, 3, 5, 2, 1e6, 4610

# What a msgpack header can hold, with the values that make trouble well represented.
leaves = st.one_of(
    st.none(), st.booleans(), st.integers(INT64_MIN, 2**64 - 1), st.floats(), st.floats(width=32),
    st.text(max_size=12), st.binary(max_size=12), st.integers(50_000, 100_000).map(lambda n: "A" * n),
    st.sampled_from([*KIND_FIELDS, *WIRE_DTYPES, RUN, "float16", "object", 2**63, -1, 0, 1, 3e38, math.nan]),
)
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                          max_size=4), max_leaves=10)
header_keys = st.sampled_from(sorted({*ENVELOPE_FIELDS, *(k for f in KIND_FIELDS.values() for k in f)})) | st.text(
    max_size=6)
shapes = st.lists(st.integers(-2, 2**64 - 1) | st.integers(0, 70), max_size=6) | st.sampled_from(
    [[2**32, 2**32], [0, 2**63], [1] * 65, [0] * 100])
header_changes = st.tuples(st.just("set"), header_keys, values) | st.tuples(st.just("drop"), header_keys)
buffer_lies = st.tuples(st.just("buffer"), st.integers(0, 7), st.sampled_from(["name", "dtype", "shape", "extra"]),
                        values | shapes | st.sampled_from(sorted(WIRE_DTYPES)))
frame_edits = st.sampled_from(["drop", "duplicate", "oversize", "empty"]) | st.integers(-9, 9) | st.binary(max_size=40)
frame_changes = st.tuples(st.just("frame"), st.integers(0, 7), frame_edits)
mutations = st.one_of(header_changes, buffer_lies, frame_changes,
                      st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(0, 255)))


def valid_messages() -> list[list[bytes]]:
    """One well-formed message of every kind, with tensors of several dtypes."""
    rng = np.random.default_rng(0)
    weights = {"net.0.weight": rng.standard_normal((8, 5)).astype(np.float32), "net.0.bias": np.zeros(8, np.float32)}
    masks = {"net.0.weight": weights["net.0.weight"] > 1}
    encoder = Encoder(RUN, "trainer")
    messages = [
        encoder.encode("snapshot", {"version": 3, "epoch": 3, "training_sparsity": 0.5, "masks_version": 2},
                       {**weights, "grad:net.0.weight": np.abs(weights["net.0.weight"])}),
        encoder.encode("masks", {"version": 3, "epoch": 3, "due_epoch": 3, "target_sparsity": 0.8, "failed": False,
                                 "weight_sparsity": 0.8, "params_kept": 8}, masks),
        encoder.encode("weights_ready", {"version": 3, "slot": 1, "structure_changed": False}),
        encoder.encode("trajectory", TRAJECTORY_FIELDS, trajectory_chunk()),
        encoder.encode("control", {"command": "stop"}, {"i64": np.arange(3), "u8": np.zeros(2, np.uint8)}),
    ]
    return [[bytes(memoryview(f)) for f in m] for m in messages]


TRAJECTORY_FIELDS = {"worker_id": 0, "worker_start": 1,
                     "policy_version": 3, "policy_sparsity": 0.5, "policy_nonzero_params": 1128,
                     "episode_returns": [21.0, 9], "episode_lengths": [21, 9], "swap_latencies_ms": [0.5]}


def trajectory_chunk() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    truncated = np.zeros((STEPS, ENVS), bool)
    truncated[1, 2] = True
    return {
        "obs": rng.standard_normal((STEPS + 1, ENVS, OBS_DIM)).astype(np.float32),
        "actions": rng.integers(0, ACT_DIM, (STEPS, ENVS)),
        "logprobs": -rng.random((STEPS, ENVS)).astype(np.float32),
        "rewards": np.ones((STEPS, ENVS), np.float32),
        "terminated": np.zeros((STEPS, ENVS), bool),
        "truncated": truncated,
        "final_obs": np.zeros((1, OBS_DIM), np.float32),
    }


VALID = valid_messages()


def mutate(frames: list[bytes], mutation: tuple) -> list[bytes]:
    op, *args = mutation
    if op == "flip":  # a byte of the header's msgpack changed: anything from garbage to a subtly other map
        position, byte = args
        head = bytearray(frames[0])
        head[position % len(head)] = byte
        return [bytes(head), *frames[1:]]
    if op == "frame":
        index, edit = args
        if not frames[1:]:
            return frames
        i = 1 + index % (len(frames) - 1)
        frame = frames[i]
        if edit == "drop":
            return frames[:i] + frames[i + 1:]
        if edit == "duplicate":
            return frames[:i + 1] + frames[i:]
        replaced = {"oversize": b"\0" * (MAX_FRAME + 1), "empty": b""}.get(edit) if isinstance(edit, str) else (
            edit if isinstance(edit, bytes) else frame[:edit] if edit < 0 else frame + b"\1" * edit)
        return [*frames[:i], replaced, *frames[i + 1:]]
    try:
        header = msgpack.unpackb(frames[0], raw=False, strict_map_key=False)
    except Exception:  # an earlier flip broke the header: nothing structured to mutate
        return frames
    if not isinstance(header, dict):
        return frames
    if op == "set":
        header[args[0]] = args[1]
    elif op == "drop":
        header.pop(args[0], None)
    elif op == "buffer":
        index, key, value = args
        buffers = header.get("buffers")
        if isinstance(buffers, list) and buffers and isinstance(buffers[index % len(buffers)], dict):
            buffers[index % len(buffers)][key] = value
    return [msgpack.packb(header, use_bin_type=True), *frames[1:]]


def decoded_or_rejected(frames, **kwargs) -> Message | None:
    """The property: a valid Message, or MessageRejected with a short reason; nothing else escapes."""
    try:
        msg = decode(frames, run_id=RUN, max_frame_bytes=MAX_FRAME, **kwargs)
    except MessageRejected as exc:
        assert len(exc.reason) <= REASON_CHARS, exc.reason
        return None
    assert msg.run_id == RUN and len(msg.sender) <= MAX_SENDER_CHARS
    for name, types in KIND_FIELDS[msg.kind].items():
        value = msg.fields[name]
        assert isinstance(value, types) and (types is bool) == isinstance(value, bool), (name, value)
        assert not isinstance(value, int) or INT64_MIN <= value <= INT64_MAX, (name, value)
        assert not isinstance(value, float) or math.isfinite(value), (name, value)
    for name, array in msg.tensors.items():
        assert array.dtype.name in WIRE_DTYPES and array.nbytes <= MAX_FRAME, (name, array.dtype, array.shape)
    return msg


WITH_TENSORS = [m for m in VALID if len(m) > 1]


@FUZZ
@given(base=st.sampled_from(VALID), change=header_changes)
def test_a_header_field_changed_or_dropped_decodes_or_is_rejected_briefly(base, change):
    decoded_or_rejected(mutate(base, change))


@FUZZ
@given(base=st.sampled_from(WITH_TENSORS), lie=buffer_lies)
def test_a_lie_in_a_buffer_entry_is_rejected_briefly(base, lie):
    """Dtype and shape lies, names of any type, huge and negative dimensions, containers for strings."""
    decoded_or_rejected(mutate(base, lie))


@FUZZ
@given(base=st.sampled_from(WITH_TENSORS), change=frame_changes)
def test_frames_dropped_added_cut_or_oversize_are_rejected_briefly(base, change):
    decoded_or_rejected(mutate(base, change))


@FUZZ
@given(base=st.sampled_from(VALID), changes=st.lists(mutations, min_size=2, max_size=5))
def test_several_changes_together_decode_or_are_rejected_briefly(base, changes):
    frames = base
    for change in changes:
        frames = mutate(frames, change)
    decoded_or_rejected(frames)


@FUZZ
@given(frames=st.lists(st.binary(max_size=300), max_size=5))
def test_arbitrary_frames_are_rejected_briefly(frames):
    decoded_or_rejected(frames)


@FUZZ
@given(header=st.dictionaries(header_keys, values, max_size=12), frames=st.lists(st.binary(max_size=64), max_size=3))
def test_arbitrary_msgpack_headers_decode_or_are_rejected_briefly(header, frames):
    decoded_or_rejected([msgpack.packb(header, use_bin_type=True), *frames])


@FUZZ
@given(value=values)
def test_a_shown_value_is_short_whatever_it_is(value):
    assert len(shown(value)) <= SHOWN_CHARS


# --- trajectory chunks, through decode and the checks the trainer runs -------------------------

SPECIALS = [math.nan, math.inf, -math.inf, 3e38, -3e38, BOUND * 1.01, 1.0, -1.0, 0.0, 5.0, 2.0, -1]
TENSORS = sorted(trajectory_chunk())
value_edits = st.tuples(st.sampled_from(TENSORS), st.tuples(st.just("value"), st.sampled_from(SPECIALS),
                                                            st.integers(0, 10**6)))
layout_edits = st.one_of(
    st.tuples(st.sampled_from(TENSORS), st.tuples(st.just("astype"), st.sampled_from(sorted(WIRE_DTYPES)))),
    st.tuples(st.sampled_from(TENSORS), st.tuples(st.just("reshape"), st.sampled_from([(-1,), (1, -1), (-1, 1)]))),
    st.tuples(st.sampled_from(TENSORS), st.just(("drop",))),
    st.tuples(st.just("stray"), st.just(("add",))),
    st.tuples(st.sampled_from(sorted(TRAJECTORY_FIELDS)), st.tuples(st.just("field"), values)),
)


def edit_chunk(tensors: dict, fields: dict, edit: tuple) -> None:
    name, (op, *args) = edit
    if op == "field":
        fields[name] = args[0]
    elif op == "add":
        tensors[name] = np.zeros(3, np.float32)
    elif name not in tensors:
        return
    elif op == "value":
        special, position = args
        array = tensors[name]
        if array.size:
            flat = array.reshape(-1)
            with np.errstate(all="ignore"):  # casting nan or 3e38 into an int or bool dtype is the point
                flat[position % array.size] = np.asarray(special).astype(array.dtype)
    elif op == "astype":
        with np.errstate(all="ignore"):
            tensors[name] = tensors[name].astype(args[0])
    elif op == "reshape":
        tensors[name] = tensors[name].reshape(args[0])
    elif op == "drop":
        del tensors[name]


@FUZZ
@given(edits=st.lists(value_edits, min_size=1, max_size=4))
def test_a_chunk_with_extreme_values_is_accepted_only_when_sane(edits):
    """NaN, inf, 3e38 and just past the input bound, positive log-probabilities, actions out of range."""
    received_like_the_trainer(edits)


@FUZZ
@given(edits=st.lists(value_edits | layout_edits, min_size=1, max_size=4))
def test_a_chunk_with_wrong_dtypes_shapes_tensors_or_statistics_is_accepted_only_when_sane(edits):
    received_like_the_trainer(edits)


def received_like_the_trainer(edits: list) -> None:
    """The trainer's path: decode, then the statistics, then the tensors. An accepted chunk is one the
    PPO update can take: finite, within the input bound, discrete actions in range, log-probs <= 0."""
    tensors, fields = trajectory_chunk(), dict(TRAJECTORY_FIELDS)
    for edit in edits:
        edit_chunk(tensors, fields, edit)
    frames = Encoder(RUN, "worker-0").encode("trajectory", fields, tensors)
    msg = decoded_or_rejected([bytes(memoryview(f)) for f in frames], kinds={"trajectory"})
    if msg is None:
        return
    try:
        check_trajectory_fields(msg.fields, STEPS, ENVS, MAX_PARAMS)
        check_trajectory(msg.tensors, STEPS, ENVS, OBS_DIM, ACT_DIM, True, BOUND)
    except MessageRejected as exc:
        assert len(exc.reason) <= REASON_CHARS, exc.reason
        return
    t = msg.tensors
    for name in ("obs", "final_obs", "rewards", "logprobs"):
        assert t[name].dtype == np.float32 and np.isfinite(t[name]).all() and (np.abs(t[name]) <= BOUND).all(), name
    assert ((t["actions"] >= 0) & (t["actions"] < ACT_DIM)).all() and (t["logprobs"] <= 0).all()
    assert len(t["final_obs"]) == t["truncated"].sum() and t["terminated"].dtype == bool
    assert 0 <= msg.fields["policy_sparsity"] <= 1 and 0 <= msg.fields["policy_nonzero_params"] <= MAX_PARAMS
    for name in ("episode_returns", "episode_lengths", "swap_latencies_ms"):
        assert all(math.isfinite(v) and not isinstance(v, bool) for v in msg.fields[name]), name
