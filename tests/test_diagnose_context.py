"""What of a failed step's log reaches the model (issue 15's context fixes): the head from
its start, each kind of error line once with its first and last occurrence, nothing sent
twice, and the budget a part does not use given to the others."""

from __future__ import annotations

from pathlib import Path

from agentflow.agent.diagnose import Failure, build_context
from agentflow.redact import Redactor
from agentflow.workflow.model import Step


def failure(log: Path) -> Failure:
    return Failure(Step(id="train", run="python train.py"), "python train.py", "failed", 1,
                   "exit code 1", 1, log)  # fmt: skip


def steps_log(tmp_path: Path) -> Path:
    folder = tmp_path / "steps" / "train"
    folder.mkdir(parents=True)
    return folder / "output.log"


def test_the_root_cause_of_a_200000_line_log_reaches_the_model(tmp_path: Path) -> None:
    log = steps_log(tmp_path)
    with log.open("w") as f:
        f.write("config: lr=0.1 batch=64 layers=2 (the banner on line 1)\n")
        for i in range(2, 200_001):
            if i == 150_000:
                f.write("ERROR: config.py:3 n_layers=1 but the checkpoint has 2 (root cause)\n")
            elif i > 150_000 and i % 3000 == 0:
                f.write(f"RuntimeError: shape mismatch in layer {i % 7} (a symptom)\n")
            elif i % 50 == 0:
                f.write(f"warning: retrying read of shard {i}: error 11, not fatal\n")
            else:
                f.write(f"step {i} loss={1 / i:.6f}\n")
        f.write("Traceback (most recent call last):\nAssertionError: train.py:88\n")
    context = build_context(failure(log), [], [], Redactor([]), budget_tokens=3000)
    assert len(context) <= 3000 * 4
    assert "(root cause)" in context
    assert "line 150000:" in context
    assert "config: lr=0.1" in context  # the head, from its start
    assert "AssertionError: train.py:88" in context
    # 16 copies of the symptom and ~4000 warnings: each kind once, with a count.
    assert context.count("(a symptom)") <= 2
    assert "lines of this shape in all" in context


def test_a_short_log_is_sent_once_and_unused_budget_goes_to_the_rest(tmp_path: Path) -> None:
    log = steps_log(tmp_path)
    log.write_text("only line: FileNotFoundError: data/gen.jsonl\n")
    context = build_context(failure(log), [], [], Redactor([]), budget_tokens=2000)
    assert context.count("only line: FileNotFoundError") == 1
    # A long tail and nothing else: it takes far more than its 30 % share.
    with log.open("w") as f:
        for i in range(150):
            f.write(f"epoch {i} loss={i * 0.01:.2f} " + "x" * 100 + "\n")
    context = build_context(failure(log), [], [], Redactor([]), budget_tokens=2000)
    assert len(context) <= 2000 * 4
    assert len(context) > 0.8 * 2000 * 4
    assert "epoch 149" in context


def test_the_models_tool_calls_do_not_push_earlier_attempts_out(tmp_path: Path) -> None:
    from agentflow.store import Event

    log = steps_log(tmp_path)
    log.write_text("boom\n")
    history = [
        Event(kind="step_finished", step="train", attempt=1, status="failed",
              message="first attempt: exit code 7"),
        *[Event(kind="agent_tool", step="train", attempt=1, message=f"read_file {i}")
          for i in range(30)],
    ]  # fmt: skip
    text = build_context(failure(log), history, [], Redactor([]))
    assert "first attempt: exit code 7" in text
    assert "read_file" not in text
