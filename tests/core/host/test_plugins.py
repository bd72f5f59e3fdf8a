from __future__ import annotations

import json

import pytest

from jnreg.core.host.hookspecs import hookimpl
from jnreg.core.host.plugins import Host
from jnreg.core.host.spec import AgentSpec, PromptTemplate
from jnreg.errors import PluginError, UnknownAgentError
from jnreg.testing import BUILTIN_PLUGINS
from tests.helpers import run_jnreg


def make_plugin(name: str, description: str = "A test agent."):
    class Plugin:
        @hookimpl
        def jnreg_register_agents(self, register):
            register(
                AgentSpec(
                    name=name,
                    description=description,
                    template=PromptTemplate(system="Answer in JSON."),
                    load_dataset=lambda options: [{"prompt": "p", "response": "r"}],
                )
            )

    return Plugin()


def test_entry_points_load_the_eight_builtin_agents():
    host = Host(autoload=True)
    agents = host.agents()
    assert set(BUILTIN_PLUGINS) <= set(agents)
    for name in BUILTIN_PLUGINS:
        assert agents[name].plugin == name
        assert agents[name].package == "jnreg"
        assert agents[name].spec.defaults.base_model == "mistralai/Mistral-7B-Instruct-v0.3"
    assert host.problems == []


def test_autoload_switch_loads_nothing(monkeypatch):
    monkeypatch.setenv("JNREG_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert Host().agents() == {}


def test_console_script_lists_builtin_agents_through_entry_points():
    done = run_jnreg("agents", "list", "--json")
    assert done.returncode == 0, done.stderr
    names = [a["name"] for a in json.loads(done.stdout)["agents"]]
    assert sorted(BUILTIN_PLUGINS) == sorted(names)


def test_in_memory_plugin_registers_and_unregisters(jnreg_host, register_plugin):
    register_plugin(make_plugin("team_one"), name="team-one")
    assert jnreg_host.get("team_one").plugin == "team-one"
    jnreg_host.unregister("team-one")
    with pytest.raises(UnknownAgentError):
        jnreg_host.get("team_one")


def test_two_plugins_claiming_one_agent_name_both_and_others_keep_working(jnreg_host, register_plugin):
    register_plugin(make_plugin("dup"), name="first-plugin")
    register_plugin(make_plugin("dup"), name="second-plugin")
    register_plugin(make_plugin("other"), name="other-plugin")
    assert list(jnreg_host.agents()) == ["other"]
    with pytest.raises(PluginError) as caught:
        jnreg_host.get("dup")
    assert "first-plugin" in str(caught.value) and "second-plugin" in str(caught.value)
    assert any("first-plugin" in p and "second-plugin" in p for p in jnreg_host.problems)


def test_broken_plugin_is_named_and_others_keep_working(jnreg_host, register_plugin):
    class Broken:
        @hookimpl
        def jnreg_register_agents(self, register):
            raise RuntimeError("database unreachable")

    register_plugin(Broken(), name="broken-plugin")
    register_plugin(make_plugin("healthy"), name="healthy-plugin")
    assert list(jnreg_host.agents()) == ["healthy"]
    assert any("broken-plugin" in p and "database unreachable" in p for p in jnreg_host.problems)
    with pytest.raises(UnknownAgentError, match="broken-plugin"):
        jnreg_host.get("missing")


@pytest.mark.parametrize(
    "bad_spec",
    [
        lambda: {"name": "not a spec"},
        lambda: AgentSpec(name="Bad Name", description="x", template=PromptTemplate(system="s"), sample_data=None),
        lambda: AgentSpec(name="nodata", description="x", template=PromptTemplate(system="s")),
        lambda: AgentSpec(
            name="badschema",
            description="x",
            template=PromptTemplate(system="s"),
            load_dataset=list,
            response_schema={"type": "no-such-type"},
        ),
        lambda: PromptTemplate(system="s", user="no placeholder"),
    ],
    ids=["not-a-spec", "bad-name", "no-data", "bad-schema", "bad-template"],
)
def test_invalid_registration_is_reported_with_the_plugin_name(jnreg_host, register_plugin, bad_spec):
    class Invalid:
        @hookimpl
        def jnreg_register_agents(self, register):
            register(bad_spec())

    register_plugin(Invalid(), name="invalid-plugin")
    register_plugin(make_plugin("fine"), name="fine-plugin")
    assert list(jnreg_host.agents()) == ["fine"]
    assert len(jnreg_host.problems) == 1 and "invalid-plugin" in jnreg_host.problems[0]


def test_misspelt_hook_fails_loudly(jnreg_host):
    class Misspelt:
        @hookimpl
        def jnreg_register_agent(self, register):  # missing the final "s"
            pass

    with pytest.raises(PluginError, match="jnreg_register_agent"):
        jnreg_host.register(Misspelt(), name="misspelt")
    assert jnreg_host.pm.get_plugin("misspelt") is None


def test_unknown_agent_lists_the_known_ones(builtin_agents):
    with pytest.raises(UnknownAgentError) as caught:
        builtin_agents.get("sports_writer")
    message = str(caught.value)
    assert "sports_writer" in message
    assert all(name in message for name in BUILTIN_PLUGINS)
