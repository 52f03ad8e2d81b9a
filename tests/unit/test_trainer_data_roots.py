"""A training job's data is untrusted: files only under the data roots, bounded bytes, rows, epochs and batch size."""

from __future__ import annotations

import io
import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from aiaas.contract.envelopes import Job, Tensor
from aiaas.errors import InvalidJob
from aiaas.training.data_files import DataLimits, read_data_file
from aiaas.training.request import TrainingRequest
from aiaas.training.settings import TrainerSettings

OUTSIDE = "is not a file under the trainer's data roots"


@pytest.fixture
def roots(tmp_path) -> tuple[Path, Path]:
    """(a data root, a folder next to it that is not one), each with a readable JSONL file."""
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (root / "ok.jsonl").write_text('{"x": 1}\n')
    (elsewhere / "secret.jsonl").write_text('{"secret": 1}\n')
    return root, elsewhere


def limits(root: Path, max_bytes: int = 1 << 20, max_rows: int = 100) -> DataLimits:
    return DataLimits((root,), max_bytes, max_rows)


def refusal(uri: str, data_limits: DataLimits) -> str:
    with pytest.raises(InvalidJob) as refused:
        read_data_file(uri, None, data_limits)
    return str(refused.value)


# --- where files may be read ---------------------------------------------------------------------


def test_a_file_under_a_root_is_read_by_path_or_file_uri(roots):
    root, _ = roots
    assert read_data_file(str(root / "ok.jsonl"), None, limits(root)) == {"x": [1]}
    assert read_data_file((root / "ok.jsonl").as_uri(), None, limits(root)) == {"x": [1]}


def test_a_relative_path_is_taken_inside_the_first_root(roots, tmp_path, monkeypatch):
    root, _ = roots
    monkeypatch.chdir(tmp_path)  # the working folder holds `elsewhere/`: it must not be what a relative path means
    assert read_data_file("ok.jsonl", None, limits(root)) == {"x": [1]}
    assert "does not exist" in refusal("elsewhere/secret.jsonl", limits(root))  # root/elsewhere/…, not ./elsewhere
    assert OUTSIDE in refusal("../elsewhere/secret.jsonl", limits(root))


def test_files_outside_the_roots_get_one_message_whether_they_exist_or_not(roots):
    root, elsewhere = roots
    present = refusal(str(elsewhere / "secret.jsonl"), limits(root))
    missing = refusal(str(elsewhere / "nothing-here.jsonl"), limits(root))
    assert OUTSIDE in present and OUTSIDE in missing
    assert present.replace("secret", "X") == missing.replace("nothing-here", "X")  # only the echoed uri differs
    assert refusal("/etc/passwd", limits(root)) == refusal("/etc/no-such-file", limits(root)).replace(
        "no-such-file", "passwd")


def test_dot_dot_cannot_leave_a_root(roots):
    root, _ = roots
    assert OUTSIDE in refusal(str(root / ".." / "elsewhere" / "secret.jsonl"), limits(root))
    assert OUTSIDE in refusal(f"{root}/../../../../etc/passwd", limits(root))


def test_a_symlink_inside_a_root_to_a_file_outside_is_refused_like_any_outside_file(roots):
    root, elsewhere = roots
    (root / "link.jsonl").symlink_to(elsewhere / "secret.jsonl")
    (root / "dangling.jsonl").symlink_to(elsewhere / "missing.jsonl")
    (root / "dir-link").symlink_to(elsewhere, target_is_directory=True)
    for name in ("link.jsonl", "dangling.jsonl", "dir-link/secret.jsonl", "dir-link/missing.jsonl"):
        message = refusal(str(root / name), limits(root))
        assert OUTSIDE in message and str(elsewhere) not in message, message  # the link's target is never shown


def test_a_symlink_that_stays_inside_the_roots_is_followed(roots):
    root, _ = roots
    (root / "alias.jsonl").symlink_to(root / "ok.jsonl")
    assert read_data_file(str(root / "alias.jsonl"), None, limits(root)) == {"x": [1]}


def test_a_root_that_is_itself_a_symlink_works(roots, tmp_path):
    root, _ = roots
    (tmp_path / "root-link").symlink_to(root, target_is_directory=True)
    assert read_data_file(str(root / "ok.jsonl"), None, limits(tmp_path / "root-link")) == {"x": [1]}


