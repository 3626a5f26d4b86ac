"""Two mistakes the loader explains instead of only refusing (issue 17): a ``: `` inside a
plain value (``run: echo "HTTP 403: denied"``), and a duration without unit
(``timeout: 5``: seconds to one reader, minutes to another)."""

from __future__ import annotations

import pytest

from agentflow.errors import WorkflowError
from agentflow.workflow import parse_workflow

from conftest import Env

HEADER = "version: 1\nname: t\nsteps:\n  - id: a\n"


def problems(text: str, **kwargs: bool) -> list[str]:
    with pytest.raises(WorkflowError) as info:
        parse_workflow(text, "wf.yaml", **kwargs)
    return [str(p) for p in info.value.problems]


# --- a ': ' inside a value ---------------------------------------------------------------------


def test_a_colon_in_a_run_value_says_to_quote_it_or_use_a_block() -> None:
    assert problems(HEADER + '    run: echo "HTTP 403: denied"\n') == [
        "wf.yaml:5:24: YAML syntax error: mapping values are not allowed here: the value of "
        "run: has ': ' in it; quote the whole value (run: 'echo \"HTTP 403: denied\"') "
        "or write it as a block with |"
    ]


def test_the_quoted_or_block_forms_the_hint_names_are_valid() -> None:
    quoted = parse_workflow(HEADER + "    run: 'echo \"HTTP 403: denied\"'\n", "wf.yaml")
    block = parse_workflow(HEADER + '    run: |\n      echo "HTTP 403: denied"\n', "wf.yaml")
    assert quoted.steps[0].run == 'echo "HTTP 403: denied"'
    assert block.steps[0].run == 'echo "HTTP 403: denied"\n'


def test_a_comment_after_the_value_is_left_out_of_the_quoted_form() -> None:
    (found,) = problems(HEADER + "    run: curl -H Accept: json  # the API\n")
    assert "(run: 'curl -H Accept: json')" in found


def test_a_value_with_a_single_quote_is_told_to_use_a_block() -> None:
    (found,) = problems("version: 1\nname: t\nsteps:\n  - id: a\n    run: echo it's: here\n")
    assert found.startswith("wf.yaml:5:")
    assert found.endswith(
        "the value of run: has ': ' in it; quote the whole value, "
        "or write it as a block (run: | and the text indented below)"
    )


def test_a_colon_on_a_continuation_line_names_the_key_that_owns_the_value() -> None:
    (found,) = problems(HEADER + "    run: python train.py\n      --lr: 3\n")
    assert found.startswith("wf.yaml:6:")
    assert "the value of run: has ': ' in it; quote the whole value, or write it as a block" in (
        found
    )


def test_a_run_that_parsed_as_a_mapping_says_why() -> None:
    assert problems(HEADER + "    run:\n      python train.py --lr: 3\n") == [
        "wf.yaml:5:5: steps[0].run: input should be a valid string, got "
        "{'python train.py --lr': 3}: YAML read it as a mapping because of the ': ' in it; "
        "quote the whole value, or write it as a block with |"
    ]


def test_other_syntax_errors_get_no_colon_hint() -> None:
    (found,) = problems(HEADER + "    run: [echo, hi\n")
    assert "quote the whole value" not in found


def test_the_cli_prints_the_hint_on_one_line(af: Env) -> None:
    wf = af.write(HEADER + '    run: echo "HTTP 403: denied"\n')
    res = af.cli("validate", str(wf))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"error: {wf}:5:24: YAML syntax error: mapping values")
    assert "quote the whole value" in lines[0]
    assert "write it as a block with |" in lines[0]


# --- durations need a unit ---------------------------------------------------------------------

SERVICE = "    run: x\n    service: true\n"
PLACES = {
    "steps[0].timeout": "    run: x\n    timeout: {d}\n",
    "steps[0].stall_timeout": "    run: x\n    stall_timeout: {d}\n",
    "steps[0].ready.timeout": SERVICE + "    ready: {{log: up, timeout: {d}}}\n",
    "steps[0].ready.interval": SERVICE + "    ready: {{log: up, interval: {d}}}\n",
    "steps[0].recover[0].wait": "    run: x\n    recover: [{{match: x, action: retry, wait: {d}}}]\n",  # noqa: E501
    "steps[0].retry.backoff.initial": "    run: x\n    retry: {{backoff: {{initial: {d}}}}}\n",
    "steps[0].expect.duration": "    run: x\n    expect: {{duration: {d}}}\n",
}


@pytest.mark.parametrize("where", list(PLACES))
def test_a_duration_without_unit_is_refused_with_the_units_to_write(where: str) -> None:
    (found,) = problems(HEADER + PLACES[where].format(d=5))
    assert found.endswith(f"{where}: 5 has no unit: write 5s, 5m or 5h"), found
    assert parse_workflow(HEADER + PLACES[where].format(d="5s"), "wf.yaml")


def test_a_bare_timeout_is_located_and_says_what_to_write() -> None:
    assert problems(HEADER + "    run: x\n    timeout: 5\n") == [
        "wf.yaml:6:5: steps[0].timeout: 5 has no unit: write 5s, 5m or 5h"
    ]
    assert problems(HEADER + "    run: x\n    timeout: 1.5\n") == [
        "wf.yaml:6:5: steps[0].timeout: 1.5 has no unit: write 1.5s, 1.5m or 1.5h"
    ]


def test_defaults_durations_need_units_too() -> None:
    text = "version: 1\nname: t\ndefaults: {timeout: 30}\nsteps:\n  - id: a\n    run: x\n"
    assert problems(text) == [
        "wf.yaml:3:12: defaults.timeout: 30 has no unit: write 30s, 30m or 30h"
    ]


def test_a_runs_frozen_copy_keeps_bare_seconds() -> None:
    """A run started before units were required re-reads its frozen file on resume."""
    wf = parse_workflow(HEADER + "    run: x\n    timeout: 5\n", "wf.yaml", bare_seconds=True)
    assert wf.steps[0].timeout == 5.0


def test_validate_refuses_a_bare_duration_in_one_line(af: Env) -> None:
    wf = af.write(HEADER + "    run: x\n    timeout: 5\n")
    res = af.cli("validate", str(wf))
    assert res.returncode == 2
    assert (
        res.stderr.strip()
        == f"error: {wf}:6:5: steps[0].timeout: 5 has no unit: write 5s, 5m or 5h"
    )
