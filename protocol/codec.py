"""Wire format: one multipart ZeroMQ message = a msgpack header frame + one raw frame per tensor.

The header names every buffer (name, dtype, shape), so a receiver can rebuild numpy arrays without
copying and without trusting the sender: decoding is strict and bounded, and anything that does not
fit raises `MessageRejected` with a reason the receiver logs as `message_rejected`. A sparse tensor
(hotprune.protocol.sparse) is one buffer entry with `kept` added and two frames, its values and its
bitmap; it arrives as a SparseTensor, checked as the store checks it.
"""

from __future__ import annotations

import math
import reprlib
import time
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping, Sequence

import msgpack
import numpy as np

from hotprune.protocol.sparse import SparseTensor, bitmap_bytes, sparse_tensor

PROTO_VERSION = 5  # 5: sparse tensors

# dtypes allowed on the wire; anything else (object arrays above all) is refused.
WIRE_DTYPES = frozenset({"float32", "float64", "int64", "int32", "uint8", "bool"})

DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
MAX_HEADER_BYTES = 1024 * 1024
MAX_BUFFERS = 256
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_SENDER_CHARS = 64  # a sender's name is logged with what it sent; real ones are "trainer", "worker-3"
# Every rejection is logged (and echoed): its reason must not carry what an attacker sent, whole.
REASON_CHARS = 200
SHOWN_CHARS = 60

# kind -> the header fields it must carry, with their types.
KIND_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    # masks_version: the newest masks the trainer had applied when it took the snapshot (-1: none).
    # trainer_start: 0 for the run's first trainer, +1 for each that resumed from a checkpoint.
    "snapshot": {"version": int, "epoch": int, "training_sparsity": (int, float), "masks_version": int,
                 "trainer_start": int},
    # masks: the outcome of the compression for the schedule step due at `due_epoch`, computed on
    # snapshot `version` (of `epoch`), sent in every mode; the mask tensors ride along in both-pruned
    # mode unless it `failed`. weight_sparsity and params_kept describe the pruned policy.
    "masks": {"version": int, "epoch": int, "due_epoch": int, "target_sparsity": (int, float), "failed": bool,
              "weight_sparsity": (int, float), "params_kept": int},
    "weights_ready": {"version": int, "slot": int, "structure_changed": bool},
    # version: a weight version whole (its tensors ride along), compressor -> the relays, each of which
    # writes it into its node's own store; `epoch` is the snapshot's it was made from.
    "version": {"version": int, "epoch": int},
    "trajectory": {
        "worker_id": int,
        "worker_start": int,  # the sending worker process's start (ns): credits count per worker process
        "policy_version": int,
        "policy_sparsity": (int, float),
        "policy_nonzero_params": int,
        "episode_returns": list,
        "episode_lengths": list,
        "swap_latencies_ms": list,
    },
    # credits: the chunks trainer process `trainer_id` (its start, ns) has taken from each worker
    # process, as [worker_start, count] per worker index; a worker sends a chunk only while fewer than
    # its window of its chunks are in flight, so the pipes never hold more than about one epoch.
    "credits": {"trainer_id": int, "taken": list},
    "control": {"command": str},
}
GRAD_PREFIX = "grad:"  # a snapshot's gradient statistics travel as tensors named grad:<weight name>
# teacher-student mode: observations of the trainer's last epoch (float32 [rows, obs_dim], 0 rows
# before any), which the compressor distils the student on
DISTILL_OBS = "distill:obs"

ENVELOPE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "proto": int,
    "kind": str,
    "run_id": str,
    "sender": str,
    "seq": int,
    "ts_ns": int,
    "buffers": list,
}


class MessageRejected(ValueError):
    """A message failed validation; `reason` is a short machine-friendly phrase, cut to REASON_CHARS
    whatever built it, so that no message can make its own rejection's log line long."""

    def __init__(self, reason: str):
        reason = _cut(reason, REASON_CHARS)
        super().__init__(reason)
        self.reason = reason


# reprlib cuts long strings, long and deep containers and huge ints while it builds the repr, so
# showing a 1 MB field costs no more than showing a short one.
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel = 3
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = _SHOWN.maxset = 4
_SHOWN.maxstring = _SHOWN.maxother = 40
_SHOWN.maxlong = 24


def shown(value: Any) -> str:
    """A received value as a reason may quote it: its repr, cut to SHOWN_CHARS."""
    return _cut(_SHOWN.repr(value), SHOWN_CHARS)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class Message:
    kind: str
    fields: dict[str, Any]
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    run_id: str = ""
    sender: str = ""
    seq: int = 0
    ts_ns: int = 0


