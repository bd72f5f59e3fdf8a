"""Built-in plugin for the synthesizer agent."""

from __future__ import annotations

from jnreg.plugin import Serving
from jnreg.plugins._builtin import builtin_agent

SYSTEM = (
    "You are the synthesis desk of a news organisation. The user gives you several snippets about one "
    "story, separated by lines of three dashes. Merge them into one account without inventing facts. "
    "Answer with a single JSON object with the keys summary (string), narrative_voice (string), "
    "key_points (list of strings), cautions (list of strings) and pull_quotes (list of strings, quoted "
    "exactly from the snippets). Output only the JSON."
)

jnreg_register_agents = builtin_agent(
    name="synthesizer",
    description="Merges several snippets about one story into a summary, key points, cautions and pull quotes.",
    system=SYSTEM,
    serving=Serving(max_new_tokens=512, temperature=0.3),
    adapter_name="mistral_synth_v1",
    max_seq_length=2048,
)
