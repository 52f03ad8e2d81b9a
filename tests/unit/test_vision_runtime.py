"""The real vision model (trained by the fixture, run by ONNX Runtime) without Kafka."""

import numpy as np
import pytest

from aiaas.contract.envelopes import Job, Tensor, stack_tensors
from aiaas.errors import InvalidJob
from aiaas.vision.data import load_split
from aiaas.vision.runtime import VisionRuntime


def image_job(array) -> Job:
    return Job(job_id="j", model="vision", inputs={"image": Tensor.from_numpy(np.asarray(array))})


@pytest.fixture(scope="module")
def runtime(vision_registry):
    return VisionRuntime.from_registry(vision_registry, "production", providers="cpu")


def test_held_out_accuracy_of_the_served_graph(runtime):
    split = load_split()
    items = [runtime.prepare(image_job(img[0])) for img in split.test_x]
    labels = [out["label"] for out in runtime.infer(items)]
    assert np.mean(np.array(labels) == split.test_y) >= 0.95


def test_registry_records_verifiable_metadata(vision_registry):
    version = vision_registry.resolve("vision", "production")
    assert version.metrics["accuracy"] >= 0.95 and version.data_hash and version.params["seed"] == 0


def test_outputs_are_a_label_and_a_probability_tensor(runtime):
    (out,) = runtime.infer([runtime.prepare(image_job(load_split().test_x[0]))])
    probs = out["probabilities"].to_numpy()
    assert probs.shape == (10,) and abs(probs.sum() - 1) < 1e-4 and out["label"] == int(probs.argmax())


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 4), np.float32), "shape|\\[8, 8\\]"),
    (np.zeros((8, 8), bool), "numeric"),
])
def test_bad_images_are_refused_with_a_reason(runtime, bad, message):
    with pytest.raises(InvalidJob, match=message):
        runtime.prepare(image_job(bad))


def test_out_of_range_values_fail_their_job_only_and_its_batch_mates_are_served(runtime):
    good = load_split().test_x[0][0]
    beyond_float32 = np.full((8, 8), 1e300)  # float64: must not become inf (or 16) in a cast first
    bad = [np.full((8, 8), np.nan, np.float32), np.full((8, 8), 99, np.float32), beyond_float32,
           np.full((8, 8), -np.inf), np.full((8, 8), -1, np.int64)]
    batch = [good, *bad, good.astype(np.uint8)]
    outputs = runtime.infer([runtime.prepare(image_job(image)) for image in batch])
    alone = runtime.infer([runtime.prepare(image_job(good))])[0]
    for out in outputs[1:-1]:
        assert isinstance(out, InvalidJob) and "finite and within 0..16" in str(out)
    for out in (outputs[0], outputs[-1]):
        assert out["label"] == alone["label"]
        np.testing.assert_allclose(out["probabilities"].to_numpy(), alone["probabilities"].to_numpy(), atol=1e-6)


def test_an_image_whose_bytes_do_not_fit_its_shape_is_refused(runtime):
    short = Tensor(dtype="float32", shape=[8, 8], data=bytes(4 * 63))
    with pytest.raises(InvalidJob, match="252 bytes but dtype float32 x shape \\[8, 8\\] needs 256"):
        runtime.prepare(Job(job_id="j", model="vision", inputs={"image": short}))


@pytest.mark.parametrize("dtypes", [("float32",) * 3, ("uint8", "float32", "int64")])
def test_stacked_tensors_are_what_numpy_stacks(dtypes):
    arrays = [np.arange(64).reshape(1, 8, 8).astype(dtype) * (i + 1) for i, dtype in enumerate(dtypes)]
    stacked = stack_tensors([Tensor.from_numpy(array) for array in arrays], (8, 8))
    expected = np.stack([array.reshape(8, 8) for array in arrays])
    assert stacked.dtype == expected.dtype and stacked.shape == (len(arrays), 8, 8)
    np.testing.assert_array_equal(stacked, expected)


def test_rows_become_tensors_like_from_numpy():
    array = np.arange(24, dtype=">f8").reshape(4, 2, 3)
    assert Tensor.rows(array) == [Tensor.from_numpy(row) for row in array]
    assert Tensor.rows(np.zeros((0, 3), np.float32)) == []


def test_missing_image_input_is_refused(runtime):
    with pytest.raises(InvalidJob, match="`image`"):
        runtime.prepare(Job(job_id="j", model="vision", inputs={"text": "hi"}))


def test_serves_its_number_and_aliases(runtime):
    assert runtime.serves("1") and runtime.serves("v1") and runtime.serves("production") and not runtime.serves("2")


@pytest.mark.gpu
def test_cuda_runs_when_a_gpu_is_there(vision_registry):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no CUDA execution provider in this ONNX Runtime (CPU machine; install aiaas[gpu] on a GPU host)")
    runtime = VisionRuntime.from_registry(vision_registry, "production", providers="cuda")
    assert runtime.providers[0] == "CUDAExecutionProvider"