class Encoder:
    """Stamps the envelope (run id, sender, a per-sender sequence number) on outgoing messages."""

    def __init__(self, run_id: str, sender: str):
        self.run_id = run_id
        self.sender = sender
        self._seq = 0

    def encode(self, kind: str, fields: Mapping[str, Any],
               tensors: Mapping[str, np.ndarray | SparseTensor] | None = None) -> list:
        if kind not in KIND_FIELDS:
            raise ValueError(f"unknown message kind {kind!r}")
        clash = set(fields) & set(ENVELOPE_FIELDS)
        if clash:
            raise ValueError(f"fields {sorted(clash)} would overwrite the envelope")
        tensors = tensors or {}
        self._seq += 1
        buffers, frames = [], []
        for name, tensor in tensors.items():
            if tensor.dtype.name not in WIRE_DTYPES:
                raise ValueError(f"tensor {name!r} has dtype {tensor.dtype.name}, not sendable")
            spec = {"name": name, "dtype": tensor.dtype.name, "shape": list(tensor.shape)}
            arrays = [tensor]
            if isinstance(tensor, SparseTensor):
                spec["kept"] = tensor.values.size
                arrays = [tensor.values, tensor.bitmap]
            buffers.append(spec)
            frames += [little_endian(a).reshape(-1).view(np.uint8) for a in arrays]  # zero-copy, even when empty
        header = {
            "proto": PROTO_VERSION,
            "kind": kind,
            "run_id": self.run_id,
            "sender": self.sender,
            "seq": self._seq,
            "ts_ns": time.time_ns(),
            "buffers": buffers,
            **fields,
        }
        return [msgpack.packb(header, use_bin_type=True), *frames]


def little_endian(array: np.ndarray) -> np.ndarray:
    """C-contiguous and little-endian (the wire's byte order), keeping 0-d shapes; copies only if needed."""
    return np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C")


