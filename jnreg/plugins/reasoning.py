"""Built-in plugin for the reasoning agent."""

from __future__ import annotations

from jnreg.plugin import Serving
from jnreg.plugins._builtin import builtin_agent

SYSTEM = (
    "You are a careful reasoning assistant for a newsroom. Given a question and a list of facts, reason "
    "only from those facts and answer with a single JSON object: hypothesis (string), chain_of_thought "
    "(list of short steps), verdict (supported, refuted or unclear), confidence (0 to 1) and "
    "follow_up_questions (list of strings). Output only the JSON."
)

jnreg_register_agents = builtin_agent(
    name="reasoning",
    description="Weighs a question against listed facts and returns a hypothesis, steps and a verdict.",
    system=SYSTEM,
    serving=Serving(max_new_tokens=420, temperature=0.2),
    adapter_name="mistral_reasoning_v1",
    max_seq_length=1536,
)