def test_several_roots_and_no_roots(roots):
    root, elsewhere = roots
    both = DataLimits((root, elsewhere), 1 << 20, 100)
    assert read_data_file(str(elsewhere / "secret.jsonl"), None, both) == {"secret": [1]}
    assert OUTSIDE in refusal(str(root / "ok.jsonl"), DataLimits((), 1 << 20, 100))  # no roots: no files


@pytest.mark.parametrize("uri", ["file://other-host/etc/passwd", "/tmp/a\0b.jsonl", "file:///tmp/a%00b.jsonl",
                                 "x" * 10_000 + ".jsonl", "http://[::1"])
def test_odd_uris_are_refused_without_raising_anything_else(roots, uri):
    root, _ = roots
    with pytest.raises(InvalidJob):
        read_data_file(uri, None, limits(root))


def test_a_missing_file_inside_a_root_says_so(roots):
    root, _ = roots
    assert "does not exist" in refusal(str(root / "missing.jsonl"), limits(root))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_inside_a_root_is_refused_without_blocking(roots):
    root, _ = roots
    os.mkfifo(root / "pipe.jsonl")  # opening it for reading would wait for a writer for ever
    assert "not a regular file" in refusal(str(root / "pipe.jsonl"), limits(root))


# --- how much is read ----------------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")
def test_at_most_the_limit_is_read_whatever_the_file_size_says():
    status = Path("/proc/self/status")  # a regular file whose st_size is 0, with a kilobyte or more inside
    assert status.stat().st_size == 0 and len(status.read_bytes()) > 200
    with pytest.raises(InvalidJob, match="larger than 100 bytes"):
        read_data_file(str(status), None, limits(Path("/proc/self"), max_bytes=100))
    with pytest.raises(InvalidJob, match="use .parquet, .npz or .jsonl"):  # under a big enough limit it is read
        read_data_file(str(status), None, limits(Path("/proc/self"), max_bytes=1 << 20))


def test_a_file_one_byte_over_the_limit_is_refused(roots):
    root, _ = roots
    size = (root / "ok.jsonl").stat().st_size
    assert read_data_file(str(root / "ok.jsonl"), None, limits(root, max_bytes=size)) == {"x": [1]}
    assert "larger than" in refusal(str(root / "ok.jsonl"), limits(root, max_bytes=size - 1))


def test_jsonl_rows_past_the_limit_are_refused(roots):
    root, _ = roots
    (root / "rows.jsonl").write_text("".join(json.dumps({"x": i}) + "\n" for i in range(11)))
    assert len(read_data_file(str(root / "rows.jsonl"), None, limits(root, max_rows=11))["x"]) == 11
    assert "more than 10 rows" in refusal(str(root / "rows.jsonl"), limits(root, max_rows=10))


def test_jsonl_rows_with_other_keys_are_refused_rather_than_paired_with_other_rows(roots):
    root, _ = roots
    (root / "mixed.jsonl").write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n{"response": "d"}\n')
    with pytest.raises(InvalidJob, match="line 2 has the keys prompt; .* every line needs the same keys"):
        read_data_file(str(root / "mixed.jsonl"), None, limits(root))


def test_npz_rows_and_unpacked_size_are_checked_before_unpacking(roots):
    root, _ = roots
    np.savez(root / "rows.npz", labels=np.arange(11))
    assert "more than 10 rows" in refusal(str(root / "rows.npz"), limits(root, max_rows=10))
    # A zip bomb: 64 MiB of zeros packs into about 64 KiB; the header says what it would unpack to.
    np.savez_compressed(root / "bomb.npz", images=np.zeros((8, 1 << 20), np.float64))
    assert (root / "bomb.npz").stat().st_size < 1 << 20
    assert "unpack to more than" in refusal(str(root / "bomb.npz"), limits(root, max_bytes=1 << 20))


def test_parquet_rows_and_unpacked_size_are_checked(roots):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root, _ = roots
    pq.write_table(pa.table({"x": list(range(11))}), root / "rows.parquet")
    assert "more than 10 rows" in refusal(str(root / "rows.parquet"), limits(root, max_rows=10))
    # Dictionary encoding stores one 100 kB string once for all its rows: 10 MB once read, in a 100 kB file.
    pq.write_table(pa.table({"texts": ["a" * 100_000] * 100}), root / "bomb.parquet")
    assert (root / "bomb.parquet").stat().st_size < 200_000
    assert "unpack to more than" in refusal(str(root / "bomb.parquet"), limits(root, max_bytes=1 << 20))
    # So do run-length encoded numbers in nested lists: 8 MB of zeros as images.
    pq.write_table(pa.table({"images": [[[0.0] * 1000] * 100] * 10}), root / "images.parquet")
    assert "unpack to more than" in refusal(str(root / "images.parquet"), limits(root, max_bytes=1 << 20))
    assert len(read_data_file(str(root / "images.parquet"), None, limits(root, max_bytes=16 << 20))["images"]) == 10