def decode(
    frames: Sequence[bytes | memoryview],
    *,
    run_id: str | None = None,
    kinds: frozenset[str] | set[str] | None = None,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
) -> Message:
    """Parse and validate a multipart message; raise MessageRejected on any deviation."""
    if not frames:
        raise MessageRejected("empty message")
    if len(frames) - 1 > MAX_BUFFERS:
        raise MessageRejected(f"too many frames ({len(frames)})")
    head = frames[0]
    if len(head) > MAX_HEADER_BYTES:
        raise MessageRejected(f"header frame too large ({len(head)} bytes)")
    try:
        header = msgpack.unpackb(bytes(head), raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise MessageRejected(f"header is not msgpack ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise MessageRejected("header is not a map")
    _check_fields(header, ENVELOPE_FIELDS)
    if len(header["sender"]) > MAX_SENDER_CHARS:
        raise MessageRejected(f"sender name of {len(header['sender'])} characters (at most {MAX_SENDER_CHARS})")
    if header["proto"] != PROTO_VERSION:
        raise MessageRejected(f"unsupported proto {header['proto']} (expected {PROTO_VERSION})")
    kind = header["kind"]
    if kind not in KIND_FIELDS:
        raise MessageRejected(f"unknown kind {shown(kind)}")
    if kinds is not None and kind not in kinds:
        raise MessageRejected(f"unexpected kind {shown(kind)} on this socket")
    if run_id is not None and header["run_id"] != run_id:
        raise MessageRejected(f"run_id {shown(header['run_id'])} is not this run's")
    _check_fields(header, KIND_FIELDS[kind])

    specs = header["buffers"]
    wanted = sum(2 if isinstance(spec, dict) and "kept" in spec else 1 for spec in specs)
    if wanted != len(frames) - 1:
        sparse = f" ({wanted} frames)" if wanted != len(specs) else ""
        raise MessageRejected(f"header lists {len(specs)} buffers{sparse} but {len(frames) - 1} frames follow")
    tensors, rest = {}, iter(frames[1:])
    for spec in specs:
        name, tensor = _tensor_from_frames(spec, rest, max_frame_bytes)
        if name in tensors:
            raise MessageRejected(f"duplicate buffer {shown(name)}")
        tensors[name] = tensor

    fields = {k: v for k, v in header.items() if k not in ENVELOPE_FIELDS}
    return Message(kind, fields, tensors, header["run_id"], header["sender"], header["seq"], header["ts_ns"])


def _check_fields(header: dict, required: Mapping[str, type | tuple[type, ...]]) -> None:
    for name, types in required.items():
        if name not in header:
            raise MessageRejected(f"missing field {name!r}")
        value = header[name]
        # bool is an int in Python; a count must not be accepted as True/False and vice versa.
        if isinstance(value, bool) and types is not bool:
            raise MessageRejected(f"field {name!r} has type bool")
        if not isinstance(value, types):
            raise MessageRejected(f"field {name!r} has type {type(value).__name__}")
        if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:  # msgpack allows up to 2**64 - 1
            raise MessageRejected(f"field {name!r} is outside the int64 range")
        if isinstance(value, float) and not math.isfinite(value):
            raise MessageRejected(f"field {name!r} is not finite")


def _tensor_from_frames(spec: Any, frames, max_frame_bytes: int) -> tuple[str, np.ndarray | SparseTensor]:
    """The tensor of one buffer entry, from the next frame (or two, values and bitmap, for a sparse one)."""
    if not isinstance(spec, dict) or set(spec) - {"kept"} != {"name", "dtype", "shape"}:
        raise MessageRejected("malformed buffer entry")
    if "kept" not in spec:
        return _tensor_from_frame(spec, next(frames), max_frame_bytes)
    kept, shape = spec["kept"], spec["shape"]
    if not isinstance(kept, int) or isinstance(kept, bool) or kept < 0:
        raise MessageRejected(f"buffer {shown(spec['name'])}: bad kept count {shown(kept)}")
    name, values = _tensor_from_frame({**spec, "shape": [kept]}, next(frames), max_frame_bytes)
    _check_shape(name, shape)
    size = math.prod(shape)
    _, bitmap = _tensor_from_frame({"name": name, "dtype": "uint8", "shape": [bitmap_bytes(size)]}, next(frames),
                                   max_frame_bytes)
    try:
        return name, sparse_tensor(shown(name), values.dtype, shape, values, bitmap)
    except ValueError as exc:
        raise MessageRejected(str(exc)) from None


def _tensor_from_frame(spec: dict, frame: bytes | memoryview, max_frame_bytes: int) -> tuple[str, np.ndarray]:
    name, dtype, shape = spec["name"], spec["dtype"], spec["shape"]
    if not isinstance(name, str) or not name:
        raise MessageRejected("buffer without a name")
    if not isinstance(dtype, str) or dtype not in WIRE_DTYPES:  # a list or map would not even hash
        raise MessageRejected(f"buffer {shown(name)}: dtype {shown(dtype)} not allowed")
    _check_shape(name, shape)
    if len(frame) > max_frame_bytes:
        raise MessageRejected(f"buffer {shown(name)}: frame of {len(frame)} bytes exceeds {max_frame_bytes}")
    np_dtype = np.dtype(dtype).newbyteorder("<")
    expected = math.prod(shape) * np_dtype.itemsize  # Python ints: no overflow on crafted shapes
    if expected != len(frame):
        raise MessageRejected(f"buffer {shown(name)}: {len(frame)} bytes do not match {dtype}{shown(shape)}")
    try:
        return name, np.frombuffer(frame, dtype=np_dtype).reshape(shape)
    except ValueError:  # e.g. a zero-size shape with a dimension numpy cannot represent
        raise MessageRejected(f"buffer {shown(name)}: shape {shown(shape)} not representable") from None


def _check_shape(name: str, shape: Any) -> None:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise MessageRejected(f"buffer {shown(name)}: bad shape {shown(shape)}")


def check_tensors(
    tensors: Mapping[str, np.ndarray],
    expected: Mapping[str, tuple[str, tuple[int, ...]]],
    *,
    finite: bool = True,
    sparse: Collection[str] = (),
) -> None:
    """Require exactly the expected names with matching dtype and shape (and finite values), dense but
    those named in `sparse`, which may be SparseTensors (their values were checked finite by `decode`)."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing:
        raise MessageRejected(f"missing tensors {missing[:3]}")
    if extra:
        raise MessageRejected(f"unexpected tensors {shown(extra)}")
    for name, (dtype, shape) in expected.items():
        array = tensors[name]
        if isinstance(array, SparseTensor) and name not in sparse:
            raise MessageRejected(f"tensor {name!r} is sparse, expected dense")
        if array.dtype.name != dtype or tuple(array.shape) != tuple(shape):
            raise MessageRejected(
                f"tensor {name!r} is {array.dtype.name}{list(array.shape)}, expected {dtype}{list(shape)}"
            )
        if finite and isinstance(array, np.ndarray) and array.dtype.kind == "f" and not np.isfinite(array).all():
            raise MessageRejected(f"tensor {name!r} has non-finite values")

