# The two commands a newcomer needs: `make dev` (issue 3) and `make test`.
# Every target installs what it is missing; nothing here needs AWS or an API key.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Two installs into one venv: `make dev` needs only what runs (the local stack, chat-ops: the
# local and ops extras); `make test` and the tools need the dev extra, a superset. Each has its
# stamp; pip skips what is installed, and a dev install satisfies `make dev` without pip.
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
# Ports of `make dev`: the chat service's WebSocket API on PORT, and its Management API, offline
# model and demo page on the next three; oTree on OTREE_PORT (`make dev PORT=9787 OTREE_PORT=9000`).
PORT ?= 8787
OTREE_PORT ?= 8000
# aws-sam-cli pins click and boto3, so it gets a virtual environment of its own.
SAM_VERSION := 1.170.0
SAM_VENV := .venv-sam
SAM_STAMP := $(SAM_VENV)/.installed-$(SAM_VERSION)
# Offline and non-interactive: no telemetry, a region, dummy keys (nothing calls AWS), and
# the sam venv first on PATH so ws_handlers/Makefile runs its pip; MAKEFLAGS= keeps this
# make's flags out of the one sam starts.
SAM := MAKEFLAGS= SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION=us-east-1 AWS_ACCESS_KEY_ID=testing \
	AWS_SECRET_ACCESS_KEY=testing AWS_SESSION_TOKEN=testing AWS_EC2_METADATA_DISABLED=true \
	PATH="$(CURDIR)/$(SAM_VENV)/bin:$$PATH" $(SAM_VENV)/bin/sam

# Debian's Chromium for the widget's browser test: playwright (the Python package) only drives
# it; `playwright install` cannot download browsers here.
CHROMIUM := /usr/bin/chromium
# client_js's node packages (ws for the tests, typescript for check-js): npm ci again only when
# package-lock.json changes.
NODE_STAMP := client_js/node_modules/.installed

.PHONY: help venv sam-venv dev test test-python test-js check-js check-template chromium clean bench bench-burst bench-classroom

# The suite starts hundreds of Python processes (stacks, workers, CLIs): they reuse the project's
# bytecode (__pycache__, git-ignored) even where the environment turns its writing off.
unexport PYTHONDONTWRITEBYTECODE

help:
	@echo "make dev             set up what is missing and run the whole service on loopback (ports: PORT=8787 OTREE_PORT=8000)"
	@echo "make test            set up what is missing, run every test, and say where the time went"
	@echo "make check-js        tsc on client_js's JSDoc types (// @ts-check; also run by make test-js)"
	@echo "make check-template  cfn-lint, sam validate --lint and sam build on template.yaml"
	@echo "make deploy          check AWS credentials, region and Lambda concurrency, sam build + deploy (guided the first time), OpenAI key, oTree settings"
	@echo "make otree           set up oTree's own venv (.venv-otree) for otree_app/"
	@echo "make chromium        install Debian's chromium (apt-get) if $(CHROMIUM) is missing"
	@echo "make bench           load tests on the local stack (200 and 1000 participants), reports in $(BENCH_OUT)/"
	@echo "make bench-burst     only the burst scenarios (everyone sends at once; DynamoDB with conflicts, and SQLite)"
	@echo "make bench-classroom N=10, 50, 200 connect within a second and send 3 messages back to back, 3 runs each (CPU per reply)"
	@echo "make clean           remove virtual environments and build output"

venv: $(STAMP)

$(PY):
	@echo "==> Creating the virtual environment $(VENV) (a few seconds)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	@echo "==> Installing the service, the local stack and the test tools into $(VENV) (.[dev]: 3 to 5 minutes the first time)"
	$(PY) -m pip install -e '.[dev]'
	touch $@

$(RUN_STAMP): pyproject.toml | $(PY)
	@if [ $(STAMP) -nt pyproject.toml ]; then touch $@; else \
		echo "==> Installing the service and the local stack into $(VENV) (.[local,ops]: 1 to 3 minutes the first time)"; \
		set -x; $(PY) -m pip install -e '.[local,ops]' && touch $@; fi

# Offline by default; OPENAI_API_KEY (and OPENAI_BASE_URL) switch to a real model.
# The local stack and, beside it, oTree's devserver (otree_app/); Ctrl-C stops both.
dev: $(RUN_STAMP) otree
	$(PY) otree_app/run_dev.py --port $(PORT) --otree-port $(OTREE_PORT)

# .ci/test runs the phases below (the independent ones side by side) and ends with where the time went.
test:
	@MAKE="$(MAKE)" bash .ci/test

# Tests run on PYTEST_WORKERS processes (pytest-xdist; a worker takes the next test when free).
# Most tests wait on sockets, model pacing and child processes, so two workers halve the wall time
# on two cores; `PYTEST_WORKERS=0` runs them in this one process. The slowest tests are listed at
# the end (where the time goes); node --test prints each test's duration too.
PYTEST_WORKERS ?= 2

test-python: venv chromium
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist worksteal --durations=15 --durations-min=1

# node --test suites of client_js/chat-client.js; they spawn the local stack from the venv.
test-js: venv $(NODE_STAMP) check-js
	cd client_js && node --test test/

