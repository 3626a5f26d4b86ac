"""The look-around tools: what the model may look at before it decides.

Read-only and bounded: every result is at most ``RESULT_MAX`` characters, secrets are
masked, paths are confined to the workspace (through ``safefs``: no link is followed,
agentflow's home is never shown), and commands run inside the step's sandbox. The tools'
names and fields are a contract (../shared/DESIGN.md, The LLM).

One module a job: ``schemas`` (the contract and the argument models), ``files``,
``logs``, ``facts`` (a step's, the sandbox's), ``web``, ``commands``, ``runbooks``;
``text`` and ``patterns`` bound what they show; ``toolbox`` calls them by name.
"""

from agentflow.agent.tools.scene import Scene, ToolError
from agentflow.agent.tools.schemas import LOOK_TOOLS
from agentflow.agent.tools.text import RESULT_MAX
from agentflow.agent.tools.toolbox import Toolbox

__all__ = ["LOOK_TOOLS", "RESULT_MAX", "Scene", "ToolError", "Toolbox"]
