"""The real vLLM server answering for the store: names, served == trained, refusals, promotions under load."""

from __future__ import annotations

import importlib
import json
import os
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from jnreg.registry import ModelStore
from jnreg.testing import BUILTIN_PLUGINS
from tests.registry_helpers import summary_for
from tests.serve.conftest import Server, make_lora, publish

# How long a promotion may take to reach the server.
PROMOTION_S = 10.0
NEW_TOKENS = 16


def _prompt_ids(tokenizer, spec, prompt: str) -> list[int]:
    """The prompt's tokens exactly as ``jnreg eval`` renders them (generate_answer's template and tokenizing)."""
    text = tokenizer.apply_chat_template(spec.template.messages(prompt), tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _served(server: Server, model: str, ids: list[int], max_tokens: int = NEW_TOKENS) -> tuple[str, list[int], float]:
    status, answer = server.complete(model, ids, max_tokens, logprobs=1, return_tokens_as_token_ids=True)
    assert status == 200, answer
    choice = answer["choices"][0]
    tokens = [int(t.removeprefix("token_id:")) for t in choice["logprobs"]["tokens"]]
    return answer["model"], tokens, choice["logprobs"]["token_logprobs"][0]


def _greedy(model, tokenizer, ids: list[int]):
    """transformers + peft's greedy answer to ``ids``, with each step's scores."""
    import torch

    with torch.no_grad():
        return model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            output_scores=True,
            return_dict_in_generate=True,
        )


def test_served_answers_equal_transformers_and_peft_for_every_builtin_agent(server, served_store):
    import torch

    from jnreg.core.host.plugins import Host
    from jnreg.registry import load

    host = Host(autoload=False)
    for name in BUILTIN_PLUGINS:
        host.register(importlib.import_module(f"jnreg.plugins.{name}"), name=name)
    store = ModelStore(served_store)
    for agent in BUILTIN_PLUGINS:
        spec = host.get(agent).spec
        model, tokenizer = load(agent, "v1", None, store=store)
        rows = [json.loads(line) for line in spec.sample_data.read_text(encoding="utf-8").splitlines()[:2]]
        answers, base_answers = [], []
        for row in rows:
            ids = _prompt_ids(tokenizer, spec, row["prompt"])
            out = _greedy(model, tokenizer, ids)
            with model.disable_adapter():
                base_answers.append(_greedy(model, tokenizer, ids).sequences[0, len(ids) :].tolist())
            expected = out.sequences[0, len(ids) :].tolist()
            first_logprob = float(torch.log_softmax(out.scores[0][0].float(), -1)[expected[0]])
            name, tokens, served_logprob = _served(server, agent, ids)
            assert name == f"{agent}@v1"
            assert tokens == expected, f"{agent}: {row['prompt'][:40]!r}"
            assert abs(served_logprob - first_logprob) < 1e-3, (agent, served_logprob, first_logprob)
            answers.append(expected)
        # The trained adapter changes what the base answers, so equal answers show the adapter was served.
        assert answers != base_answers, agent


def test_names_pinned_versions_and_models_listing(server):
    status, answer = server.complete("synthesizer@v2", "the markets")
    assert status == 200 and answer["model"] == "synthesizer@v2"
    pinned_v1 = server.complete("synthesizer@v1", "the markets")[1]["choices"][0]["text"]
    assert pinned_v1 != answer["choices"][0]["text"]  # two versions, two adapters
    status, listing = server.get("/v1/models")
    loaded = {card["id"]: card for card in listing["data"]}
    assert {"synthesizer@v1", "synthesizer@v2"} <= set(loaded)
    digest = ModelStore(server.root).manifest("synthesizer", "v2")["digest"]
    assert Path(loaded["synthesizer@v2"]["root"]).name == digest  # served from the digest-keyed copy
    status, chat = server.post(
        "/v1/chat/completions",
        {"model": "critic", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4, "temperature": 0},
    )
    assert status == 200 and chat["model"] == "critic@v1"


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "synthesizer/../critic",
        "synthesizer@../v1",
        "synthesizer@v1/..",
        "syn\x00thesizer",
        "s" * 300,
        "synthesizer@" + "v" * 300,
        "no_such_agent",
        "no_such_agent@v1",
        "synthesizer@v999",
        "Synthesizer",
    ],
)
def test_unknown_and_malformed_names_are_not_found_and_the_server_goes_on(server, name):
    status, answer = server.complete(name, "hello")
    assert 400 <= status < 500, answer
    assert server.complete("synthesizer@v1", "hello")[0] == 200


def test_a_tampered_version_is_refused_with_one_log_line(server, served_store, tmp_path):
    # A seed of its own: a version with the same bytes as another shares its verified copy and would be served.
    result = publish(served_store, "journalist", 1007, tmp_path, version="v-tampered", promote=False)
    weights = result.path / "adapter_model.safetensors"
    os.chmod(result.path, 0o755)
    os.chmod(weights, 0o644)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    status, answer = server.complete("journalist@v-tampered", "hello")
    assert 400 <= status < 500, answer
    assert server.get("/v1/models")[1]["data"] and "journalist@v-tampered" not in {
        card["id"] for card in server.get("/v1/models")[1]["data"]
    }
    refusals = [line for line in server.log_text().splitlines() if "not serving journalist@v-tampered" in line]
    assert len(refusals) == 1 and "corrupt" in refusals[0]
    # A partial version (a file gone) is refused the same way.
    weights.unlink()
    assert 400 <= server.complete("journalist@v-tampered", "hello")[0] < 500


