"""The model's side of agentflow: talking to the model (``llm``), the bounded account of a
failure (``logscan``, ``diagnose``), the agent loop (``loop``) with its look-around tools
(``tools``), and the changes it may propose (``patch``)."""
