"""Built-in plugin for the re_ranker agent."""

from __future__ import annotations

from jnreg.plugin import Serving
from jnreg.plugins._builtin import builtin_agent

SYSTEM = (
    "You rank passages for a news search engine. Given a query and candidate passages with ids, answer "
    'with a single JSON object whose key scores is a list of {"id": ..., "score": ...} objects, one '
    "for every candidate exactly once, with scores from 0 (irrelevant) to 1 (answers the query). "
    "Output only the JSON."
)

jnreg_register_agents = builtin_agent(
    name="re_ranker",
    description="Scores candidate passages for relevance to a query, each candidate once.",
    system=SYSTEM,
    serving=Serving(max_new_tokens=256, temperature=0.1),
    adapter_name="mistral_re_ranker_v1",
    max_seq_length=1536,
)
