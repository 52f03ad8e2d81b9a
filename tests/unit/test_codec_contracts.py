import msgpack
import numpy as np
import pytest

from aiaas.codec import decode_job, decode_result, encode
from aiaas.contracts import ErrorInfo, Job, Result, Tensor, Timings
from aiaas.errors import InvalidJob, PayloadTooLarge, UndecodableMessage

LIMIT = 1 << 20


def make_job(**overrides) -> Job:
    fields = dict(job_id="j1", model="vision", inputs={"image": Tensor.from_numpy(np.arange(64, dtype=np.float32).reshape(8, 8))})
    return Job(**(fields | overrides))


def test_job_round_trips_with_tensor_bytes_intact():
    job = make_job(priority=5, tenant="acme", attributes={"k": "v"}, deadline=123.0)
    back = decode_job(encode(job), LIMIT)
    assert back == job
    np.testing.assert_array_equal(back.inputs["image"].to_numpy(), np.arange(64, dtype=np.float32).reshape(8, 8))


def test_result_round_trips():
    result = Result(job_id="j1", model="vision", status="error", error=ErrorInfo(type="InvalidJob", message="bad"),
                    timings=Timings(queue_wait_ms=1.5, inference_ms=2.0, batch_size=3))
    assert decode_result(encode(result), LIMIT) == result


def test_tensor_whose_bytes_do_not_match_shape_is_refused():
    tensor = Tensor(dtype="float32", shape=[8, 8], data=b"\x00" * 10)
    with pytest.raises(ValueError, match="needs 256"):
        tensor.to_numpy()


def test_big_endian_arrays_are_stored_little_endian():
    array = np.arange(4, dtype=">i4")
    np.testing.assert_array_equal(Tensor.from_numpy(array).to_numpy(), np.arange(4))


@pytest.mark.parametrize(
    "raw, error",
    [
        (b"\xc1not msgpack", UndecodableMessage),
        (msgpack.packb([1, 2, 3]), UndecodableMessage),
        (b"\xdd\xff\xff\xff\xff", UndecodableMessage),  # array header claiming 4 billion items
        (msgpack.packb({"job_id": "x", "model": "vision", "priority": "high"}), InvalidJob),
        (msgpack.packb({"model": "vision"}), InvalidJob),  # missing job id
        (msgpack.packb({"job_id": "x", "model": "Not A Model!"}), InvalidJob),
        (msgpack.packb({"job_id": "x", "model": "vision", "surprise": 1}), InvalidJob),
    ],
)
def test_hostile_or_wrong_messages_raise_a_named_error(raw, error):
    with pytest.raises(error):
        decode_job(raw, LIMIT)


def test_oversized_message_is_refused_before_decoding():
    with pytest.raises(PayloadTooLarge, match="limit is 100"):
        decode_job(b"\x00" * 101, 100)


def test_invalid_job_message_names_the_field():
    with pytest.raises(InvalidJob, match="priority"):
        decode_job(msgpack.packb({"job_id": "x", "model": "vision", "priority": "high"}), LIMIT)
