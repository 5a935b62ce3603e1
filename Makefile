# Two commands for a new user: `make demo` (the main job) and `make test`.
# Each sets up its own virtual environment on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lfi-installed

.PHONY: setup test lint demo bench clean compose-up compose-down compose-test

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# Pinned: the CPU build of torch lies on disk; any other request pulls CUDA wheels.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[teacher,student,dashboard,dev]'
	touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check services shared tests bench scripts

test: $(STAMP)
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server) || echo "redis-server missing: service tests will be skipped"
	@test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium) || echo "chromium missing: the browser test will be skipped"
	@command -v docker-compose >/dev/null || (apt-get update -qq && apt-get install -y -qq docker-compose) || echo "docker-compose missing: the compose check will be skipped"
	@command -v dockerd >/dev/null && command -v debootstrap >/dev/null || (apt-get update -qq && apt-get install -y -qq docker.io debootstrap) || echo "docker.io or debootstrap missing: the compose stack test will be skipped"
	$(BIN)/ruff check services shared tests bench scripts
	$(BIN)/pytest -q

demo: $(STAMP)
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)
	$(BIN)/lfi up --demo

bench: $(STAMP)
	$(BIN)/python bench/teacher_extract.py
	$(BIN)/python bench/student_size.py
	$(BIN)/python bench/student_step.py
	$(BIN)/python bench/jobs_recovery.py
	$(BIN)/python bench/teacher_maps.py
	$(BIN)/python bench/lfi_effect.py --variants vit ivit oracle
	$(BIN)/python bench/detr_size.py
	$(BIN)/python bench/detr_effect.py

clean:
	rm -rf artifacts .pytest_cache .ruff_cache

# The compose stack (cpu profile) for real: dockerd started if none answers, the images built (from a
# Debian base made with debootstrap where Docker Hub can't be reached), data prepared, health waited on.
COMPOSE_PACKAGES := command -v docker-compose >/dev/null && command -v dockerd >/dev/null && command -v debootstrap >/dev/null || (apt-get update -qq && apt-get install -y -qq docker-compose docker.io debootstrap)

compose-up: $(STAMP)
	@$(COMPOSE_PACKAGES)
	$(BIN)/python scripts/compose_stack.py up

compose-down: $(STAMP)
	$(BIN)/python scripts/compose_stack.py down

compose-test: $(STAMP)
	@$(COMPOSE_PACKAGES)
	$(BIN)/pytest -q tests/e2e/test_compose_stack.py tests/e2e/test_compose.py
