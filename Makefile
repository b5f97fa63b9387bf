# payment-worker: `make help` lists the targets. Everything installs or starts what it
# needs (python venv, sqitch, PostgreSQL) via scripts/ensure-*.sh; see scripts/lib.sh for
# the knobs (PW_PG_MODE, DATABASE_URL, PW_INSTALL). As root, missing tools are installed with
# apt-get (each install is announced first); PW_INSTALL=tools unpacks them into .tools/.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.PHONY: help venv lock lint db test run stop clean

VENV := .venv
PYTEST_ARGS ?=

help: ## list the targets
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z_-]+:.*## / { printf "  %-8s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

venv: ## create .venv: requirements.lock (hash-checked), then requirements-dev.txt (again only on change)
	@scripts/ensure-venv.sh

lock: ## regenerate requirements.lock (pinned, hashed) from requirements.txt; LOCK_ARGS=--upgrade
	@scripts/lock.sh

lint: venv ## ruff check, ruff format --check, mypy (strict on worker/, metrics/, webhooks/, ...)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

db: ## ensure sqitch and PostgreSQL (writes .run/pg.env): which one, why, and how to switch (PW_PG_MODE)
	@scripts/ensure-sqitch.sh >/dev/null
	@scripts/ensure-postgres.sh --explain

test: venv ## run all tests (ensures venv, sqitch, PostgreSQL, promtool); PYTEST_ARGS='...' passes through
	@bindir=$$(scripts/ensure-prometheus.sh); \
	PW_PROMETHEUS_BINDIR=$$bindir scripts/with-env.sh --stop-after $(VENV)/bin/python -m pytest $(PYTEST_ARGS)

run: venv ## schema, Stripe stand-in (unless STRIPE_API_KEY is real) and supervisord, in the foreground
	@scripts/run-checks.sh
	@scripts/with-env.sh scripts/run.sh

stop: ## stop what make run / make test started here (supervisord, stand-in, private PostgreSQL); keeps data
	@scripts/stop.sh

.PHONY: bench
bench: venv ## benchmark: RPC latency, wake-up, throughput, RSS, vs procrastinate, pgqueuer; BENCH_RECORD=1 rewrites bench/RESULTS.md
	@scripts/with-env.sh $(VENV)/bin/python -m bench $(if $(filter 1,$(BENCH_RECORD)),--record) $(BENCH_ARGS)

clean: ## stop what make run / make test started here, then remove .run with the private cluster's data (keeps .venv and .tools)
	@scripts/stop.sh
	@scripts/stop-postgres.sh --remove
	@rm -rf .run
