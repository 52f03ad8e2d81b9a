"""Incremental detokenizing: whole characters only, stop sequences cut and never streamed in part."""

from __future__ import annotations

from aiaas.llm.engine import Detokenizer

# Token ids are bytes: decoding joins them as UTF-8, replacing an unfinished character, as tokenizers do.


def decode(ids: list[int]) -> str:
    return bytes(ids).decode("utf-8", errors="replace")


def feed(detokenizer: Detokenizer, text: str) -> list[str]:
    """Feed `text`'s bytes one by one; what each step would stream."""
    deltas = []
    for byte in text.encode():
        if detokenizer.add(byte):
            deltas.append(detokenizer.flush(final=True))
            break
        deltas.append(detokenizer.flush())
    return deltas


def test_text_streams_as_it_comes_and_adds_up():
    detokenizer = Detokenizer(decode)
    deltas = feed(detokenizer, "Paris!")
    assert deltas == list("Paris!")
    assert detokenizer.text == "Paris!"


def test_half_a_character_is_held_until_the_rest_comes():
    detokenizer = Detokenizer(decode)
    deltas = feed(detokenizer, "é!")  # two bytes, then one
    assert deltas == ["", "é", "!"]


def test_a_stop_sequence_ends_the_text_before_it():
    detokenizer = Detokenizer(decode, stop=["\nUser:"])
    deltas = feed(detokenizer, "Hi there\nUser: more")
    assert "".join(deltas) == "Hi there"
    assert detokenizer.text == "Hi there"


def test_the_start_of_a_possible_stop_is_held_back_then_released():
    detokenizer = Detokenizer(decode, stop=["END"])
    deltas = feed(detokenizer, "a bENd")
    # "E" and "EN" could begin "END": held until "d" shows they do not.
    assert deltas == ["a", " ", "b", "", "", "ENd"]
    assert detokenizer.flush(final=True) == ""


def test_the_final_flush_releases_what_was_held():
    detokenizer = Detokenizer(decode, stop=["END"])
    assert "".join(feed(detokenizer, "xEN")) == "x"
    assert detokenizer.flush(final=True) == "EN"
