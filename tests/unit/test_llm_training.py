"""Fine-tuning the LLM: the job's data checked, a LoRA adapter trained on the real model, registered alone."""

from __future__ import annotations

import json

import pytest

from aiaas.contract.envelopes import Job
from aiaas.errors import InvalidJob
from aiaas.llm.instructions import exact_match, instruction_split
from aiaas.training.request import TrainingRequest
from aiaas.training.settings import TrainerSettings

pytest.importorskip("peft", reason="the llm extra is not installed (make install)")

from aiaas.llm.training import LlmTrainer, _examples  # noqa: E402


def request(**inputs) -> TrainingRequest:
    job = Job(job_id="t1", kind="train", model="llm", inputs=inputs)
    return TrainingRequest.from_job(job, TrainerSettings(), LlmTrainer.hyper_parameters)


def test_the_built_in_set_is_seeded_and_holds_out_sentence_forms_it_never_trains_on():
    train, held_out = instruction_split()
    assert (train, held_out) == instruction_split()
    assert len(train) == 192 and len(held_out) == 32
    unseen = ("Our new neighbour", " moved to ")
    assert not any(form in p for p, _ in train for form in unseen)
    assert sum(any(form in p for form in unseen) for p, _ in held_out) == 16
    assert all(set(json.loads(answer)) == {"name", "age", "city", "job"} for _, answer in train + held_out)


def test_exact_match_compares_json_as_json_and_anything_else_as_text():
    assert exact_match(['{"a": 1, "b": 2}', ' {"b":2,"a":1} ', "not json"], ['{"a": 1, "b": 2}'] * 3) == 2 / 3
    assert exact_match(["Paris", "Rome "], ["Paris", "Rome"]) == 1.0


def test_lora_hyper_parameters_are_checked_like_the_others():
    assert request(lora_rank=4, lora_alpha=8, max_steps=3).params == {"lora_rank": 4, "lora_alpha": 8, "max_steps": 3}
    with pytest.raises(InvalidJob, match="`lora_rank` must be an integer"):
        request(lora_rank=2.5)
    with pytest.raises(InvalidJob, match="`max_steps` must be positive"):
        request(max_steps=0)


@pytest.mark.parametrize(("data", "message"), [
    ({"prompts": ["a"] * 12, "responses": ["b"] * 11}, "equal length"),
    ({"prompts": ["a"] * 4, "responses": ["b"] * 4}, "at least 10"),
    ({"prompts": ["a"] * 12, "responses": [""] * 12}, "non-empty string"),
    ({"texts": ["a"] * 12, "labels": ["b"] * 12}, "needs `prompts` and `responses`"),
    ({"messages": [[{"role": "user", "content": "hi"}]] * 12}, "at least two messages"),
    ({"messages": [[{"role": "user", "content": "hi"}, {"role": "user", "content": "x"}]] * 12}, "assistant's"),
    ({"messages": [[{"role": "root", "content": "hi"}, {"role": "assistant", "content": "x"}]] * 12}, "role"),
    ({"messages": [[{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]] * 12}, "non-empty"),
    ({"messages": [[{"role": ["user"], "content": "hi"}, {"role": "assistant", "content": "x"}]] * 12}, "role"),
    ({"prompts": 5, "responses": ["b"] * 12}, "lists of strings"),
    ({"messages": 5}, "list of conversations"),
    ({"lora_rnk": 4, "prompts": ["a"] * 12, "responses": ["b"] * 12}, "hyper-parameters: .*lora_rank"),
])
def test_bad_training_data_is_refused_with_what_is_wrong(data, message):
    with pytest.raises(InvalidJob, match=message):
        _examples(data)


def test_a_batch_too_large_for_memory_is_refused_before_training(llm_registry, tmp_path):
    data = {"prompts": ["word " * 200] * 12, "responses": ["ok"] * 12}
    with pytest.raises(InvalidJob, match="lower `batch_size`"):
        LlmTrainer().train(request(batch_size=64, **data), llm_registry, tmp_path, lambda _: None)


def test_a_jobs_own_data_is_split_with_a_held_out_fifth():
    rows = {"messages": [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": f"a{i}"}] for i in range(20)]}
    train, held_out = _examples(rows)
    assert (len(train), len(held_out)) == (16, 4)
    assert held_out[0][0][0] == {"role": "system", "content": "Be brief."}


def test_an_adapter_is_trained_on_the_real_model_and_registered_without_the_base_weights(llm_registry, tmp_path):
    from aiaas.llm.adapters import ADAPTER_OF, base_of

    events = []
    data = {"prompts": [f"Say the number {i} as a word." for i in range(12)],
            "responses": ["zero one two three four five six seven eight nine ten eleven".split()[i] for i in range(12)]}
    candidate = LlmTrainer().train(request(max_steps=2, batch_size=4, lora_rank=4, **data), llm_registry, tmp_path,
                                   events.append)
    base = llm_registry.resolve("llm", "production")
    assert candidate.params[ADAPTER_OF] == base.version and candidate.parent == base.version
    assert candidate.scored_on == "job_data"
    assert {candidate.artifact.name, *(c.name for c in candidate.companions)} == \
        {"adapter_model.safetensors", "adapter_config.json"}
    base_bytes = (llm_registry.root / "llm" / f"v{base.version}" / base.artifact).stat().st_size
    assert candidate.artifact.stat().st_size < base_bytes / 20  # the adapter alone
    assert {"pass_rate", "exact_match", "base_exact_match", "eval_loss", "perplexity", "train_tokens_per_s"} \
        <= set(candidate.metrics)
    assert candidate.metrics["steps"] == 2 and events and events[-1].step == 2
    assert events[-1].tokens_per_s and events[-1].metric_name == "eval_loss"

    version = llm_registry.register("llm", candidate.artifact, companions=candidate.companions, aliases=(),
                                    params=candidate.params, parent=candidate.parent)
    assert base_of(llm_registry, version).version == base.version
