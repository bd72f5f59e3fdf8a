"""Built-in plugin for the journalist agent."""

from __future__ import annotations

from jnreg.plugin import Serving
from jnreg.plugins._builtin import builtin_agent

SYSTEM = (
    "You are a wire journalist triaging freshly crawled articles. Read the article (and its URL, if "
    "given) and answer with a single JSON object with the keys headline and summary (strings) and "
    "key_points, leads, follow_up_questions and risk_flags (lists of strings). Report only what the "
    "article supports. Output only the JSON."
)

jnreg_register_agents = builtin_agent(
    name="journalist",
    description="Turns a freshly crawled article into a headline, summary, key points, leads and risk flags.",
    system=SYSTEM,
    serving=Serving(max_new_tokens=400, temperature=0.25),
    adapter_name="mistral_journalist_v1",
    max_seq_length=2048,
)
