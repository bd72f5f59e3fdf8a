"""Built-in plugin for the chief_editor agent."""

from __future__ import annotations

from jnreg.plugin import Serving
from jnreg.plugins._builtin import builtin_agent

SYSTEM = (
    "You are the chief editor routing copy through the newsroom pipeline. Given a piece of copy and its "
    "metadata, answer with a single JSON object: priority (urgent, high, medium, low or review), stage "
    "(intake, analysis, fact_check, synthesis, review, publish or archive), confidence (0 to 1), summary "
    "(string), risk_flags and next_actions (lists of strings) and notes (string). Output only the JSON."
)

jnreg_register_agents = builtin_agent(
    name="chief_editor",
    description="Triages copy: priority, pipeline stage, confidence, risks and next actions.",
    system=SYSTEM,
    serving=Serving(max_new_tokens=380, temperature=0.15),
    adapter_name="mistral_chief_editor_v1",
    max_seq_length=1536,
)