# client_js's JSDoc types (`// @ts-check` in each module), checked by tsc with client_js/tsconfig.json.
check-js: $(NODE_STAMP)
	cd client_js && node_modules/.bin/tsc -p tsconfig.json

$(NODE_STAMP): client_js/package-lock.json
	npm ci --prefix client_js
	touch $@

# cfn-lint (project venv), then sam's own lint and a real build into .aws-sam/. --cached:
# the dependency layer is rebuilt only when ws_handlers/ changes (the functions, a copy of
# the package each, always are).
check-template: venv $(SAM_STAMP)
	$(VENV)/bin/cfn-lint template.yaml
	$(SAM) validate --lint --template-file template.yaml
	$(SAM) build --cached --parallel --template-file template.yaml

# ---- deploying to AWS (issue 8), with your own credentials, profile and region: unlike $(SAM)
# above, SAM_AWS sets none. The first deploy of a configuration environment is guided: sam asks
# for the stack name, region and parameters (AllowedOrigins, AlarmEmail, ...) and saves the
# answers in samconfig.local.toml (git-ignored, started from the committed samconfig.toml);
# later deploys reuse them. GUIDED=1 asks again; CONFIG_ENV=study2 keeps a second experiment
# or region apart; REGION=eu-central-1 picks the region; OPENAI_KEY_FILE=path reads the key
# from a file instead of a hidden prompt (it is asked only while the secret holds the placeholder).
SAM_AWS := MAKEFLAGS= SAM_CLI_TELEMETRY=0 PATH="$(CURDIR)/$(SAM_VENV)/bin:$$PATH" $(SAM_VENV)/bin/sam
SAMCONFIG := samconfig.local.toml
CONFIG_ENV ?= default
DEPLOY_TOOL := $(PY) -m ws_handlers.ops.deploy
DEPLOY_WHERE = --config $(SAMCONFIG) --config-env $(CONFIG_ENV) $(if $(REGION),--region $(REGION))
DEPLOY_KEY = $(if $(OPENAI_KEY_FILE),--from-file "$(OPENAI_KEY_FILE)")

.PHONY: deploy
deploy: venv $(SAM_STAMP)
	@$(DEPLOY_TOOL) check $(DEPLOY_WHERE) --sam $(SAM_VENV)/bin/sam $(DEPLOY_KEY) $(if $(filter 1,$(GUIDED)),--guided)
	$(SAM_AWS) build --cached --parallel --template-file template.yaml
	@[ -f $(SAMCONFIG) ] || cp samconfig.toml $(SAMCONFIG)
	@guided="$(if $(filter 1,$(GUIDED)),--guided,$$($(DEPLOY_TOOL) guided-flag $(DEPLOY_WHERE)))" || exit 1; \
		set -x; $(SAM_AWS) deploy $$guided --config-file $(SAMCONFIG) --config-env $(CONFIG_ENV) \
		--no-fail-on-empty-changeset $(if $(REGION),--region $(REGION))
	@$(DEPLOY_TOOL) put-openai-key $(DEPLOY_WHERE) $(DEPLOY_KEY)
	@$(DEPLOY_TOOL) outputs $(DEPLOY_WHERE)

chromium: $(CHROMIUM)

# Only when missing; as root, or through sudo -n (never a password prompt).
$(CHROMIUM):
	@if [ "$$(id -u)" -eq 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else \
		echo "$(CHROMIUM) is missing and installing it needs root: run 'make chromium' as root" \
			"or 'sudo apt-get install chromium'" >&2; exit 1; fi; \
	set -x; $$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

sam-venv: $(SAM_STAMP)

$(SAM_STAMP):
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SAM_VENV)/bin/python -m pip install --quiet aws-sam-cli==$(SAM_VERSION)
	touch $@

# Load tests (issue 6) on the local stack, started by the generator itself in a child process
# (the reply function in worker processes, the offline model in its own); docs/benchmarks.md has
# the results. Think time 10 s (reading a reply, typing the next message; real participants are
# slower). p200 raises LlmConcurrency to 200 so no reply waits for a slot; p200-template-concurrency
# keeps the template's 50; p200-stress sends every 2 s, past what two cores serve in time.
BENCH_OUT ?= load_tests/results
BENCH := $(PY) -m load_tests --local --ttft-ms 300 --tokens-per-second 40 --messages 3

bench: venv bench-burst bench-classroom
	$(BENCH) --think 10 --participants 200 --ramp 10 --llm-concurrency 200 --idle-sockets 1000 --scenario p200 --out $(BENCH_OUT)/p200
	$(BENCH) --think 10 --participants 200 --ramp 10 --scenario p200-template-concurrency --out $(BENCH_OUT)/p200-template-concurrency
	$(BENCH) --think 2 --participants 200 --ramp 10 --llm-concurrency 200 --scenario p200-stress --out $(BENCH_OUT)/p200-stress
	$(BENCH) --think 10 --participants 1000 --ramp 30 --reply-timeout 300 --deadline 900 --scenario p1000 --out $(BENCH_OUT)/p1000

