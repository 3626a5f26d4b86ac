# Developer tasks. Run scripts/setup first (it makes .venv); scripts/docker-setup for the
# Docker figures (without a daemon they are skipped).
PYTHON ?= .venv/bin/python
ROUNDS ?= 5

.PHONY: bench bench-quick

# The benchmark suite (about ten minutes on two cores): prints the table, writes
# bench/results.json and bench/RESULTS.md.
bench:
	$(PYTHON) bench/run.py --rounds $(ROUNDS)

# A one-round smoke check of every benchmark (about two minutes); bench/results-quick.json.
bench-quick:
	$(PYTHON) bench/run.py --quick
