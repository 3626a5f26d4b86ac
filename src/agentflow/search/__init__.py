"""Adaptive search (``agentflow search``): a sweep whose runs (trials) are proposed one by
one by an Optuna study from the results so far, and stopped early when a metric they report
is clearly worse than the other trials' at the same step (``pruned``).

A search is a sweep in the home's records (``sweeps/<id>.json``, with a ``search`` part), so
``status``, ``stop`` and ``resume`` treat it as one; its study is an SQLite file
(``searches/<id>/study.db``). Optuna is imported only here, when a search runs.
"""
