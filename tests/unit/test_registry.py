import json

import pytest

from aiaas.errors import ArtifactCorrupted, NothingToRollBack, UnknownModelVersion
from aiaas.registry.store import Registry
from aiaas.training.promotion import PromotionPolicy, default_policy


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


def test_a_file_two_versions_share_is_stored_once(tmp_path):
    registry = Registry(tmp_path / "reg")
    encoder, head = tmp_path / "encoder.onnx", tmp_path / "head.npz"
    encoder.write_bytes(b"the same encoder" * 1000)
    for weights in (b"head one", b"head two"):
        head.write_bytes(weights)
        registry.register("text", encoder, companions=(head,))
    first, second = (tmp_path / "reg" / "text" / f"v{n}" / "encoder.onnx" for n in (1, 2))
    assert first.stat().st_ino == second.stat().st_ino  # one file on disk, linked from both versions
    assert len(list((tmp_path / "reg" / ".blobs" / "sha256").iterdir())) == 3  # the encoder, two heads
    assert registry.models() == ["text"]
    assert registry.load_companions(registry.resolve("text", "v2"))["head.npz"] == b"head two"


def test_unknown_version_is_a_clear_error(tmp_path):
    with pytest.raises(UnknownModelVersion, match="aiaas models build vision"):
        Registry(tmp_path).resolve("vision", "production")


def test_tampered_artifact_is_refused(tmp_path):
    registry = Registry(tmp_path / "reg")
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"weights")
    registry.register("vision", artifact)
    stored = tmp_path / "reg" / "vision" / "v1" / "model.onnx"
    stored.chmod(0o644)  # stored read-only: an attacker with the rights to change that
    stored.write_bytes(b"evil")
    with pytest.raises(ArtifactCorrupted):
        registry.load_verified("vision", "production")


def test_companion_files_are_verified_too(tmp_path):
    registry = Registry(tmp_path / "reg")
    artifact, table = tmp_path / "model.onnx", tmp_path / "seen.npz"
    artifact.write_bytes(b"weights")
    table.write_bytes(b"table")
    version = registry.register("recsys", artifact, companions=(table,))
    assert registry.load_companions(version) == {"seen.npz": b"table"}
    stored = tmp_path / "reg" / "recsys" / "v1" / "seen.npz"
    stored.chmod(0o644)
    stored.write_bytes(b"evil")
    with pytest.raises(ArtifactCorrupted, match="seen.npz"):
        registry.load_companions(version)


def _three_versions(tmp_path, metrics=({"accuracy": 0.9}, {"accuracy": 0.92}, {"accuracy": 0.95})) -> Registry:
    """A registry where production moved v1 → v2 → v3 by registering."""
    registry = Registry(tmp_path / "reg")
    artifact = tmp_path / "model.onnx"
    for number, scores in enumerate(metrics, start=1):
        artifact.write_bytes(bytes([number]))
        registry.register("vision", artifact, metrics=scores)
    return registry


def test_every_alias_move_is_one_history_line(tmp_path):
    registry = _three_versions(tmp_path)
    registry.set_alias("vision", "staging", 1)
    registry.set_alias("vision", "staging", 1)  # already there: not a move, no line
    lines = (tmp_path / "reg" / "vision" / "alias_history.jsonl").read_text().splitlines()
    moves = [json.loads(line) for line in lines]
    assert [(m["alias"], m["previous"], m["version"], m["reason"]) for m in moves] == [
        ("production", None, 1, "registered"),
        ("production", 1, 2, "registered"),
        ("production", 2, 3, "registered"),
        ("staging", None, 1, "set"),
    ]
    assert all(set(m) == {"alias", "version", "previous", "at", "reason"} for m in moves)
    assert [m.version for m in registry.alias_history("vision", "staging")] == [1]


def test_a_torn_history_line_is_skipped(tmp_path):
    registry = _three_versions(tmp_path)
    with open(tmp_path / "reg" / "vision" / "alias_history.jsonl", "a") as history:
        history.write('{"alias": "produ')  # a crash mid-write
    assert len(registry.alias_history("vision")) == 3
    assert registry.rollback("vision").version == 2
    assert [m.reason for m in registry.alias_history("vision")] == ["registered"] * 3 + ["rolled_back"]
    assert registry.rollback("vision").version == 1


