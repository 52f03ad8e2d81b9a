"""A built-in instruction set for fine-tuning: a sentence about a person in, one JSON object of a fixed shape out.

Generated here with a fixed seed (nothing is downloaded). The base model does not answer in this shape on its own
(it explains, adds keys, or wraps the object in prose); an adapter trained on the training part learns the shape,
and the held-out part (people and sentence forms drawn apart from the training part) measures how often an answer
is exactly right: `exact_match`, the share of answers that parse as JSON equal to the expected object.
"""

from __future__ import annotations

import json
import random

__all__ = ["INSTRUCTION", "instruction_split", "exact_match", "parsed"]

INSTRUCTION = "Extract the person as JSON with the keys name, age, city and job."

_NAMES = ("Alice", "Bruno", "Chen", "Dara", "Elif", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kemal", "Lena",
          "Mateo", "Nadia", "Oscar", "Priya", "Quinn", "Rosa", "Samir", "Tove", "Umar", "Vera", "Wen", "Ximena",
          "Yusuf", "Zoe", "Anton", "Bea", "Carlos", "Dmitri", "Eva", "Felix", "Gita", "Hugo", "Ida", "Jamal")
_CITIES = ("Paris", "Lyon", "Berlin", "Munich", "Madrid", "Lisbon", "Rome", "Milan", "Vienna", "Prague", "Oslo",
           "Dublin", "Warsaw", "Athens", "Zurich", "Tokyo", "Osaka", "Seoul", "Toronto", "Boston", "Denver", "Lima",
           "Cairo", "Nairobi", "Sydney", "Delhi", "Austin", "Porto", "Krakow", "Ghent")
_JOBS = ("teacher", "nurse", "baker", "pilot", "chemist", "lawyer", "plumber", "architect", "farmer", "journalist",
         "dentist", "engineer", "librarian", "painter", "chef", "mechanic", "pharmacist", "translator", "gardener",
         "musician")
_FORMS = (
    "{name} is a {age}-year-old {job} who lives in {city}.",
    "Meet {name}: {age} years old, working as a {job} in {city}.",
    "In {city}, {name} ({age}) works as a {job}.",
    "{name}, a {job} from {city}, turned {age} this year.",
    "At {age}, {name} has been a {job} in {city} for years.",
    "The {job} {name} is {age} and calls {city} home.",
    "{name} moved to {city} and works as a {job}; {name} is {age}.",
    "Our new neighbour {name} is a {job}, {age} years old, from {city}.",
)
_HELD_OUT_FORMS = 2
"""The last forms appear only in the held-out part: it measures the shape learned, not sentences remembered."""


def _person(rng: random.Random, form: str) -> tuple[str, str]:
    person = {"name": rng.choice(_NAMES), "age": rng.randint(19, 79), "city": rng.choice(_CITIES),
              "job": rng.choice(_JOBS)}
    sentence = form.format(**person)
    return f"{INSTRUCTION}\n\n{sentence}", json.dumps(person)


def instruction_split(train: int = 192, held_out: int = 32, seed: int = 0) -> tuple[list[tuple[str, str]],
                                                                                    list[tuple[str, str]]]:
    """(training pairs, held-out pairs) of (prompt, expected answer), the same for the same arguments."""
    rng = random.Random(seed)
    seen_forms, new_forms = _FORMS[:-_HELD_OUT_FORMS], _FORMS[-_HELD_OUT_FORMS:]
    training = [_person(rng, rng.choice(seen_forms)) for _ in range(train)]
    testing = [_person(rng, rng.choice(new_forms if i % 2 else seen_forms)) for i in range(held_out)]
    return training, testing


def parsed(answer: str) -> object:
    """The JSON value an answer holds (whitespace around it allowed), or None."""
    try:
        return json.loads(answer.strip())
    except ValueError:
        return None


def exact_match(answers: list[str], expected: list[str]) -> float:
    """Share of answers that parse as JSON equal to the expected answer's (or, when that is no JSON, equal text)."""
    if not expected:
        return 0.0
    hits = 0
    for answer, wanted in zip(answers, expected, strict=True):
        target = parsed(wanted)
        hits += (parsed(answer) == target) if target is not None else (answer.strip() == wanted.strip())
    return hits / len(expected)