# --- the job's inputs ----------------------------------------------------------------------------


def settings(root: Path, **changes) -> TrainerSettings:
    return TrainerSettings(data_roots=[root], **changes)


def parse(settings_: TrainerSettings, **inputs) -> TrainingRequest:
    return TrainingRequest.from_job(Job(job_id="t", kind="train", model="vision", inputs=inputs), settings_)


def test_a_data_uri_is_read_only_under_the_configured_roots(roots):
    root, elsewhere = roots
    assert parse(settings(root), data_uri=str(root / "ok.jsonl")).data == {"x": [1]}
    with pytest.raises(InvalidJob, match=OUTSIDE):
        parse(settings(root), data_uri=str(elsewhere / "secret.jsonl"))


@pytest.mark.parametrize("name, limit_setting", [("epochs", "max_epochs"), ("batch_size", "max_batch_size")])
def test_epochs_and_batch_size_have_upper_bounds(roots, name, limit_setting):
    root, _ = roots
    bounded = settings(root, **{limit_setting: 50})
    assert parse(bounded, **{name: 50}).params == {name: 50}
    with pytest.raises(InvalidJob, match=rf"`{name}` must be at most 50 on this trainer \(AIAAS_TRAINER_MAX_"):
        parse(bounded, **{name: 51})


def test_inline_data_rows_have_an_upper_bound(roots):
    root, _ = roots
    bounded = settings(root, max_data_rows=5)
    images = np.zeros((6, 8, 8), np.float32)
    labels = Tensor.from_numpy(np.zeros(6, np.int64))
    assert len(parse(bounded, images=Tensor.from_numpy(images[:5]), labels=["0"] * 5).data["labels"]) == 5
    with pytest.raises(InvalidJob, match="has 6 rows; the trainer accepts at most 5"):
        parse(bounded, images=Tensor.from_numpy(images), labels=labels)
    with pytest.raises(InvalidJob, match="at most 5"):
        parse(bounded, texts=["a"] * 6, labels=["x"] * 6)


def test_file_rows_have_the_same_bound(roots):
    root, _ = roots
    (root / "rows.jsonl").write_text("".join(json.dumps({"x": i}) + "\n" for i in range(6)))
    with pytest.raises(InvalidJob, match="more than 5 rows"):
        parse(settings(root, max_data_rows=5), data_uri=str(root / "rows.jsonl"))


# --- the settings --------------------------------------------------------------------------------


def test_data_roots_default_to_the_home_data_folder_and_read_a_path_list(monkeypatch, tmp_path):
    monkeypatch.setenv("AIAAS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AIAAS_TRAINER_DATA_ROOTS", raising=False)
    assert TrainerSettings().data_roots == [tmp_path / "home" / "data"]
    monkeypatch.setenv("AIAAS_TRAINER_DATA_ROOTS", os.pathsep.join(["/data/a", "/data/b"]))
    assert TrainerSettings().data_roots == [Path("/data/a"), Path("/data/b")]
    monkeypatch.setenv("AIAAS_TRAINER_DATA_ROOTS", '["/data/c"]')
    assert TrainerSettings().data_roots == [Path("/data/c")]
    monkeypatch.setenv("AIAAS_TRAINER_DATA_ROOTS", "")
    assert TrainerSettings().data_roots == []


def test_every_trainer_setting_is_described():
    assert all(field.description for field in TrainerSettings.model_fields.values())


def _zip_with(member: str, payload: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(member, payload)
    return buffer.getvalue()


def test_an_npz_with_a_lying_or_odd_header_is_an_invalid_job(roots):
    root, _ = roots
    (root / "junk.npz").write_bytes(_zip_with("a.npy", b"\x93NUMPY\x09\x00junk"))
    assert "not supported" in refusal(str(root / "junk.npz"), limits(root))
    (root / "short.npz").write_bytes(_zip_with("a.npy", b"\x93NUMPY\x01\x00\xff\xff{'descr'"))
    assert "cannot be read" in refusal(str(root / "short.npz"), limits(root))
