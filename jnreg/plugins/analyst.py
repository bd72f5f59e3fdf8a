"""Built-in plugin for the analyst agent."""

from __future__ import annotations

from jnreg.plugin import Serving
from jnreg.plugins._builtin import builtin_agent

SYSTEM = (
    "You are a media analyst. Read the article and answer with a single JSON object: sentiment_label "
    "(positive, neutral or negative), sentiment_confidence, sentiment_positive and sentiment_negative "
    "(0 to 1), sentiment_intensity (mild, moderate or strong), bias_level (minimal, low, medium or high), "
    "bias_score and bias_confidence (0 to 1) and rationale (one sentence). Output only the JSON."
)

jnreg_register_agents = builtin_agent(
    name="analyst",
    description="Scores an article's sentiment and bias with a one-sentence rationale.",
    system=SYSTEM,
    serving=Serving(max_new_tokens=360, temperature=0.15),
    adapter_name="mistral_analyst_v1",
    max_seq_length=1536,
)