# A classroom told to begin (issue 12): everyone connects, then all send at once (--burst, think 0),
# LlmConcurrency 50, so replies queue and start in arrival order. On the DynamoDB adapter under the
# strict emulation (conflicts on; a transaction in flight 50 ms), every reply job delivered twice,
# the second copy up to 3 s later, so duplicates' claims meet their twins' commits. moto is the
# bottleneck there (docs/benchmarks.md); the same 1000 on SQLite shows the queue alone.
BENCH_DDB := LOCAL_DYNAMODB_HOLD_MS=50 $(BENCH) --burst --llm-concurrency 50 --store dynamodb \
	--duplicate-deliveries 1.0 --duplicate-lag 3

bench-burst: venv
	$(BENCH_DDB) --participants 200 --ramp 10 --reply-timeout 600 --deadline 3600 --scenario p200-dynamodb --out $(BENCH_OUT)/p200-dynamodb
	$(BENCH_DDB) --participants 1000 --ramp 120 --reply-timeout 900 --deadline 3000 --scenario p1000-dynamodb --out $(BENCH_OUT)/p1000-dynamodb
	$(BENCH) --burst --llm-concurrency 50 --participants 1000 --ramp 30 --reply-timeout 600 --deadline 1800 --scenario p1000-burst-sqlite --out $(BENCH_OUT)/p1000-burst-sqlite

# A classroom that starts at once (issue 15): N participants connect within one second, all send
# at once, each sends 3 messages back to back (no think time); the model at TTFT 0.5 s, 40 tokens/s,
# 40 tokens a reply (floor ~0.53 s to the first token, ~1.5 s to the full reply); LlmConcurrency N,
# so no reply waits for a slot; the reply function as `make dev` runs it (CLASSROOM_PROCESSES: the
# runner's --function-processes, default `make dev`'s choice). result.json has the CPU per reply.
# Each size runs CLASSROOM_REPEATS times, interleaved (10, 50, 200, 10, ...), and the table ends
# with each figure's median and range: one run of a shared two-core machine says little.
CLASSROOM_SIZES ?= 10 50 200
CLASSROOM_REPEATS ?= 3
CLASSROOM_PROCESSES ?= dev
CLASSROOM := $(PY) -m load_tests --local --ttft-ms 500 --tokens-per-second 40 --max-tokens 40 --messages 3 \
	--burst --ramp 1 --function-processes $(CLASSROOM_PROCESSES) --no-progress

bench-classroom: venv
	@runs=""; for r in $$(seq 1 $(CLASSROOM_REPEATS)); do for n in $(CLASSROOM_SIZES); do \
		echo "==> classroom-$$n run $$r of $(CLASSROOM_REPEATS) (load average $$(cut -d' ' -f1-3 /proc/loadavg))"; \
		$(CLASSROOM) --participants $$n --llm-concurrency $$n --scenario classroom-$$n \
			--out $(BENCH_OUT)/classroom-$$n-run$$r || exit 1; \
		runs="$$runs $(BENCH_OUT)/classroom-$$n-run$$r"; \
	done; done; $(PY) -m load_tests.classroom $$runs

clean:
	rm -rf $(VENV) .venv-* .aws-sam

# ---- oTree (issue 5): otree_app/ in its own venv, because oTree pins old libraries.
OTREE_VENV := .venv-otree
OTREE_STAMP := $(OTREE_VENV)/.installed
OTREE_STATIC := otree_app/_static/llm_chat
OTREE_ASSETS := $(patsubst client_js/%,$(OTREE_STATIC)/%,$(wildcard client_js/*.js client_js/*.css))

.PHONY: otree test-otree

otree: $(OTREE_STAMP) $(OTREE_ASSETS)

$(OTREE_STAMP): otree_app/requirements.txt
	@echo "==> Installing oTree into its own virtual environment $(OTREE_VENV) (about a minute the first time)"
	$(PYTHON) -m venv $(OTREE_VENV)
	$(OTREE_VENV)/bin/python -m pip install --upgrade pip
	$(OTREE_VENV)/bin/python -m pip install -r otree_app/requirements.txt
	touch $@

# client_js/ copied into oTree's static folder (its static server refuses symlinks that leave it).
$(OTREE_STATIC)/%: client_js/%
	@mkdir -p $(@D)
	cp $< $@

# oTree's own bots (no JavaScript): the server-side rule refuses a chat too short, the stored
# transcript lets them on, the custom export reads it. A throwaway store, secret and database.
# oTree keeps its database in ./db.sqlite3 whatever DATABASE_URL says: the bots run in a copy of
# the project, so a developer's otree_app/db.sqlite3 is never read or touched.
test-otree: otree
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
		cp -r otree_app "$$tmp/project" && rm -f "$$tmp/project/db.sqlite3" && cd "$$tmp/project" && \
		LLM_CHAT_ROOT="$(CURDIR)" CHAT_STORE="$$tmp/chat.sqlite3" \
		CHAT_TICKET_SECRET="bots-only-secret-0123456789abcdef0123456789" \
		PATH="$(CURDIR)/$(OTREE_VENV)/bin:$$PATH" otree test chat_demo

test-python: otree
