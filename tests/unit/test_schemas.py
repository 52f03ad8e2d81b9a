import json
from pathlib import Path

import jsonschema

from aiaas.contract.codec import encode
from aiaas.contract.envelopes import Job
from aiaas.contract.schemas import check_schemas, render_schemas

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_checked_in_schemas_match_the_code():
    drift = check_schemas(SCHEMAS)
    assert drift == [], f"schemas/ is out of date for {drift}: run `make schemas`"


def test_job_schema_accepts_a_job_as_json_would_see_it():
    schema = json.loads(render_schemas()["job.schema.json"])
    job = Job(job_id="a", model="vision", inputs={"text": "hello"})
    jsonschema.validate(job.model_dump(mode="json", exclude_none=True), schema)
    assert encode(job)  # and it encodes for the wire


def test_asyncapi_names_every_channel_and_resolves_refs():
    doc = json.loads(render_schemas()["asyncapi.json"])
    assert set(doc["channels"]) == {"infer", "results", "dlq"}
    text = json.dumps(doc)
    for name in ("Tensor", "Job", "Result", "ErrorInfo", "Timings"):
        if f"#/components/schemas/{name}" in text:
            assert name in doc["components"]["schemas"]
