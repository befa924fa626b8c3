# pg_migrate. Quick start: `make demo`, then `make test`. Both set up what is missing first.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
export USER ?= $(shell id -un)

# PG=pg15 (Debian's packages), PG=pg17 or PG=pg18 (built from source by setup into
# /opt/pg_migrate). Each version builds in a target directory of its own, so switching
# between them rebuilds nothing.
PG        ?= pg15
ifeq ($(PG),pg15)
PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
else
PG_CONFIG ?= /opt/pg_migrate/$(PG)/bin/pg_config
endif
PG_BIN    := $(patsubst %/,%,$(dir $(PG_CONFIG)))
export CARGO_TARGET_DIR ?= $(CURDIR)/target/$(PG)
VENV      := pg_test/.venv
PGRX_DATA ?= /tmp/pg_migrate_pgrx_$(PG)
DEMO_DIR  ?= /tmp/pg_migrate_demo
DEMO_PORT ?= 55432

# The command-line client: its own crate (a binary cannot link pgrx-pg-sys), its own target.
CLI       := CARGO_TARGET_DIR=$(CURDIR)/cli/target cargo
CLI_BIN   := $(CURDIR)/cli/target/debug/pg-migrate

.PHONY: all setup build install install-debug install-cli cli test test-all lint clippy unit pgtest e2e demo stop bench clean

all: build

setup:
	@PG=$(PG) pg_test/setup.sh

build: setup
	cargo build

# Release build into the system PostgreSQL (for the demo, benchmarks and your own server).
install: setup
	cargo pgrx install --release --pg-config $(PG_CONFIG)

install-debug: setup
	cargo pgrx install --pg-config $(PG_CONFIG)

cli:
	$(CLI) build --manifest-path cli/Cargo.toml

# pg-migrate into ~/.cargo/bin (or: cargo install --path cli).
install-cli:
	$(CLI) install --locked --path cli

# VERSION_ONLY=1 (.ci/run, after the first version) leaves out what is the same for every
# PostgreSQL version: the module graph, formatting, the plain-Rust unit tests (clippy still
# compiles them for the version) and the CLI.
TEST_STEPS := $(if $(filter 1,$(VERSION_ONLY)),setup clippy pgtest e2e,setup lint unit pgtest e2e)
test: $(TEST_STEPS)
	@echo "make test: all passed"

# The suite against every supported version (15, 17, 18), as CI runs it.
test-all:
	.ci/run

CLIPPY    = cargo clippy --all-targets --no-default-features --features "$(PG) pg_test" -- -D warnings

# The module graph first: a cycle or an upward import is a design error, not a style one.
lint:
	python3 .ci/module_graph.py
	cargo fmt --check
	$(CLIPPY)
	$(CLI) fmt --check --manifest-path cli/Cargo.toml
	$(CLI) clippy --all-targets --manifest-path cli/Cargo.toml -- -D warnings

clippy:
	$(CLIPPY)

# Plain Rust tests: no server.
unit:
	cargo test --lib --no-default-features --features $(PG) -- unit::
	$(CLI) test --manifest-path cli/Cargo.toml

# #[pg_test]s, each in a rolled-back transaction of a server pgrx starts as postgres.
pgtest:
	cargo pgrx test $(PG) --runas postgres --pgdata $(PGRX_DATA)

# End-to-end tests against clusters started with shared_preload_libraries = 'pg_migrate'.
# The upgrade test needs the previous release (PostgreSQL 15 only), built once into ~/.pgrx.
e2e: install-debug cli
ifeq ($(PG),pg15)
	pg_test/previous_release.sh
endif
	PG_BIN=$(PG_BIN) PG_MIGRATE_CLI=$(CLI_BIN) $(VENV)/bin/pytest pg_test $(PYTEST_ARGS)

demo: install
	DEMO_DIR=$(DEMO_DIR) DEMO_PORT=$(DEMO_PORT) pg_test/demo.sh

stop:
	pg_test/cluster.sh stop $(DEMO_DIR)

bench: install cli
	$(VENV)/bin/python pg_test/bench.py $(BENCH_ARGS)

clean:
	rm -rf target cli/target
	rm -rf $(VENV)
