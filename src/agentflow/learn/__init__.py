"""``agentflow learn``: turn the failures a run recovered from into a runbook entry and a
``recover:`` rule, as a patch a person reviews.

A recovery is a failed attempt, a decision about it (a ``recover:`` rule that matched, or
the model's diagnosis with ``on_failure: diagnose``) and the next attempt of the step
succeeding (or, for a ``skip``, the run succeeding). All of it is read from the run's
``events.jsonl``, its frozen ``workflow.yaml`` and the attempts' logs.

The model's decisions are read from the ``diagnosis`` events' data (the fields of
``submit_decision``), with the look-around calls before them (``agent_tool``) and what the
runner did (``patch_applied``, ``rerun_scheduled``, ``inputs_changed``); for runs recorded
before events had data, from the messages. A decision whose attempt failed again (an
investigation, a fix that did not work) is never learned.

For each recovery: the symptom is one line of the failed attempt's log (the last one that
looks like an error and is not in the log of the attempt that succeeded), the rule's
``match`` that line escaped (numbers, hex ids and the run's own folder made general), and
the fix the decision:
``retry`` with the model's ``env`` as ``set_env`` (and its ``wait``), a plain ``retry``, or
``skip``. What a rule cannot do (a changed command, a patch to files, a rerun of upstream
steps, an environment for the step's dependents, changed inputs) is an entry only: it
shows the change (a patch's changed lines, bounded) and says how to keep it.

The workflow file is edited by inserting text where the step is (its comments and layout
stay), and the result must load, with agentflow's own loader, to exactly the workflow plus
the rule; otherwise nothing is proposed for it and the rule is shown to add by hand.

The package, by job: ``recoveries`` (what happened in a run), ``transcript`` (the agent's
decision and tool calls in the events), ``fix`` (what was done, and whether a rule can),
``symptom`` (the log line and its ``match``), ``rank`` (the candidates, most repeated
first), ``entry`` (the runbook text), ``yaml_edit`` (the rule inserted into the workflow
file), ``proposal`` (the patch).
"""

from agentflow.learn.proposal import Proposal, propose
from agentflow.learn.proposal import _write as _write  # tests/test_boundary_files.py
from agentflow.learn.rank import NothingToLearn
from agentflow.learn.symptom import match_for

__all__ = ["NothingToLearn", "Proposal", "match_for", "propose"]
