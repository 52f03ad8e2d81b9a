import pytest

from aiaas.errors import UnknownModelVersion
from aiaas.registry import ArtifactCorrupted, Registry


def test_versions_are_monotonic_and_aliases_move(tmp_path):
    registry = Registry(tmp_path / "reg")
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"one")
    v1 = registry.register("vision", artifact, metrics={"accuracy": 0.9})
    artifact.write_bytes(b"two")
    v2 = registry.register("vision", artifact, aliases=("staging",), metrics={"accuracy": 0.95}, parent=1)
    assert (v1.version, v2.version) == (1, 2)
    assert registry.aliases("vision") == {"production": 1, "staging": 2}
    assert registry.resolve("vision", "staging").parent == 1
    assert registry.load_verified("vision", "production")[1] == b"one"
    assert registry.load_verified("vision", "v2")[1] == b"two"


def test_unknown_version_is_a_clear_error(tmp_path):
    with pytest.raises(UnknownModelVersion, match="aiaas models build vision"):
        Registry(tmp_path).resolve("vision", "production")


def test_tampered_artifact_is_refused(tmp_path):
    registry = Registry(tmp_path / "reg")
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"weights")
    registry.register("vision", artifact)
    (tmp_path / "reg" / "vision" / "v1" / "model.onnx").write_bytes(b"evil")
    with pytest.raises(ArtifactCorrupted):
        registry.load_verified("vision", "production")


def test_companion_files_are_verified_too(tmp_path):
    registry = Registry(tmp_path / "reg")
    artifact, table = tmp_path / "model.onnx", tmp_path / "seen.npz"
    artifact.write_bytes(b"weights")
    table.write_bytes(b"table")
    version = registry.register("recsys", artifact, companions=(table,))
    assert registry.load_companions(version) == {"seen.npz": b"table"}
    (tmp_path / "reg" / "recsys" / "v1" / "seen.npz").write_bytes(b"evil")
    with pytest.raises(ArtifactCorrupted, match="seen.npz"):
        registry.load_companions(version)