def test_a_version_trained_with_a_prompt_template_is_refused_not_prompted_wrongly(server, served_store, tmp_path):
    """Chat requests would reach it through the chat template, not the template it learned."""
    source = make_lora(tmp_path / "templated", 1011)
    summary = summary_for("journalist")
    summary["dataset"]["prompt"] = {"prompt_template": "Q: {prompt} A: {response}", "system": "", "user": "{text}"}
    (source / "training_summary.json").write_text(json.dumps(summary), encoding="utf-8")
    ModelStore(served_store).publish("journalist", source, version="v-templated", promote=False)
    status, answer = server.complete("journalist@v-templated", "hello")
    assert 400 <= status < 500, answer
    refusals = [line for line in server.log_text().splitlines() if "not serving journalist@v-templated" in line]
    assert len(refusals) == 1 and "--prompt-template" in refusals[0]


def _wait_for(server: Server, agent: str, version: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < PROMOTION_S + 5:
        status, answer = server.complete(agent, "hello", 1)
        if status == 200 and answer["model"] == f"{agent}@{version}":
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{agent} {version} was not served within {PROMOTION_S + 5} s")


def test_promotion_and_rollback_reach_the_server_and_pinned_names_stay(server):
    store = ModelStore(server.root)
    pinned = server.complete("synthesizer@v1", "the markets")[1]["choices"][0]["text"]
    store.promote("synthesizer", "v2")
    assert _wait_for(server, "synthesizer", "v2") <= PROMOTION_S
    store.rollback("synthesizer")
    assert _wait_for(server, "synthesizer", "v1") <= PROMOTION_S
    store.promote("synthesizer", "v3")  # rank 16: the server's rank limit was sized for it
    assert _wait_for(server, "synthesizer", "v3") <= PROMOTION_S
    assert server.complete("synthesizer@v1", "the markets")[1]["choices"][0]["text"] == pinned
    store.promote("synthesizer", "v1")
    assert _wait_for(server, "synthesizer", "v1") <= PROMOTION_S


def test_answers_under_churn_come_from_a_version_in_service_while_they_ran(server):
    store = ModelStore(server.root)
    prompt = "the council voted"
    expected = {v: server.complete(f"synthesizer@{v}", prompt, 12)[1]["choices"][0]["text"] for v in ("v1", "v2")}
    assert expected["v1"] != expected["v2"]
    # (version, from, to): when each version was in service, as seen by the one writer.
    spans: list[list] = [["v1", 0.0, None]]
    answers: list[tuple[float, float, int, dict]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            began = time.monotonic()
            status, answer = server.complete("synthesizer", prompt, 12)
            answers.append((began, time.monotonic(), status, answer))

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    try:
        for version in ("v2", "v1", "v2", "v1", "v2", "v1"):
            time.sleep(0.7)
            before = time.monotonic()
            store.promote("synthesizer", version)
            after = time.monotonic()
            spans[-1][2] = after
            spans.append([version, before, None])
        time.sleep(0.7)
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=120)
    assert len(answers) >= 12
    seen = set()
    for began, ended, status, answer in answers:
        assert status == 200, answer
        model, text = answer["model"], answer["choices"][0]["text"]
        agent, version = model.split("@")
        in_service = {v for v, start, end in spans if start <= ended and (end is None or end >= began)}
        assert version in in_service, (began, ended, model, spans)
        assert text == expected[version]  # the answer really is that version's adapter
        seen.add(version)
    assert seen == {"v1", "v2"}


def _stream(server: Server, model: str, prompt: str, max_tokens: int):
    """A streamed completion: yields (model, text) per event as the server sends them."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    body["ignore_eos"] = True
    request = urllib.request.Request(
        server.url + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        for raw in response:
            line = raw.decode().strip()
            if line.startswith("data: ") and line != "data: [DONE]":
                event = json.loads(line[len("data: ") :])
                yield event["model"], event["choices"][0]["text"]


def test_a_request_in_flight_finishes_on_its_version(server, tmp_path):
    store = ModelStore(server.root)
    assert store.current("analyst") == "v1"
    publish(server.root, "analyst", 55, tmp_path, version="v2", promote=False)
    pinned = "".join(text for _, text in _stream(server, "analyst@v1", "the vote", 120))
    events = _stream(server, "analyst", "the vote", 120)
    first_model, text = next(events)  # the request is being answered
    store.promote("analyst", "v2")
    rest = list(events)
    assert first_model == "analyst@v1" and {model for model, _ in rest} == {"analyst@v1"}
    assert text + "".join(t for _, t in rest) == pinned
    assert _wait_for(server, "analyst", "v2") <= PROMOTION_S
    store.promote("analyst", "v1")
