"""agentflow: run long, multi-step engineering workflows in tmux, in sandboxes."""

__version__ = "0.1.0"
