# Developer tasks. Run scripts/setup first (it makes .venv); scripts/docker-setup for the
# Docker figures (without a daemon they are skipped).
PYTHON ?= .venv/bin/python
ROUNDS ?= 5
SKIP ?=

.PHONY: bench bench-quick bench-peers bench-peers-quick

# The benchmark suite (about ten minutes on two cores): prints the table, writes
# bench/results.json and bench/RESULTS.md.
bench:
	$(PYTHON) bench/run.py --rounds $(ROUNDS)

# A one-round smoke check of every benchmark (about two minutes); bench/results-quick.json.
bench-quick:
	$(PYTHON) bench/run.py --quick

# agentflow against Snakemake, Prefect, Luigi and Dagster, interleaved rounds (installs the
# pinned peers into bench/.peers-venv first): prints the tables, writes bench/peers.json and
# bench/PEERS.md. SKIP=dagster leaves a slow peer out.
bench-peers:
	$(PYTHON) bench/peers.py --rounds $(ROUNDS) --skip "$(SKIP)"

# A one-round smoke check of the harness at small sizes; bench/peers-quick.json.
bench-peers-quick:
	$(PYTHON) bench/peers.py --quick --skip "$(SKIP)"
