import msgpack
import numpy as np
import pytest
from pydantic import ValidationError

from aiaas.contract.codec import decode_job, decode_result, encode
from aiaas.contract.envelopes import (
    ErrorInfo,
    Job,
    Result,
    Tensor,
    Timings,
    TrainingProgress,
    trusted,
)
from aiaas.errors import InvalidJob, PayloadTooLarge, UndecodableMessage

LIMIT = 1 << 20


def make_job(**overrides) -> Job:
    fields = dict(job_id="j1", model="vision",
                  inputs={"image": Tensor.from_numpy(np.arange(64, dtype=np.float32).reshape(8, 8))})
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


# -- trusted construction and the direct result encoding ------------------------------------------------------------


@pytest.mark.parametrize("cls", [Tensor, Timings, Result, ErrorInfo])
def test_trusted_models_have_nothing_model_construct_would_add(cls):
    # `trusted` skips model_construct's private-attribute and post-init steps: they must not exist.
    assert not cls.__private_attributes__
    assert cls.__pydantic_post_init__ is None
    assert cls.model_config.get("extra") != "allow"


def test_trusted_equals_model_construct_and_validation():
    values = {"dtype": "float32", "shape": [2], "data": b"\x00" * 8}
    made = trusted(Tensor, dict(values))
    assert made == Tensor.model_construct(**values) == Tensor(**values)
    assert made.model_fields_set == set(values)
    assert made.model_dump() == values
    with pytest.raises(ValidationError, match="frozen"):
        made.dtype = "int8"  # still frozen


def _results() -> list[Result]:
    rng = np.random.default_rng(7)
    timings = Timings(queue_wait_ms=1.5, inference_ms=0.25, batch_size=64)
    return [
        Result(job_id="a", model="vision", status="ok", model_version="3", timings=timings, completed_at=1.0,
               outputs={"label": 7, "probabilities": Tensor.from_numpy(rng.random(10, dtype=np.float32))}),
        Result(job_id="b", model="text", status="ok", attributes={"team": "x"},
               outputs={"labels": ["a", "b"], "scores": Tensor.from_numpy(rng.random((2, 3))), "flag": True,
                        "ratio": 0.5, "name": "n", "empty": Tensor.from_numpy(np.zeros((0, 4), np.int8))}),
        Result(job_id="c", model="recsys", status="error",
               error=ErrorInfo(type="InvalidJob", message="bad `k`", retriable=False)),
        Result(job_id="d", model="recsys", status="expired"),
        Result(job_id="e", model="text", status="running",
               progress=TrainingProgress(epoch=1, epochs=3, loss=0.5)),
    ]


@pytest.mark.parametrize("result", _results(), ids=lambda r: r.job_id)
def test_results_encode_to_the_same_bytes_as_their_pydantic_dump(result):
    expected = msgpack.packb(result.model_dump(mode="python", exclude_none=True), use_bin_type=True)
    assert encode(result) == expected
    assert decode_result(encode(result), 1 << 20) == result


def test_a_trusted_result_encodes_like_a_validated_one():
    tensor = Tensor.from_numpy(np.arange(3, dtype=np.int64))
    fields = dict(job_id="j", model="recsys", status="ok", outputs={"items": tensor}, model_version="1",
                  timings=trusted(Timings, {"queue_wait_ms": 2.0, "inference_ms": 1.0, "batch_size": 3}),
                  error=None, progress=None, chunk=None, completed_at=5.0, attributes={})
    assert encode(trusted(Result, dict(fields))) == encode(Result(**fields))
