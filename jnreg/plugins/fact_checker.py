"""Built-in plugin for the fact_checker agent."""

from __future__ import annotations

from jnreg.plugin import Serving
from jnreg.plugins._builtin import builtin_agent

SYSTEM = (
    "You are a fact checker. Judge the claim using the context given and answer with a single JSON "
    "object: verdict (verified, refuted or unclear), confidence and score (0 to 1), rationale (one "
    "sentence) and evidence_needed (yes or no). Output only the JSON."
)

jnreg_register_agents = builtin_agent(
    name="fact_checker",
    description="Checks a claim against its context: verdict, confidence, score and rationale.",
    system=SYSTEM,
    serving=Serving(max_new_tokens=320, temperature=0.0),
    adapter_name="mistral_fact_checker_v1",
    max_seq_length=1024,
)