def test_promote_moves_the_alias_and_records_it(tmp_path):
    registry = _three_versions(tmp_path)
    promoted = registry.promote("vision", "v1")
    assert promoted.version == 1 and registry.aliases("vision")["production"] == 1
    staged = registry.promote("vision", "production", alias="staging")  # an alias is a ref too
    assert staged.version == 1 and registry.aliases("vision") == {"production": 1, "staging": 1}
    last = registry.alias_history("vision")[-2]
    assert (last.alias, last.previous, last.version, last.reason) == ("production", 3, 1, "promoted")


def test_promote_to_an_unknown_version_moves_nothing(tmp_path):
    registry = _three_versions(tmp_path)
    with pytest.raises(UnknownModelVersion, match="v7"):
        registry.promote("vision", "v7")
    assert registry.aliases("vision") == {"production": 3}
    assert len(registry.alias_history("vision")) == 3


def test_rollback_twice_walks_back_two_moves(tmp_path):
    registry = _three_versions(tmp_path)
    assert registry.rollback("vision").version == 2
    assert registry.rollback("vision").version == 1  # not back to 3: a rollback undoes, it is not undone
    assert registry.aliases("vision")["production"] == 1
    assert [m.reason for m in registry.alias_history("vision")][-2:] == ["rolled_back", "rolled_back"]


def test_rollback_after_a_promote_returns_to_where_it_was(tmp_path):
    registry = _three_versions(tmp_path)
    registry.rollback("vision")  # 3 → 2
    registry.promote("vision", "1")  # 2 → 1
    assert registry.rollback("vision").version == 2
    assert registry.rollback("vision").version == 1  # the rolled-back v3 is not on the way back


def test_rollback_with_nothing_earlier_is_a_clear_error(tmp_path):
    registry = Registry(tmp_path / "reg")
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"one")
    registry.register("vision", artifact)
    with pytest.raises(NothingToRollBack, match="no earlier version.*aiaas models promote vision"):
        registry.rollback("vision")
    with pytest.raises(NothingToRollBack, match="no alias 'staging'"):
        registry.rollback("vision", alias="staging")
    with pytest.raises(NothingToRollBack):
        registry.rollback("text")  # a model type with no versions at all
    assert registry.aliases("vision") == {"production": 1}


def test_auto_policy_promotes_only_what_beats_production(tmp_path):
    registry = _three_versions(tmp_path)  # production: v3, accuracy 0.95
    policy = PromotionPolicy(metric="accuracy", min_delta=0.01)
    assert policy.aliases_for(registry, "vision", {"accuracy": 0.96}) == ("production",)
    assert policy.aliases_for(registry, "vision", {"accuracy": 0.955}) == ("staging",)
    assert policy.aliases_for(registry, "vision", {"accuracy": float("nan")}) == ("staging",)
    assert PromotionPolicy(metric="accuracy").aliases_for(registry, "vision", {"accuracy": 0.95}) == ("production",)
    with pytest.raises(ValueError, match="no 'accuracy' metric"):
        policy.aliases_for(registry, "vision", {"loss": 0.1})


def test_auto_policy_promotes_anything_when_there_is_no_production_yet(tmp_path):
    registry = Registry(tmp_path / "reg")
    assert default_policy("vision").aliases_for(registry, "vision", {"accuracy": 0.1}) == ("production",)


def test_auto_policy_stages_when_production_has_no_such_metric(tmp_path):
    registry = _three_versions(tmp_path, metrics=({}, {}, {}))
    assert default_policy("vision").aliases_for(registry, "vision", {"accuracy": 0.99}) == ("staging",)


def test_always_and_never_ignore_the_metric(tmp_path):
    registry = _three_versions(tmp_path)
    assert PromotionPolicy(metric="accuracy", mode="always").aliases_for(registry, "vision", {"accuracy": 0.0}) == (
        "production",
    )
    assert PromotionPolicy(metric="accuracy", mode="never").aliases_for(registry, "vision", {"accuracy": 1.0}) == (
        "staging",
    )


def test_default_policies_use_each_model_types_metric():
    assert [default_policy(m).metric for m in ("vision", "text", "recsys")] == [
        "accuracy", "accuracy", "hit_rate_at_10",
    ]
    assert default_policy("recsys").mode == "auto"
    with pytest.raises(ValueError, match="known: vision"):
        default_policy("audio")
