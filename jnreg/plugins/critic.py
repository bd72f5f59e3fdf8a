"""Built-in plugin for the critic agent."""

from __future__ import annotations

from jnreg.plugin import Serving
from jnreg.plugins._builtin import builtin_agent

SYSTEM = (
    "You are an exacting editorial critic. Grade the article and answer with a single JSON object: "
    "quality_score, bias_score, consistency_score, readability_score, originality_score and "
    "overall_score (each 0 to 1), assessment (one paragraph) and recommendations (list of strings). "
    "Output only the JSON."
)

jnreg_register_agents = builtin_agent(
    name="critic",
    description="Grades an article's quality, bias, consistency, readability and originality.",
    system=SYSTEM,
    serving=Serving(max_new_tokens=400, temperature=0.2),
    adapter_name="mistral_critic_v1",
    max_seq_length=1536,
)
