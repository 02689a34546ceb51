"""Wire codec (protocol/codec.py) and trajectory chunk validation (protocol/trajectory.py)."""

from __future__ import annotations

import re
import time

import msgpack
import numpy as np
import pytest

from hotprune.protocol.codec import (
    MAX_BUFFERS,
    MAX_HEADER_BYTES,
    MAX_SENDER_CHARS,
    PROTO_VERSION,
    REASON_CHARS,
    Encoder,
    MessageRejected,
    check_tensors,
    decode,
)
from hotprune.protocol.trajectory import check_trajectory, check_trajectory_fields, trajectory_spec
from tests.arrays import assert_same_tensors

RUN = "run-7"

SNAPSHOT = {"version": 3, "epoch": 2, "training_sparsity": 0.5, "masks_version": -1, "trainer_start": 0}
MASKS = {"version": 3, "epoch": 2, "due_epoch": 2, "target_sparsity": 0.75, "failed": False, "weight_sparsity": 0.75,
         "params_kept": 100}
WEIGHTS_READY = {"version": 4, "slot": 1, "structure_changed": True}
TRAJECTORY = {
    "worker_id": 1,
    "worker_start": 1,
    "policy_version": 2,
    "policy_sparsity": 0,
    "policy_nonzero_params": 1128,
    "episode_returns": [1.5, -2.0],
    "episode_lengths": [10, 20],
    "swap_latencies_ms": [0.25],
}
CONTROL = {"command": "stop"}


# --- helpers ------------------------------------------------------------------------------


def wire(frames) -> list[bytes]:
    """What a receiver gets off the socket: one plain bytes object per frame."""
    return [bytes(memoryview(f)) for f in frames]


def encode(kind="control", fields=CONTROL, tensors=None, sender="tester") -> list[bytes]:
    return wire(Encoder(RUN, sender).encode(kind, fields, tensors))


def reframe(frames: list[bytes], drop=(), **changes) -> list[bytes]:
    """Re-pack the header of a valid message with some fields changed or dropped."""
    header = msgpack.unpackb(frames[0], raw=False)
    for name in drop:
        del header[name]
    header.update(changes)
    return [msgpack.packb(header, use_bin_type=True), *frames[1:]]


def with_buffer(frames: list[bytes], index: int = 0, **changes) -> list[bytes]:
    """Re-pack the header with one buffer entry changed."""
    buffers = msgpack.unpackb(frames[0], raw=False)["buffers"]
    buffers[index].update(changes)
    return reframe(frames, buffers=buffers)


def rejected(frames, match: str, **kwargs) -> MessageRejected:
    with pytest.raises(MessageRejected) as info:
        decode(frames, **kwargs)
    assert match in info.value.reason, info.value.reason
    return info.value


def chunk(steps=4, envs=3, obs_dim=5, act_dim=2, discrete=True, truncated_at=((1, 0), (3, 2)), seed=0):
    """A valid trajectory chunk with truncations at the given (t, n) steps."""
    rng = np.random.default_rng(seed)
    truncated = np.zeros((steps, envs), dtype=bool)
    for t, n in truncated_at:
        truncated[t, n] = True
    if discrete:
        actions = rng.integers(0, act_dim, size=(steps, envs)).astype(np.int64)
    else:
        actions = rng.standard_normal((steps, envs, act_dim)).astype(np.float32)
    return {
        "obs": rng.standard_normal((steps + 1, envs, obs_dim)).astype(np.float32),
        "actions": actions,
        "logprobs": -rng.random((steps, envs)).astype(np.float32),
        "rewards": rng.standard_normal((steps, envs)).astype(np.float32),
        "terminated": np.zeros((steps, envs), dtype=bool),
        "truncated": truncated,
        "final_obs": rng.standard_normal((len(truncated_at), obs_dim)).astype(np.float32),
    }


# --- round trips --------------------------------------------------------------------------


