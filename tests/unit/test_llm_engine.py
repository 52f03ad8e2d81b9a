"""The generation engine on the real model (SmolLM2-135M-Instruct from its package, built once per run).

Greedy answers are compared with Transformers' own `generate()`; batching, joining mid-run, cancelling,
deadlines, stop sequences, token limits, priorities and seeds are checked on what the engine streams.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gguf", reason="the llm extra is not installed (make install)")

from aiaas.llm.engine import GenerationEngine, GenerationEvent, GenerationRequest  # noqa: E402
from aiaas.llm.prompts import chat_prompt_ids  # noqa: E402
from aiaas.llm.weights import load_folder  # noqa: E402

QUESTIONS = ("What is the capital of France?", "Write a haiku about the sea.", "List three fruits.",
             "What is 2+2?")


@pytest.fixture(scope="module")
def model_and_tokenizer(llm_registry):
    return load_folder(llm_registry.verified_folder(llm_registry.resolve("llm", "production")))


@pytest.fixture
def engine(model_and_tokenizer) -> GenerationEngine:
    model, tokenizer = model_and_tokenizer
    return GenerationEngine(model, tokenizer, max_batch=8)


def prompt(tokenizer, question: str) -> list[int]:
    return chat_prompt_ids(tokenizer, [{"role": "user", "content": question}])


def run(engine: GenerationEngine, steps: int | None = None) -> dict[str, list[GenerationEvent]]:
    """Step the engine (until idle, or `steps` times); every event by request."""
    seen: dict[str, list[GenerationEvent]] = {}
    count = 0
    while engine.busy and (steps is None or count < steps):
        for event in engine.step():
            seen.setdefault(event.request_id, []).append(event)
        count += 1
    return seen


def final(events: list[GenerationEvent]) -> GenerationEvent:
    assert events[-1].finish_reason is not None
    assert all(e.finish_reason is None for e in events[:-1])
    return events[-1]


def hf_greedy(model, tokenizer, ids: list[int], max_new_tokens: int) -> str:
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)


def test_a_greedy_answer_alone_is_what_transformers_generates(model_and_tokenizer, engine):
    model, tokenizer = model_and_tokenizer
    for question in QUESTIONS[:2]:
        ids = prompt(tokenizer, question)
        engine.submit(GenerationRequest(question, ids, max_new_tokens=32))
        events = run(engine)[question]
        assert final(events).full_text == hf_greedy(model, tokenizer, ids, 32)
    assert "Paris" in final(run_one(engine, tokenizer, QUESTIONS[0])).full_text


def run_one(engine, tokenizer, question, **params) -> list[GenerationEvent]:
    engine.submit(GenerationRequest("one", prompt(tokenizer, question), **({"max_new_tokens": 32} | params)))
    return run(engine)["one"]


def test_streamed_text_adds_up_to_the_answer_and_tokens_to_the_count(model_and_tokenizer, engine):
    _, tokenizer = model_and_tokenizer
    events = run_one(engine, tokenizer, QUESTIONS[1], max_new_tokens=40)
    last = final(events)
    assert "".join(e.text for e in events) == last.full_text
    assert sum(e.tokens for e in events) <= last.completion_tokens <= 40  # the end token is counted, not streamed
    assert len([e for e in events if e.text]) > 5  # it streamed, not all at the end
    assert last.prompt_tokens == len(prompt(tokenizer, QUESTIONS[1]))
    assert last.first_token_at is not None


def test_batched_answers_match_their_alone_answers(model_and_tokenizer, engine):
    _, tokenizer = model_and_tokenizer
    alone = {q: final(run_one(engine, tokenizer, q, max_new_tokens=24)).full_text for q in QUESTIONS}
    for q in QUESTIONS:
        engine.submit(GenerationRequest(q, prompt(tokenizer, q), max_new_tokens=24))
    together = {q: final(events).full_text for q, events in run(engine).items()}
    assert together == alone


def test_a_job_joining_a_running_batch_gets_its_alone_answer_and_the_others_go_on(model_and_tokenizer, engine):
    _, tokenizer = model_and_tokenizer
    alone = {q: final(run_one(engine, tokenizer, q, max_new_tokens=24)).full_text for q in QUESTIONS[:2]}
    engine.submit(GenerationRequest(QUESTIONS[1], prompt(tokenizer, QUESTIONS[1]), max_new_tokens=24))
    first = run(engine, steps=6)
    engine.submit(GenerationRequest(QUESTIONS[0], prompt(tokenizer, QUESTIONS[0]), max_new_tokens=24))
    rest = run(engine)
    assert final(rest[QUESTIONS[0]]).full_text == alone[QUESTIONS[0]]
    assert "".join(e.text for e in first[QUESTIONS[1]] + rest[QUESTIONS[1]]) == alone[QUESTIONS[1]]


def test_the_token_limit_ends_with_length(model_and_tokenizer, engine):
    _, tokenizer = model_and_tokenizer
    last = final(run_one(engine, tokenizer, QUESTIONS[2], max_new_tokens=5))
    assert (last.finish_reason, last.completion_tokens) == ("length", 5)


def test_a_stop_sequence_ends_the_answer_before_it(model_and_tokenizer, engine):
    _, tokenizer = model_and_tokenizer
    events = run_one(engine, tokenizer, QUESTIONS[0], stop=("France",))
    last = final(events)
    assert last.finish_reason == "stop"
    assert "France" not in last.full_text and "".join(e.text for e in events) == last.full_text
    assert last.full_text.startswith("The capital of")


def test_cancelling_ends_a_running_job_and_a_waiting_one(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    engine = GenerationEngine(model, tokenizer, max_batch=1)
    engine.submit(GenerationRequest("running", prompt(tokenizer, QUESTIONS[1]), max_new_tokens=200))
    engine.submit(GenerationRequest("waiting", prompt(tokenizer, QUESTIONS[0]), max_new_tokens=200))
    early = run(engine, steps=3)
    engine.cancel("running")
    engine.cancel("waiting")
    late = run(engine)
    running = final(early["running"] + late["running"])
    assert running.finish_reason == "cancelled" and 0 < running.completion_tokens < 200
    assert final(late["waiting"]).finish_reason == "cancelled"
    assert not engine.busy


def test_a_deadline_ends_generation_mid_answer(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    now = [1000.0]
    engine = GenerationEngine(model, tokenizer, clock=lambda: now[0])
    engine.submit(GenerationRequest("late", prompt(tokenizer, QUESTIONS[1]), max_new_tokens=200, deadline=1001.0))
    early = run(engine, steps=3)
    now[0] = 1001.5
    last = final(early["late"] + run(engine)["late"])
    assert last.finish_reason == "deadline" and 0 < last.completion_tokens < 200


def test_higher_priority_waiting_jobs_are_admitted_first(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    engine = GenerationEngine(model, tokenizer, max_batch=1)
    for name, priority in (("low", -5), ("normal", 0), ("high", 9)):
        engine.submit(GenerationRequest(name, prompt(tokenizer, QUESTIONS[3]), max_new_tokens=3, priority=priority))
    order = []
    while engine.busy:
        order += [e.request_id for e in engine.step() if e.finish_reason]
    assert order == ["high", "normal", "low"]


def test_the_same_seed_samples_the_same_text_and_another_seed_may_not(model_and_tokenizer, engine):
    _, tokenizer = model_and_tokenizer
    sampled = {seed: [final(run_one(engine, tokenizer, QUESTIONS[1], temperature=1.0, top_p=0.95, top_k=50,
                                    seed=seed, max_new_tokens=30)).full_text for _ in range(2)]
               for seed in (1, 2, 3)}
    assert all(a == b for a, b in sampled.values())
    assert len({texts[0] for texts in sampled.values()}) > 1


def test_a_token_budget_keeps_jobs_waiting_until_room_is_made(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    ids = prompt(tokenizer, QUESTIONS[3])
    engine = GenerationEngine(model, tokenizer, max_batch=8, max_batch_tokens=len(ids) + 10)
    for name in ("a", "b"):
        engine.submit(GenerationRequest(name, ids, max_new_tokens=10))
    engine.step()
    assert (engine.running, engine.waiting) == (1, 1)
    run(engine)
    assert not engine.busy



def test_a_temperature_too_small_to_divide_by_answers_greedily(model_and_tokenizer, engine):
    _, tokenizer = model_and_tokenizer
    greedy = final(run_one(engine, tokenizer, QUESTIONS[0])).full_text
    tiny = final(run_one(engine, tokenizer, QUESTIONS[0], temperature=1e-40, seed=1)).full_text
    assert tiny == greedy and "Paris" in tiny


def wait_until(condition, timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_closed_runtime_finishes_what_it_runs_then_lets_its_engine_thread_go(model_and_tokenizer):
    import threading

    from aiaas.llm.runtime import LlmItem, LlmRuntime

    model, tokenizer = model_and_tokenizer
    runtime = LlmRuntime(model, tokenizer, "1")
    item = LlmItem(GenerationRequest("a", prompt(tokenizer, "Write a long story."), max_new_tokens=40), "chat")
    outputs, started = [], threading.Event()
    worker = threading.Thread(target=lambda: outputs.extend(runtime.infer([item], lambda *_: started.set())))
    worker.start()
    assert started.wait(60)  # generating
    runtime.close()  # returns at once; the running job is finished, not failed
    worker.join(60)
    assert outputs[0]["finish_reason"] == "length" and outputs[0]["completion_tokens"] == 40
    runtime._thread.join(10)  # noqa: SLF001 - the engine thread has ended
    assert not runtime._thread.is_alive()  # noqa: SLF001
    # A job routed here before the close still gets its answer: the thread runs again for it, then ends again.
    (late,) = runtime.infer([LlmItem(GenerationRequest("b", prompt(tokenizer, "Hi"), max_new_tokens=4), "chat")])
    assert late["completion_tokens"] >= 1
    runtime._thread.join(10)  # noqa: SLF001
    assert not runtime._thread.is_alive()  # noqa: SLF001


def test_jobs_for_the_base_and_two_adapters_share_one_batch_each_through_its_own_adapter(llm_registry, tmp_path):
    from peft import LoraConfig, get_peft_model

    from aiaas.llm.runtime import LlmItem, LlmRuntime

    folder = llm_registry.verified_folder(llm_registry.resolve("llm", "production"))
    for seed in (1, 2):  # two adapters with weights of their own (random: each changes the answers its own way)
        torch.manual_seed(seed)
        adapted = get_peft_model(load_folder(folder)[0], LoraConfig(r=4, lora_alpha=64, init_lora_weights=False,
                                                                   target_modules=["q_proj", "v_proj", "o_proj"]))
        adapted.save_pretrained(str(tmp_path / f"a{seed}"))
    model, tokenizer = load_folder(folder)  # a model of this test's own: adapters wrap its layers
    runtime = LlmRuntime(model, tokenizer, "1")
    ids = prompt(tokenizer, QUESTIONS[0])

    def answers(*adapters: str | None) -> list[str]:
        items = [LlmItem(GenerationRequest(f"r{i}", ids, max_new_tokens=12, adapter=a), "chat")
                 for i, a in enumerate(adapters)]
        return [output["text"] for output in runtime.infer(items)]

    try:
        (base_alone,) = answers(None)
        runtime.add_adapter("a1", tmp_path / "a1")
        runtime.add_adapter("a2", tmp_path / "a2")
        (a1_alone,), (a2_alone,) = answers("a1"), answers("a2")
        together = answers(None, "a1", "a2", None)  # one batch: four rows, three weights
        assert together == [base_alone, a1_alone, a2_alone, base_alone]
        assert len({base_alone, a1_alone, a2_alone}) == 3  # each adapter is applied, to its own rows only

        runtime.release_adapter("a1")  # no job runs with it: it leaves the model (between two steps)
        wait_until(lambda: "a1" not in runtime.engine.model.peft_config)
        assert "a2" in runtime.engine.model.peft_config
        assert answers(None, "a1") == [base_alone, a1_alone]  # a job routed to it before: loaded again for it
        runtime.release_adapter("a2")
        wait_until(lambda: not hasattr(runtime.engine.model, "peft_config"))  # the last out: the plain base again
        assert answers(None) == [base_alone]
    finally:
        runtime.close()


@pytest.mark.gpu
def test_on_a_gpu_the_engine_generates_in_bf16_and_a_batch_answers_as_each_job_alone(llm_registry):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here: the LLM generates in fp32 on the CPU (the other tests)")
    from aiaas.llm.runtime import LlmRuntime

    held = LlmRuntime.from_registry(llm_registry, "production", device="auto")
    held.close()  # its engine thread stops; the test steps an engine of its own on the same model
    model, tokenizer = held.runtime.engine.model, held.tokenizer
    assert model.device.type == "cuda" and model.dtype == torch.bfloat16
    assert held.providers == ["torch cuda"]
    engine = GenerationEngine(model, tokenizer, max_batch=8)
    alone = {}
    for i, question in enumerate(QUESTIONS):
        engine.submit(GenerationRequest(str(i), prompt(tokenizer, question), max_new_tokens=24))
        alone[str(i)] = final(run(engine)[str(i)]).full_text
    for i, question in enumerate(QUESTIONS):
        engine.submit(GenerationRequest(str(i), prompt(tokenizer, question), max_new_tokens=24))
    together = {key: final(events).full_text for key, events in run(engine).items()}
    assert "Paris" in alone["0"]
    # bf16 rounds differently with the batch's shapes: most, not necessarily all, greedy answers stay the same
    assert sum(together[k] == alone[k] for k in alone) >= len(alone) - 1, (together, alone)
