"""``jnreg.release`` from Python: evaluate, record and gate on a real store with the built-in tiny model."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from jnreg import release
from jnreg.cli import cli
from jnreg.core.host.plugins import Host
from jnreg.core.training import engine
from jnreg.errors import ConfigError, GateError, StoreNotFound
from jnreg.registry import ModelStore
from tests.helpers import AGENT, DEFAULT_REQUIREMENT, QuickFactChecker, config_for, quiet

# Not the chat template: a version trained this way must be evaluated and answered this way too.
TEMPLATE = "Q: {prompt}\nA: {response}"


pytestmark = pytest.mark.usefixtures("quick_host")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """An adapter trained with a prompt template of its own; 4 held-out rows in one eval batch."""
    host = Host(autoload=False)
    host.register(QuickFactChecker(), name="quick_fact_checker")
    agent = host.get(AGENT)
    output = tmp_path_factory.mktemp("release") / "adapter"
    config = config_for(
        agent, output, max_train_samples=8, eval_fraction=0.5, epochs=1.0, prompt_template=TEMPLATE, logging_steps=1
    )
    summary = engine.train(config, agent, echo=quiet)
    return output, summary


def store_with(tmp_path, adapter, *labels: str) -> ModelStore:
    """A fresh store holding the adapter as each of ``labels``, none in service."""
    store = ModelStore(tmp_path / "store")
    for label in labels:
        store.publish(AGENT, adapter[0], version=label, promote=False)
    return store


def test_the_summary_records_how_the_rows_were_prompted(adapter):
    output, summary = adapter
    prompt = json.loads((output / "training_summary.json").read_text())["dataset"]["prompt"]
    assert prompt == summary["dataset"]["prompt"]
    assert prompt["prompt_template"] == TEMPLATE and prompt["user"] == "{prompt}" and prompt["system"]


def test_publish_gates_from_python_and_evaluates_the_way_the_version_was_trained(adapter, tmp_path):
    output, summary = adapter
    store = ModelStore(tmp_path / "store")
    lines: list[str] = []
    result = release.publish(store, AGENT, output, version="v1", require=["rows>=4"], echo=lines.append)
    assert result.promoted and store.current(AGENT) == "v1"
    assert any("evaluating it for rows>=4" in line for line in lines)
    (evaluation,) = store.evaluations(AGENT, "v1")
    assert evaluation["rows_source"]["kind"] == "recorded" and evaluation["metrics"]["rows"] == 4
    # Through the chat template the same rows score another loss; through the training template, the same.
    assert evaluation["metrics"]["eval_loss"] == pytest.approx(summary["metrics"]["eval_loss"], abs=1e-3)
    answer = json.loads(
        CliRunner()
        .invoke(cli, ["--store-root", str(store.root), "generate", AGENT, "Claim: it rained.", "--json"])
        .stdout
    )
    from jnreg.core.models.loading import load_tokenizer

    system = summary["dataset"]["prompt"]["system"]
    rendered = TEMPLATE.split("{response}")[0].replace("{system}", system).replace("{prompt}", "Claim: it rained.")
    expected = len(load_tokenizer("jnreg:tiny-mistral")(rendered, add_special_tokens=False)["input_ids"])
    assert answer["prompt_tokens"] == expected


def test_a_version_short_of_the_plugin_default_stays_out_of_service(adapter, tmp_path):
    store = ModelStore(tmp_path / "store")
    with pytest.raises(GateError, match=r"published fact_checker v\S+ but did not put it in service: schema_valid 0 "):
        release.publish(store, AGENT, adapter[0])  # no require: the plugin's default, schema_valid>=0.5
    (label,) = store.version_labels(AGENT)
    assert store.current(AGENT) is None and len(store.evaluations(AGENT, label)) == 1
    assert [str(r) for r in release.requirements_for(AGENT)] == [DEFAULT_REQUIREMENT]


def test_promote_uses_the_recorded_evaluation_and_a_version_in_service_is_left_alone(adapter, tmp_path):
    store = store_with(tmp_path, adapter, "v1")
    document, _ = release.evaluate_version(store, AGENT, "v1")
    lines: list[str] = []
    entry = release.promote(str(store.root), AGENT, "v1", require=["rows>=4", "eval_loss<100"], echo=lines.append)
    assert entry["version"] == "v1" and ModelStore(store.root).current(AGENT) == "v1"
    assert lines == [f"checking rows>=4, eval_loss<100 against evaluation {document['id']}"]
    lines.clear()
    # Already in service: nothing changes, so nothing is evaluated and no gate can fail.
    assert release.promote(store, AGENT, "v1", require=["rows>=99"], echo=lines.append) is None
    assert "already in service" in lines[0] and len(store.evaluations(AGENT, "v1")) == 1
    done = CliRunner().invoke(cli, ["--store-root", str(store.root), "store", "promote", AGENT, "v1", "--require",
                                    "rows>=99"])  # fmt: skip
    assert done.exit_code == 0 and "fact_checker v1 is already in service" in done.output
    assert "--eval-files" not in done.output


def test_what_the_gate_refuses(adapter, tmp_path):
    store = store_with(tmp_path, adapter, "v1")
    bare = tmp_path / "bare"
    shutil.copytree(adapter[0], bare, ignore=shutil.ignore_patterns("checkpoint-*", "eval_rows.jsonl"))
    store.publish(AGENT, bare, version="v2", promote=False)
    with pytest.raises(GateError, match="fact_checker v2 not put in service: .*cannot be checked") as caught:
        release.promote(store, AGENT, "v2", require=["rows>=1"])
    assert "--eval-files" not in str(caught.value)
    with pytest.raises(StoreNotFound, match="has no version 'v9'"):
        release.promote(store, AGENT, "v9", require=["rows>=1"])
    with pytest.raises(ConfigError, match="malformed requirement"):
        release.promote(store, AGENT, "v1", require=["rows=>1"])
    with pytest.raises(ConfigError, match="no use without promoting"):
        release.publish(store, AGENT, adapter[0], require=["rows>=1"], promote=False)
    with pytest.raises(ConfigError, match="temperature must be a number >= 0"):
        release.evaluate_version(store, AGENT, "v1", temperature=float("nan"))
    assert store.current(AGENT) is None and store.evaluations(AGENT, "v1") == []


def test_an_exported_model_card_says_how_the_version_was_prompted(adapter, tmp_path):
    store = store_with(tmp_path, adapter, "v1")
    target = tmp_path / "merged"
    done = CliRunner().invoke(cli, ["--store-root", str(store.root), "export", AGENT, "v1", "--merged", str(target)])
    assert done.exit_code == 0, done.output
    assert (
        f"trained with the template `{TEMPLATE}`, not the tokenizer's chat template"
        in (target / "README.md").read_text()
    )
