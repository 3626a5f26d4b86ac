"""``agentflow learn``: turn the failures a run recovered from into a runbook entry and a
``recover:`` rule, as a patch a person reviews.

A recovery is a failed attempt, a decision about it (a ``recover:`` rule that matched, or
the model's diagnosis with ``on_failure: diagnose``) and the next attempt of the step
succeeding (or, for a ``skip``, the run succeeding). All of it is read from the run's
``events.jsonl``, its frozen ``workflow.yaml`` and the attempts' logs.

For each recovery: the symptom is one line of the failed attempt's log (the last one that
looks like an error and is not in the log of the attempt that succeeded), the rule's
``match`` that line escaped (numbers, hex ids and the run's own folder made general), and
the fix the decision:
``retry`` with the model's ``env`` as ``set_env``, a plain ``retry``, or ``skip``. A change
of command cannot be a rule: the runbook entry shows it and says so.

The workflow file is edited by inserting text where the step is (its comments and layout
stay), and the result must load, with agentflow's own loader, to exactly the workflow plus
the rule; otherwise nothing is proposed for it and the rule is shown to add by hand.

The package, by job: ``recoveries`` (what happened in a run), ``symptom`` (the log line
and its ``match``), ``rank`` (the candidates, most repeated first), ``entry`` (the runbook
text), ``yaml_edit`` (the rule inserted into the workflow file), ``proposal`` (the patch).
"""

from agentflow.learn.proposal import Proposal, propose
from agentflow.learn.proposal import _write as _write  # tests/test_boundary_files.py
from agentflow.learn.rank import NothingToLearn
from agentflow.learn.symptom import match_for

__all__ = ["NothingToLearn", "Proposal", "match_for", "propose"]