def test_snapshot_round_trip_with_float32_tensors_and_an_empty_tensor():
    tensors = {
        "fc1.weight": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
        "fc1.bias": np.array([-1.5, 0.0, 2.25], dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }
    msg = decode(encode("snapshot", SNAPSHOT, tensors), run_id=RUN, kinds={"snapshot"})
    assert msg.kind == "snapshot"
    assert msg.fields == SNAPSHOT
    assert_same_tensors(msg.tensors, tensors)
    assert msg.tensors["empty"].shape == (0, 4)


def test_masks_round_trip_with_bool_tensors():
    tensors = {"fc1.weight": np.array([[True, False, True], [False, False, True]]), "none": np.zeros(0, bool)}
    msg = decode(encode("masks", MASKS, tensors), run_id=RUN)
    assert msg.kind == "masks" and msg.fields == MASKS
    assert_same_tensors(msg.tensors, tensors)


def test_weights_ready_round_trip_has_no_tensors():
    frames = encode("weights_ready", WEIGHTS_READY)
    assert len(frames) == 1
    msg = decode(frames, run_id=RUN)
    assert msg.kind == "weights_ready"
    assert msg.fields == WEIGHTS_READY
    assert msg.fields["structure_changed"] is True
    assert msg.tensors == {}


@pytest.mark.parametrize("discrete", [True, False])
def test_trajectory_round_trip_and_check(discrete):
    tensors = chunk(discrete=discrete)
    msg = decode(encode("trajectory", TRAJECTORY, tensors), run_id=RUN, kinds={"trajectory"})
    assert msg.fields == TRAJECTORY
    assert_same_tensors(msg.tensors, tensors)
    check_trajectory(msg.tensors, steps=4, envs=3, obs_dim=5, act_dim=2, discrete=discrete)


def test_control_round_trip_accepts_memoryview_frames():
    """Receivers pass zmq `Frame.buffer` memoryviews, not bytes."""
    frames = [memoryview(f) for f in encode("control", CONTROL, {"x": np.array([1, 2], dtype=np.int32)})]
    msg = decode(frames, run_id=RUN, kinds={"control"})
    assert msg.kind == "control" and msg.fields == CONTROL
    np.testing.assert_array_equal(msg.tensors["x"], [1, 2])


def test_non_contiguous_arrays_round_trip():
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    tensors = {"t": base.T, "strided": base[:, ::2], "fortran": np.asfortranarray(base)}
    msg = decode(encode("control", CONTROL, tensors))
    assert_same_tensors(msg.tensors, tensors)


def test_every_wire_dtype_round_trips():
    tensors = {
        "f32": np.array([1.5], np.float32),
        "f64": np.array([[1e300]], np.float64),
        "i64": np.array([-(2**62)], np.int64),
        "i32": np.array([-7, 7], np.int32),
        "u8": np.array([0, 255], np.uint8),
        "b": np.array([True]),
    }
    assert_same_tensors(decode(encode("control", CONTROL, tensors)).tensors, tensors)


def test_zero_dim_tensor_keeps_its_shape():
    """BUG: Encoder runs np.ascontiguousarray, which returns ndim >= 1, so a 0-d tensor (a torch
    scalar parameter or buffer) is announced as shape [1] and fails check_tensors on arrival."""
    tensors = {"scalar": np.array(3.0, np.float32), "count": np.array(5, np.int64)}
    got = decode(encode("control", CONTROL, tensors)).tensors
    assert {k: v.shape for k, v in got.items()} == {"scalar": (), "count": ()}, "BUG: 0-d tensor reshaped"
    assert got["scalar"] == 3.0 and got["count"] == 5


def test_envelope_fields_and_per_sender_sequence():
    encoder = Encoder(RUN, "compressor")
    before = time.time_ns()
    messages = [decode(wire(encoder.encode("control", CONTROL))) for _ in range(3)]
    after = time.time_ns()
    assert [m.seq for m in messages] == [1, 2, 3]
    for m in messages:
        assert m.run_id == RUN
        assert m.sender == "compressor"
        assert before <= m.ts_ns <= after
        # envelope keys are not repeated among the kind's fields
        assert m.fields == CONTROL
    header = msgpack.unpackb(encoder.encode("control", CONTROL)[0], raw=False)
    assert header["proto"] == PROTO_VERSION and header["seq"] == 4
    # another sender counts on its own
    assert decode(wire(Encoder(RUN, "worker-0").encode("control", CONTROL))).seq == 1


# --- rejection ----------------------------------------------------------------------------


def test_rejects_empty_message():
    assert rejected([], "empty message").reason == "empty message"


@pytest.mark.parametrize("head", [b"\xc1", b"", b"\x81\xa1", b"\x01\x02"],
                         ids=["reserved", "empty", "truncated", "extra"])
def test_rejects_garbage_header(head):
    rejected([head], "not msgpack")


@pytest.mark.parametrize("value", [[1, 2, 3], 5, "hello", None])
def test_rejects_header_that_is_not_a_map(value):
    rejected([msgpack.packb(value)], "not a map")


def test_rejects_oversized_header_frame():
    rejected([b"\x00" * (MAX_HEADER_BYTES + 1)], "header frame too large")


def test_rejects_wrong_proto():
    rejected(reframe(encode(), proto=PROTO_VERSION + 1), "unsupported proto")


def test_rejects_unknown_kind():
    rejected(reframe(encode(), kind="reboot"), "unknown kind 'reboot'")


def test_rejects_kind_not_allowed_on_this_socket():
    frames = encode("snapshot", SNAPSHOT)
    rejected(frames, "unexpected kind 'snapshot'", kinds={"weights_ready", "control"})
    assert decode(frames, kinds={"snapshot"}).kind == "snapshot"


def test_rejects_other_run_id():
    rejected(encode(), "run_id 'run-7' is not this run's", run_id="run-8")


@pytest.mark.parametrize("name", ["kind", "proto", "run_id", "seq", "buffers"])
def test_rejects_missing_envelope_field(name):
    rejected(reframe(encode(), drop=[name]), f"missing field {name!r}")


def test_rejects_missing_kind_field():
    rejected(reframe(encode("snapshot", SNAPSHOT), drop=["epoch"]), "missing field 'epoch'")


@pytest.mark.parametrize(
    "kind, fields, change, match",
    [
        ("snapshot", SNAPSHOT, {"epoch": "2"}, "field 'epoch' has type str"),
        ("snapshot", SNAPSHOT, {"version": True}, "field 'version' has type bool"),
        ("snapshot", SNAPSHOT, {"training_sparsity": False}, "field 'training_sparsity' has type bool"),
        ("weights_ready", WEIGHTS_READY, {"structure_changed": 1}, "field 'structure_changed' has type int"),
        ("weights_ready", WEIGHTS_READY, {"slot": 1.0}, "field 'slot' has type float"),
        ("trajectory", TRAJECTORY, {"episode_returns": {"a": 1}}, "field 'episode_returns' has type dict"),
        ("control", CONTROL, {"command": None}, "field 'command' has type NoneType"),
        ("control", CONTROL, {"seq": True}, "field 'seq' has type bool"),
        ("control", CONTROL, {"buffers": {}}, "field 'buffers' has type dict"),
    ],
)
def test_rejects_field_of_wrong_type(kind, fields, change, match):
    rejected(reframe(encode(kind, fields), **change), match)


def test_rejects_buffer_count_mismatch():
    frames = encode("control", CONTROL, {"a": np.zeros(2, np.float32), "b": np.zeros(3, np.float32)})
    rejected(frames[:-1], "header lists 2 buffers but 1 frames follow")
    rejected([*frames, b""], "header lists 2 buffers but 3 frames follow")


@pytest.mark.parametrize("cut", [-1, -4, 4])
def test_rejects_frame_size_not_matching_dtype_and_shape(cut):
    frames = encode("control", CONTROL, {"w": np.zeros((2, 3), np.float32)})
    body = frames[1][:cut] if cut < 0 else frames[1] + b"\x00" * cut
    rejected([frames[0], body], "do not match float32[2, 3]")


def test_rejects_frame_size_of_a_relabelled_dtype():
    frames = encode("control", CONTROL, {"w": np.zeros((2, 3), np.float32)})
    rejected(with_buffer(frames, dtype="float64"), "do not match float64[2, 3]")


@pytest.mark.parametrize("dtype", ["object", "complex64", "float16", "<f4", "U4", 7])
def test_rejects_disallowed_dtype(dtype):
    frames = encode("control", CONTROL, {"w": np.zeros(2, np.float64)})
    rejected(with_buffer(frames, dtype=dtype), "not allowed")


@pytest.mark.parametrize("shape", [[-1, 4], [4, -1], [True, 8], [2.0, 4], "8", None])
def test_rejects_bad_shape(shape):
    frames = encode("control", CONTROL, {"w": np.zeros((2, 4), np.float32)})
    rejected(with_buffer(frames, shape=shape), "bad shape")


@pytest.mark.parametrize(
    "entry", [[1, 2, 3], {"name": "w", "dtype": "float32"}, {"name": "w", "dtype": "float32", "shape": [2], "x": 1}]
)
def test_rejects_malformed_buffer_entry(entry):
    frames = encode("control", CONTROL, {"w": np.zeros(2, np.float32)})
    rejected(reframe(frames, buffers=[entry]), "malformed buffer entry")


@pytest.mark.parametrize("name", ["", 3, None])
def test_rejects_buffer_without_a_name(name):
    frames = encode("control", CONTROL, {"w": np.zeros(2, np.float32)})
    rejected(with_buffer(frames, name=name), "buffer without a name")


def test_rejects_duplicate_buffer_names():
    frames = encode("control", CONTROL, {"a": np.zeros(2, np.float32), "b": np.ones(2, np.float32)})
    rejected(with_buffer(frames, 1, name="a"), "duplicate buffer 'a'")


def test_rejects_frame_larger_than_max_frame_bytes():
    frames = encode("control", CONTROL, {"w": np.zeros(16, np.float32)})  # 64 bytes
    rejected(frames, "frame of 64 bytes exceeds 63", max_frame_bytes=63)
    assert decode(frames, max_frame_bytes=64).tensors["w"].nbytes == 64


def test_rejects_too_many_frames_but_accepts_the_maximum():
    at_limit = encode("control", CONTROL, {f"t{i}": np.zeros(0, np.uint8) for i in range(MAX_BUFFERS)})
    assert len(decode(at_limit).tensors) == MAX_BUFFERS
    rejected([*at_limit, b""], "too many frames")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("shape", [[2**32, 2**32], [2**31, 2**31, 4], [0, 2**63], [0, 2**62, 2**62]])
def test_rejects_shapes_whose_size_overflows(shape):
    """BUG: np.prod(shape, dtype=int64) wraps around (or numpy refuses the shape), so a crafted
    header makes decode raise a plain ValueError, which the trainer/compressor/worker receive
    loops (`except MessageRejected`) do not catch."""
    frames = encode("control", CONTROL, {"w": np.zeros(0, np.float32)})
    try:
        decode(with_buffer(frames, shape=shape))
    except MessageRejected as exc:
        assert "w" in exc.reason
    except Exception as exc:  # noqa: BLE001 - the point is which type escapes
        pytest.fail(f"BUG: shape {shape} escaped decode as {type(exc).__name__}: {exc}")
    else:
        pytest.fail(f"BUG: shape {shape} accepted for an empty frame")


HUGE = "A" * 100_000


@pytest.mark.parametrize("change", [
    {"kind": HUGE},
    {"run_id": HUGE},
    {"buffers": [{"name": HUGE, "dtype": "float32", "shape": [3]}]},
    {"buffers": [{"name": "w", "dtype": HUGE, "shape": [2]}]},
    {"buffers": [{"name": "w", "dtype": "float32", "shape": [1] * 100_000}]},
    {"buffers": [{"name": "w", "dtype": "float32", "shape": [[[[HUGE]]]]}]},
], ids=["kind", "run_id", "buffer name", "dtype", "long shape", "nested shape"])
def test_a_100_kb_field_makes_a_short_reason(change):
    """Every rejection is logged: a reason that echoed the field whole would make a 100 kB log line."""
    frames = reframe(encode("control", CONTROL, {"w": np.zeros(2, np.float32)}), **change)
    reason = rejected(frames, "", run_id=RUN).reason
    assert len(reason) <= 120 and "..." in reason, reason  # the field is shown, cut


@pytest.mark.parametrize("dtype", [["float32"], {"a": 1}], ids=["list", "map"])
def test_rejects_an_unhashable_dtype(dtype):
    """A list or map as dtype used to escape decode as TypeError (found by tests/test_fuzz.py)."""
    rejected(with_buffer(encode("control", CONTROL, {"w": np.zeros(2, np.float32)}), dtype=dtype), "not allowed")


def test_rejects_a_long_sender_name():
    """The trainer logs a rejected chunk's sender; the codec keeps that name short."""
    assert decode(encode(sender="s" * MAX_SENDER_CHARS)).sender == "s" * MAX_SENDER_CHARS
    rejected(encode(sender="s" * 100_000), f"sender name of 100000 characters (at most {MAX_SENDER_CHARS})")


def test_a_reason_is_cut_whoever_built_it():
    assert len(MessageRejected("x" * 10_000).reason) == REASON_CHARS


def test_check_tensors_shows_unexpected_names_cut():
    with pytest.raises(MessageRejected) as info:
        check_tensors({**good_tensors(), HUGE: np.zeros(1, np.float32)}, EXPECTED)
    assert info.value.reason.startswith("unexpected tensors ['AAAA") and len(info.value.reason) < 100


# --- check_tensors ------------------------------------------------------------------------

EXPECTED = {"w": ("float32", (2, 3)), "mask": ("bool", (2, 3)), "steps": ("int64", (4,))}


def good_tensors():
    return {"w": np.ones((2, 3), np.float32), "mask": np.ones((2, 3), bool), "steps": np.arange(4)}


def test_check_tensors_accepts_exact_match():
    check_tensors(good_tensors(), EXPECTED)


def test_check_tensors_rejects_missing_and_extra_names():
    tensors = good_tensors()
    del tensors["mask"]
    with pytest.raises(MessageRejected, match=r"missing tensors \['mask'\]"):
        check_tensors(tensors, EXPECTED)
    tensors = {**good_tensors(), "stray": np.zeros(1, np.float32)}
    with pytest.raises(MessageRejected, match=r"unexpected tensors \['stray'\]"):
        check_tensors(tensors, EXPECTED)


def test_check_tensors_rejects_wrong_shape_and_dtype():
    with pytest.raises(MessageRejected) as info:
        check_tensors({**good_tensors(), "w": np.ones((3, 2), np.float32)}, EXPECTED)
    assert "tensor 'w' is float32[3, 2], expected float32[2, 3]" in info.value.reason
    with pytest.raises(MessageRejected) as info:
        check_tensors({**good_tensors(), "w": np.ones((2, 3), np.float64)}, EXPECTED)
    assert "tensor 'w' is float64[2, 3], expected float32[2, 3]" in info.value.reason
    with pytest.raises(MessageRejected, match="'mask' is uint8"):
        check_tensors({**good_tensors(), "mask": np.ones((2, 3), np.uint8)}, EXPECTED)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_tensors_rejects_non_finite_weights(bad):
    tensors = good_tensors()
    tensors["w"][1, 2] = bad
    with pytest.raises(MessageRejected, match="tensor 'w' has non-finite values"):
        check_tensors(tensors, EXPECTED)
    check_tensors(tensors, EXPECTED, finite=False)  # opt-out is honoured


def test_check_tensors_accepts_extreme_but_finite_values():
    tensors = good_tensors()
    tensors["w"][:] = np.finfo(np.float32).max
    tensors["w"][0, 0] = -np.finfo(np.float32).max
    check_tensors(tensors, EXPECTED)


# --- check_trajectory ---------------------------------------------------------------------


@pytest.mark.parametrize("discrete", [True, False])
@pytest.mark.parametrize("truncated_at", [(), ((0, 0),), ((1, 0), (3, 2), (3, 1))])
def test_check_trajectory_accepts_valid_chunks(discrete, truncated_at):
    tensors = chunk(discrete=discrete, truncated_at=truncated_at)
    check_trajectory(tensors, steps=4, envs=3, obs_dim=5, act_dim=2, discrete=discrete)
    # the spec it checks against is the one the chunk was built from
    spec = trajectory_spec(4, 3, 5, 2, discrete, len(truncated_at))
    assert {k: (v.dtype.name, v.shape) for k, v in tensors.items()} == spec


@pytest.mark.parametrize("rows", [1, 3])
def test_check_trajectory_final_obs_rows_must_equal_truncation_count(rows):
    tensors = chunk(truncated_at=((1, 0), (3, 2)))
    tensors["final_obs"] = np.zeros((rows, 5), np.float32)
    with pytest.raises(MessageRejected, match=r"'final_obs' is float32\[%d, 5\], expected float32\[2, 5\]" % rows):
        check_trajectory(tensors, steps=4, envs=3, obs_dim=5, act_dim=2, discrete=True)


@pytest.mark.parametrize("action", [2, -1, 99])
def test_check_trajectory_rejects_discrete_actions_out_of_range(action):
    tensors = chunk(act_dim=2)
    tensors["actions"][2, 1] = action
    with pytest.raises(MessageRejected, match=r"discrete actions outside \[0, 2\)"):
        check_trajectory(tensors, steps=4, envs=3, obs_dim=5, act_dim=2, discrete=True)


def test_check_trajectory_rejects_wrong_action_layout():
    tensors = chunk(discrete=True)
    with pytest.raises(MessageRejected, match="'actions'"):
        check_trajectory(tensors, steps=4, envs=3, obs_dim=5, act_dim=2, discrete=False)


def test_check_trajectory_rejects_non_finite_continuous_actions():
    tensors = chunk(discrete=False)
    tensors["actions"][0, 0, 1] = np.nan
    with pytest.raises(MessageRejected, match="'actions' has non-finite"):
        check_trajectory(tensors, steps=4, envs=3, obs_dim=5, act_dim=2, discrete=False)


@pytest.mark.parametrize(
    "truncated",
    [np.zeros((4, 3), np.uint8), np.zeros((4, 3), np.int64), np.zeros((3, 4), bool), None],
    ids=["uint8", "int64", "transposed", "missing"],
)
def test_check_trajectory_rejects_bad_truncated(truncated):
    tensors = chunk(truncated_at=())
    if truncated is None:
        del tensors["truncated"]
    else:
        tensors["truncated"] = truncated
    with pytest.raises(MessageRejected, match=r"truncated must be bool\[4, 3\]"):
        check_trajectory(tensors, steps=4, envs=3, obs_dim=5, act_dim=2, discrete=True)


# --- Encoder refusals ---------------------------------------------------------------------


def test_encoder_refuses_unknown_kind():
    encoder = Encoder(RUN, "t")
    with pytest.raises(ValueError, match="unknown message kind 'hello'"):
        encoder.encode("hello", {})
    assert decode(wire(encoder.encode("control", CONTROL))).seq == 1  # the refusal used no number


@pytest.mark.parametrize(
    "array",
    [np.zeros(2, np.complex64), np.array([None, 1], dtype=object), np.zeros(2, np.float16), np.array(["ab"])],
    ids=["complex64", "object", "float16", "str"],
)
def test_encoder_refuses_non_wire_dtype(array):
    with pytest.raises(ValueError, match="not sendable"):
        Encoder(RUN, "t").encode("control", CONTROL, {"bad": array})


def test_encoder_does_not_mislabel_big_endian_arrays():
    """BUG: dtype.name is 'float32' for both byte orders, so a big-endian array is sent with its raw
    bytes under a label the receiver reads as native little-endian: values arrive corrupted.
    Refusing the array (ValueError) or converting it would both be fine."""
    data = np.array([1.0, -2.5, 3.25], dtype=">f4")
    try:
        frames = Encoder(RUN, "t").encode("control", CONTROL, {"w": data})
    except ValueError:
        return
    got = decode(wire(frames)).tensors["w"]
    np.testing.assert_array_equal(got, data, err_msg="BUG: big-endian tensor corrupted on the wire")


def _chunk_fields(**changes):
    return {"policy_sparsity": 0.8, "policy_nonzero_params": 1128, "episode_returns": [21.0, 9],
            "episode_lengths": [21, 9], "swap_latencies_ms": [0.5], **changes}


def test_trajectory_statistics_are_accepted_when_sane():
    check_trajectory_fields(_chunk_fields(), steps=32, envs=4, max_params=4610)


@pytest.mark.parametrize("changes, reason", [
    ({"episode_returns": [["nested"]]}, "episode_returns must hold finite numbers"),
    ({"episode_returns": [float("nan")]}, "episode_returns must hold finite numbers"),
    ({"episode_lengths": [True]}, "episode_lengths must hold finite numbers"),
    ({"swap_latencies_ms": [1.0] * 33}, "swap_latencies_ms has 33 entries, at most 32"),
    ({"episode_returns": [1.0] * 129}, "episode_returns has 129 entries"),
    ({"policy_sparsity": 1.5}, "policy_sparsity outside [0, 1]"),
    ({"policy_nonzero_params": 4611}, "policy_nonzero_params outside [0, 4610]"),
    ({"policy_nonzero_params": -1}, "policy_nonzero_params outside [0, 4610]"),
])
def test_trajectory_statistics_that_would_poison_the_summary_are_rejected(changes, reason):
    with pytest.raises(MessageRejected, match=re.escape(reason)):
        check_trajectory_fields(_chunk_fields(**changes), steps=32, envs=4, max_params=4610)


@pytest.mark.parametrize("value", [2**63, 2**64 - 1])  # msgpack's uint64; below int64 it cannot go
def test_header_integers_outside_int64_are_rejected(value):
    frames = Encoder("r", "s").encode("weights_ready", {"version": 1, "slot": 0, "structure_changed": False})
    header = msgpack.unpackb(frames[0])
    header["version"] = value
    with pytest.raises(MessageRejected, match="outside the int64 range"):
        decode([msgpack.packb(header)])


def test_non_finite_header_floats_are_rejected():
    frames = Encoder("r", "s").encode("snapshot", {**SNAPSHOT, "training_sparsity": float("nan")})
    with pytest.raises(MessageRejected, match="'training_sparsity' is not finite"):
        decode(frames)
