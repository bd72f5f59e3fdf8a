from __future__ import annotations

import json

import pytest

from jnreg.core.data.rows import check_records, load_records, response_checker
from jnreg.core.host.spec import DataOptions
from jnreg.testing import BUILTIN_PLUGINS


@pytest.mark.parametrize("agent", BUILTIN_PLUGINS)
def test_sample_data_is_large_varied_and_schema_valid(builtin_agents, agent):
    spec = builtin_agents.get(agent).spec
    assert spec.response_schema is not None
    validator = response_checker(spec)  # compiles: the schema itself is valid
    rows = [json.loads(line) for line in spec.sample_data.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(rows) >= 24
    assert len({row["prompt"] for row in rows}) == len(rows), "prompts repeat"
    for number, row in enumerate(rows, start=1):
        assert set(row) == {"prompt", "response"}
        problem = validator.first_error(json.loads(row["response"]))
        assert problem is None, f"{agent} row {number}: {problem}"
    # The loader the trainer uses agrees.
    checked = check_records(load_records(spec, DataOptions()), DataOptions(), spec)
    assert len(checked.examples) == len(rows) and not checked.skipped


def test_re_ranker_scores_every_candidate_once(builtin_agents):
    import re

    spec = builtin_agents.get("re_ranker").spec
    for line in spec.sample_data.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        ids = re.findall(r"^\[([^\]]+)\]", row["prompt"], flags=re.M)
        scored = [s["id"] for s in json.loads(row["response"])["scores"]]
        assert ids and sorted(ids) == sorted(scored), row["prompt"][:60]


def test_each_enum_value_appears_in_the_samples(builtin_agents):
    expectations = {
        "fact_checker": ("verdict", {"verified", "refuted", "unclear"}),
        "analyst": ("sentiment_label", {"positive", "neutral", "negative"}),
        "reasoning": ("verdict", {"supported", "refuted", "unclear"}),
        "chief_editor": ("priority", {"urgent", "high", "medium", "low", "review"}),
    }
    for agent, (key, values) in expectations.items():
        spec = builtin_agents.get(agent).spec
        lines = spec.sample_data.read_text(encoding="utf-8").splitlines()
        seen = {json.loads(json.loads(line)["response"])[key] for line in lines}
        assert values <= seen, f"{agent}.{key} lacks {values - seen}"
