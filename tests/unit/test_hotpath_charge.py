"""bench/hotpath.py charges each py-spy sample to the stage of its innermost meaningful frame."""

from bench.hotpath import charge, short

_SERVICE_ROOT = ["<module> (/x/aiaas/vision/__main__.py:27)", "main (/x/aiaas/vision/__main__.py:15)",
                 "run_service (/x/aiaas/serving/service.py:184)", "run (/py/lib/python3.11/asyncio/runners.py:190)",
                 "_run_once (/py/lib/python3.11/asyncio/base_events.py:1922)"]
_NOOP_ROOT = ["<module> (/x/bench/transport.py:97)", "main (/x/bench/transport.py:90)",
              "run (/py/lib/python3.11/asyncio/runners.py:190)",
              "_run_once (/py/lib/python3.11/asyncio/base_events.py:1922)"]


def test_the_event_loops_own_samples_are_its_own_under_either_entry_point() -> None:
    idle = ["select (/py/lib/python3.11/selectors.py:468)"]
    assert charge(_SERVICE_ROOT + idle) == charge(_NOOP_ROOT + idle) == "event loop"


def test_work_under_the_loop_is_charged_to_its_stage() -> None:
    work = ["_run (/py/lib/python3.11/asyncio/events.py:80)",
            "JobPipeline._model_loop (/x/aiaas/serving/pipeline.py:269)"]
    assert charge(_SERVICE_ROOT + work) == charge(_NOOP_ROOT + work) == "pipeline"
    decode = work + ["decode (/x/aiaas/contract/codec.py:60)"]
    assert charge(_SERVICE_ROOT + decode) == "decode"


def test_a_frame_keeps_its_function_and_the_path_after_the_library_or_services_folder() -> None:
    assert short("BaseModel.model_validate (/r/.venv/lib/python3.11/site-packages/pydantic/main.py:792)") == \
        "BaseModel.model_validate (pydantic/main.py:792)"
    assert short("JobPipeline._run_batches (/work/main/services/aiaas/serving/pipeline.py:606)") == \
        "JobPipeline._run_batches (aiaas/serving/pipeline.py:606)"
    assert short("Handle._run (/root/.pyenv/versions/3.11.7/lib/python3.11/asyncio/events.py:80)") == \
        "Handle._run (asyncio/events.py:80)"
    assert short("<lambda> (<string>:1)") == "<lambda> (<string>:1)"
