"""The model-type registry: built-ins without loading plug-ins; a broken plug-in skipped, and named when asked for."""

import pytest

from aiaas import model_types


class BrokenEntry:
    name, value = "audio", "aiaas_audio:MODEL_TYPE"

    def load(self):
        raise ImportError("No module named 'aiaas_audio'")


@pytest.fixture
def broken_plug_in(monkeypatch):
    monkeypatch.setattr(model_types, "entry_points", lambda group: [BrokenEntry()])
    model_types._plug_ins.cache_clear()  # noqa: SLF001 - the registry reads the entry points once per process
    yield
    model_types._plug_ins.cache_clear()  # noqa: SLF001


def test_a_broken_plug_in_does_not_take_the_built_in_types_down(broken_plug_in):
    assert model_types.names() == ("vision", "text", "recsys", "llm", "vae", "rnn")
    assert model_types.model_type("vision").home == "aiaas.vision"
    with pytest.raises(ValueError, match="audio.*could not be loaded.*No module named"):
        model_types.model_type("audio")
    with pytest.raises(ValueError, match="unknown model type 'video'; known: vision, text, recsys, llm, vae, rnn"):
        model_types.model_type("video")
