"""A corpus of hostile job messages: what a buggy or malicious publisher can put on an infer topic.

`hostile_messages()` returns one `HostileMessage` per case: the Kafka key and value bytes, and
whether a job id can be recovered (from the envelope or, failing that, the key) so that an
error result is expected. A key is a job id only when it could be one under the contract:
1 to 128 bytes of UTF-8. Every case must end as a dead letter (`aiaas.dlq`); none may crash
or stall the worker, or make it allocate much more than the message itself.

The cases, by family (the `name` of each message says which one it is):
* bytes that are not a msgpack envelope: random bytes, an empty value, truncated msgpack,
  trailing garbage, a top-level array / string / integer / nil, non-string map keys,
  invalid UTF-8 in a string, msgpack ext types and timestamps;
* msgpack bombs: array and map headers claiming 2**32-1 elements, str and bin headers
  claiming gigabytes (at the top level and inside a tensor), 100k nested arrays and maps,
  1000 nested arrays inside an input (within msgpack's own stack limit), 1000 nested array
  headers that each claim 4095 elements (32 MB to a decoder that trusts them), and
  hundreds of thousands of tiny values inside the size limit;
* wrong types and values in the envelope: job id as an integer / empty / 10k characters /
  missing (with and without a key), inputs as a list or a string, priority "high" and
  out of range, deadline as a string / NaN, created_at infinite, unknown kind, unknown or
  malformed model, a model other than the topic's, an unknown task, a model version that
  looks like a path, a bad reply_to, non-string attributes, extra unknown fields, an
  inputs map with 10k keys (and one with 100), a non-UTF-8 key, a 10k-byte key and (with
  `max_bytes`) a key of 0.6 × max_bytes, too big to echo on a result or a dead letter;
* bad tensors: bytes that do not match dtype × shape (too few, too many), dtypes that are
  not allowed (`object`, `<U10`, `float128`, big-endian), negative, huge and overflowing
  shapes, too many dimensions, a tensor with extra fields or without data;
* bad images (vision): NaN, +inf and -inf pixels, values out of 0..16, a float64 that
  overflows float32, the wrong shape, a bool image, an image that is not a tensor;
* an oversize payload (only when `max_bytes` is given): one byte more than the limit.

Each message is built on its own and is small (at most a few hundred KiB), except the
oversize one. This module imports only numpy, msgpack and aiaas, so a load test or a fuzzing
script can use it as well as the tests.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import msgpack
import numpy as np

from aiaas.contract.codec import encode
from aiaas.contract.envelopes import Job, Tensor

__all__ = ["HostileMessage", "hostile_messages", "oversize_key_message", "job_id_of_key", "good_vision_job",
           "GOOD_IMAGE"]

GOOD_IMAGE = (np.arange(64, dtype=np.uint8) % 17).reshape(8, 8)
"""A valid 8x8 vision image (values 0..16)."""


@dataclass(frozen=True)
class HostileMessage:
    """One hostile record for an infer topic."""

    name: str
    """What the case is, e.g. `array_header_4g`; unique within a corpus."""
    key: bytes | None
    """The Kafka key (None: no key)."""
    value: bytes
    """The Kafka value (the message bytes)."""
    job_id_known: bool
    """True when a job id is recoverable (from the envelope, else the key): an error result is expected."""
    error_type: str
    """The error type the worker should report (`UndecodableMessage`, `InvalidJob`, ...)."""

    @property
    def expected_job_id(self) -> str | None:
        """The job id an error result should carry, when one is known (every case's key is its job id then)."""
        return job_id_of_key(self.key) if self.job_id_known else None


def job_id_of_key(key: bytes | None) -> str | None:
    """The job id a key stands for: 1 to 128 bytes of UTF-8 (what the contract allows a job id); else None."""
    if not key or len(key) > 128:
        return None
    try:
        return key.decode()
    except UnicodeDecodeError:
        return None


def good_vision_job(job_id: str, image: np.ndarray = GOOD_IMAGE) -> bytes:
    """A valid vision job envelope (msgpack bytes) for `image`."""
    return encode(Job(job_id=job_id, model="vision", inputs={"image": Tensor.from_numpy(image)}))


def _tensor(dtype: object = "uint8", shape: object = (8, 8), data: object = None, **extra: object) -> dict:
    """A tensor map as a publisher could write it, right or wrong."""
    shape = list(shape) if isinstance(shape, tuple) else shape
    if data is None:
        data = GOOD_IMAGE.tobytes()
    return {"dtype": dtype, "shape": shape, "data": data, **extra}


def _image(array: np.ndarray) -> dict:
    array = np.ascontiguousarray(array)
    return _tensor(str(array.dtype), tuple(array.shape), array.tobytes())


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _nested_bytes(opener: bytes, depth: int, leaf: bytes = b"\xc0") -> bytes:
    """`depth` containers of one element each (opener is its header), around `leaf`."""
    return opener * depth + leaf


def hostile_messages(model: str = "vision", prefix_job_id: str = "hostile", *,
                     max_bytes: int | None = None) -> list[HostileMessage]:
    """The whole corpus for jobs on `<prefix>.<model>.infer`.

    Job ids and keys are `<prefix_job_id>-<name>` (the 10k-character id and the non-UTF-8 key
    add to it), so two corpora with different prefixes never share a job id. With `max_bytes` (the service's
    AIAAS_KAFKA_MAX_MESSAGE_BYTES), an `oversize` case of max_bytes + 1 bytes is included.
    Tensor and image cases use the vision input name `image`; for another model they are
    still invalid jobs (a missing or unknown input, or a missing task).
    """
    other_model = "text" if model != "text" else "vision"
    cases: list[HostileMessage] = []

    def add(name: str, value: bytes | Callable[[str], bytes], error_type: str, *,
            key: bytes | None | Callable[[str], bytes] = _job_id_key, known: bool | None = None) -> None:
        job_id = f"{prefix_job_id}-{name}"
        raw_key = key(job_id) if callable(key) else key
        payload = value(job_id) if callable(value) else value
        known = job_id_of_key(raw_key) is not None if known is None else known
        cases.append(HostileMessage(name, raw_key, payload, known, error_type))

    def envelope(job_id: str, /, **fields: object) -> dict:
        """A valid-looking vision envelope with `fields` replaced (a field set to ... is left out)."""
        base = {"job_id": job_id, "model": model, "inputs": {"image": _tensor()}}
        base |= fields
        return {k: v for k, v in base.items() if v is not ...}

    def job(**fields: object) -> Callable[[str], bytes]:
        return lambda job_id: _pack(envelope(job_id, **fields))

    def image(tensor: dict) -> Callable[[str], bytes]:
        return job(inputs={"image": tensor})

    undecodable, invalid = "UndecodableMessage", "InvalidJob"

    # -- not a msgpack envelope ---------------------------------------------------------------------
    rng = np.random.default_rng(20240601)
    random_bytes = b"\xc1" + rng.bytes(511)  # 0xc1 is never valid msgpack: these can not decode by chance
    add("random_bytes", random_bytes, undecodable)
    add("random_bytes_no_key", random_bytes, undecodable, key=None)
    add("empty_value", b"", undecodable)
    add("empty_value_empty_key", b"", undecodable, key=b"")
    add("truncated", lambda job_id: good_vision_job(job_id)[:40], undecodable)
    add("trailing_garbage", lambda job_id: good_vision_job(job_id) + b"\x00garbage", undecodable)
    add("top_level_array", lambda job_id: _pack([job_id, model, {"image": _tensor()}]), undecodable)
    add("top_level_string", _pack("please classify this"), undecodable)
    add("top_level_int", _pack(42), undecodable)
    add("top_level_nil", b"\xc0", undecodable)
    add("non_string_map_keys", lambda job_id: _pack({1: job_id, 2: model}), undecodable)
    add("invalid_utf8_string", b"\x82\xa6job_id\xa4\xff\xfe\xfd\xfc\xa5model\xa6vision", undecodable)
    add("ext_type", job(inputs={"image": msgpack.ExtType(42, b"\x00" * 64)}), undecodable)
    add("timestamp_ext", job(created_at=msgpack.Timestamp(1_700_000_000, 0)), undecodable)

    # -- msgpack bombs -----------------------------------------------------------------------------
    add("array_header_4g", b"\xdd\xff\xff\xff\xff" + b"\x00" * 16, undecodable)
    add("map_header_4g", b"\xdf\xff\xff\xff\xff" + b"\xa1a\x00" * 4, undecodable)
    add("str_header_4g", b"\xdb\xff\xff\xff\xff" + b"abc", undecodable)
    add("bin_header_4g", b"\xc6\xff\xff\xff\xff" + b"abc", undecodable)
    add("bin_header_1g_in_tensor", lambda job_id: _bin_bomb_in_tensor(job_id, model), undecodable)
    add("nested_arrays_100k", _nested_bytes(b"\x91", 100_000), undecodable)
    add("nested_maps_100k", _nested_bytes(b"\x81\xa1a", 100_000), undecodable)
    add("nested_arrays_1000_in_input", lambda job_id: _with_raw_field(job_id, model, b"\xa6inputs",
        b"\x81\xa5image" + _nested_bytes(b"\x91", 1000)), invalid)
    add("nested_preallocated_arrays", _nested_bytes(b"\xdc\x0f\xff", 1000, b""), undecodable)
    add("many_tiny_values", job(inputs={"image": _tensor()}, attributes={"pad": [[[]] * 4000] * 40}), undecodable)
    add("many_small_strings", job(inputs={f"t{i}": ["ab"] * 4000 for i in range(20)}), undecodable)
    add("inputs_10k_keys", job(inputs={f"in{i}": 0 for i in range(10_000)}), undecodable)

    # -- wrong types and values in the envelope ------------------------------------------------------
    add("job_id_int", job(job_id=12345), invalid)
    add("job_id_empty", job(job_id=""), invalid)
    add("job_id_10k_chars", lambda job_id: _pack(envelope(_long(job_id))), invalid)
    add("job_id_10k_chars_as_key", lambda job_id: _pack(envelope(_long(job_id))), invalid,
        key=lambda job_id: _long(job_id).encode())
    add("missing_job_id_with_key", job(job_id=...), invalid)
    add("missing_job_id_no_key", job(job_id=...), invalid, key=None)
    add("missing_model", job(model=...), invalid)
    add("inputs_list", job(inputs=[_tensor()]), invalid)
    add("inputs_string", job(inputs="image"), invalid)
    add("inputs_100_keys", job(inputs={f"in{i}": i for i in range(100)}), invalid)
    add("priority_string", job(priority="high"), invalid)
    add("priority_out_of_range", job(priority=2**63), invalid)
    add("deadline_string", job(deadline="tomorrow"), invalid)
    add("deadline_nan", job(deadline=float("nan")), invalid)
    add("created_at_inf", job(created_at=float("-inf")), invalid)
    add("kind_train_on_infer_topic", job(kind="train"), invalid)
    add("kind_unknown", job(kind="delete"), invalid)
    add("model_unknown", job(model="nosuchmodel"), invalid)
    add("model_malformed", job(model="Vision Service!"), invalid)
    add("model_other_topic", job(model=other_model), invalid)
    add("task_unknown", job(task="segment"), invalid)
    add("task_int", job(task=7), invalid)
    add("model_version_path", job(model_version="../../../etc/passwd"), "UnknownModelVersion")
    add("reply_to_malformed", job(reply_to="../results; rm -rf"), invalid)
    add("attributes_not_strings", job(attributes={"a": 1, "b": [1, 2]}), invalid)
    add("extra_unknown_fields", job(colour="blue", admin=True), invalid)
    add("non_utf8_key", random_bytes, undecodable, key=lambda job_id: b"\xff\xfe\xfd-" + job_id.encode())

    # -- bad tensors ---------------------------------------------------------------------------------
    add("tensor_too_few_bytes", image(_tensor(data=b"\x01" * 63)), invalid)
    add("tensor_too_many_bytes", image(_tensor(data=b"\x01" * 65)), invalid)
    add("tensor_float32_shape_uint8_bytes", image(_tensor("float32", data=b"\x01" * 64)), invalid)
    add("tensor_empty_data", image(_tensor(data=b"")), invalid)
    add("dtype_object", image(_tensor("object")), invalid)
    add("dtype_unicode", image(_tensor("<U10")), invalid)
    add("dtype_float128", image(_tensor("float128", data=b"\x00" * 64 * 16)), invalid)
    add("dtype_big_endian", image(_tensor(">f4", data=b"\x00" * 256)), invalid)
    add("dtype_int", image(_tensor(7)), invalid)
    add("shape_negative", image(_tensor(shape=[-8, -8])), invalid)
    add("shape_huge", image(_tensor(shape=[2**40, 8])), invalid)
    add("shape_overflows_int64", image(_tensor(shape=[2**32, 2**32, 2**32])), invalid)
    add("shape_zero_times_huge", image(_tensor(shape=[0, 2**63], data=b"")), invalid)
    add("shape_rank_9", image(_tensor(shape=[1] * 7 + [8, 8])), invalid)
    add("shape_not_a_list", image(_tensor(shape="8x8")), invalid)
    add("shape_fractional", image(_tensor(shape=[8.5, 8])), invalid)
    add("tensor_extra_field", image(_tensor(strides=[8, 1])), invalid)
    add("tensor_without_data", image({"dtype": "uint8", "shape": [8, 8]}), invalid)

    # -- bad images (the vision contract) -------------------------------------------------------------
    add("pixels_nan", image(_image(np.full((8, 8), np.nan, np.float32))), invalid)
    add("pixels_pos_inf", image(_image(_with(GOOD_IMAGE.astype(np.float32), 3, np.inf))), invalid)
    add("pixels_neg_inf", image(_image(_with(GOOD_IMAGE.astype(np.float32), 5, -np.inf))), invalid)
    add("pixels_nan_float16", image(_image(_with(GOOD_IMAGE.astype(np.float16), 0, np.nan))), invalid)
    add("pixels_float64_overflows_float32", image(_image(np.full((8, 8), 1e300))), invalid)
    add("pixels_out_of_range", image(_image(np.full((8, 8), 99, np.int32))), invalid)
    add("pixels_negative", image(_image(np.full((8, 8), -1, np.int8))), invalid)
    add("image_wrong_shape", image(_image(np.zeros((4, 16), np.uint8))), invalid)
    add("image_bool", image(_image(np.zeros((8, 8), bool))), invalid)
    add("image_not_a_tensor", image("a picture of a seven"), invalid)  # type: ignore[arg-type]
    add("image_missing", job(inputs={"picture": _tensor()}), invalid)

    if max_bytes is not None:
        add("oversize", lambda job_id: _oversize(job_id, model, max_bytes), "PayloadTooLarge")
        cases.append(oversize_key_message(max_bytes, prefix_job_id))
    assert len({c.name for c in cases}) == len(cases), "case names must be unique"
    return cases


def oversize_key_message(max_bytes: int, prefix_job_id: str = "hostile") -> HostileMessage:
    """Garbage under a key of 0.6 x max_bytes (in `hostile_messages` when it is given max_bytes).

    A key that long cannot be a job id (at most 128 characters), so no error result is expected;
    echoing it as one would make a result whose key plus value the producer refuses to send, and
    echoing it on the dead letter next to the message could too.
    """
    key = f"{prefix_job_id}-key_too_big_to_echo-".encode() + b"k" * (max_bytes * 3 // 5)
    return HostileMessage("key_too_big_to_echo", key, b"\xc1 not msgpack", False, "UndecodableMessage")


def _job_id_key(job_id: str) -> bytes:
    """The usual key: the job id."""
    return job_id.encode()


def _long(job_id: str) -> str:
    """A job id of more than 10k characters (the contract allows 128)."""
    return f"{job_id}-" + "j" * 10_000


def _with(array: np.ndarray, flat_index: int, value: float) -> np.ndarray:
    out = array.copy()
    out.flat[flat_index] = value
    return out


def _with_raw_field(job_id: str, model: str, name: bytes, raw_value: bytes) -> bytes:
    """An envelope map whose last field `name` holds `raw_value` (msgpack bytes written by hand)."""
    head = _pack({"job_id": job_id, "model": model})
    assert head[0] == 0x82
    return b"\x83" + head[1:] + name + raw_value


def _bin_bomb_in_tensor(job_id: str, model: str) -> bytes:
    """A tensor whose `data` bin header claims 1 GiB, followed by a few bytes."""
    tensor = b"\x83\xa5dtype\xa5uint8\xa5shape\x92\x08\x08\xa4data" + b"\xc6" + struct.pack(">I", 1 << 30) + b"\x00" * 8
    return _with_raw_field(job_id, model, b"\xa6inputs", b"\x81\xa5image" + tensor)


def _oversize(job_id: str, model: str, max_bytes: int) -> bytes:
    """A well-formed job whose image data makes it exactly max_bytes + 1 bytes long."""
    def build(n: int) -> bytes:
        return _pack({"job_id": job_id, "model": model,
                      "inputs": {"image": _tensor("uint8", [n], b"\x00" * n)}})

    probe = build(max_bytes)
    n = max_bytes - (len(probe) - (max_bytes + 1))
    raw = build(n)
    assert len(raw) == max_bytes + 1, (len(raw), max_bytes)
    return raw
