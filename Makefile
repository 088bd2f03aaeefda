# Switchyard — the doors in. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
# Compose v1 (docker-compose) where it is installed, else the v2 plugin; v1 builds
# without BuildKit (no buildx plugin on these machines).
COMPOSE := $(shell command -v docker-compose >/dev/null 2>&1 && echo "DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0 docker-compose" || echo "docker compose")

.PHONY: help install migrate run test test-faults test-fast test-compose test-hosts bench lint format up down clean

help:
	@echo "make install   create .venv with the project and dev tools (idempotent)"
	@echo "make migrate   create the database if missing and apply migrations"
	@echo "make run       migrate, then start api, scheduler, worker and logger (dev mode)"
	@echo "make test      run the whole test suite against local PostgreSQL + RabbitMQ"
	@echo "make test-faults  the whole fault-injection suite, long scenarios included"
	@echo "make bench     run the benchmark (figures printed and written as JSON)"
	@echo "make lint      ruff + mypy"
	@echo "make test-compose  the compose stack on a real Docker engine (needs Docker; minutes)"
	@echo "make test-hosts    workers on other hosts: network namespaces (needs root, iproute2)"
	@echo "make up        docker compose up --build (needs a .env: see README, Docker)"

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[server,dev]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

migrate: install
	$(BIN)/switchyard db upgrade

run: migrate
	@echo "==> dev mode (SWITCHYARD_DEV=1): without SWITCHYARD_API_KEYS, requests need no key and act as admin"
	@echo "==> API on http://$${SWITCHYARD_API_HOST:-127.0.0.1}:$${SWITCHYARD_API_PORT:-8000}  (docs: /docs)"
	SWITCHYARD_DEV=$${SWITCHYARD_DEV:-1} $(BIN)/honcho start -f Procfile

# Test processes for `make test` (pytest-xdist; each module's tests stay in one, with
# its fixtures): the suite waits on the services it starts more than it computes, so
# it takes about 12 minutes on 2 cores where one process took 16-18 (the serial
# part below included). TEST_WORKERS=0: one process.
# Tests marked `serial` (wall-clock bounds) run after, alone. Exit 5 (nothing selected)
# of one part is no failure (PYTEST_ARGS may name a file of the other); of both, it is.
TEST_WORKERS ?= 2

test: install
	@a=0; b=0; \
	$(BIN)/pytest -m "not slow_fault and not serial" -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS) || a=$$?; \
	$(BIN)/pytest -m "serial and not slow_fault" $(PYTEST_ARGS) || b=$$?; \
	if [ $$a -eq 5 ] && [ $$b -eq 5 ]; then exit 5; fi; \
	[ $$a -eq 5 ] && a=0; [ $$b -eq 5 ] && b=0; \
	[ $$a -ne 0 ] && exit $$a; exit $$b

test-faults: install
	$(BIN)/pytest tests/faults $(PYTEST_ARGS)

test-fast: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

# Outside `make test`: both need more than PostgreSQL and RabbitMQ (a Docker engine;
# root for network namespaces) and take minutes. They print what they measured.
test-compose: install
	$(BIN)/python -m tests.compose.run

test-hosts: install
	$(BIN)/python -m tests.hosts.run

bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy shared services switchyard

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

up:
	$(COMPOSE) up --build

down:
	$(COMPOSE) down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
