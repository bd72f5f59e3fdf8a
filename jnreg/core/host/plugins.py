"""The plugin manager: loads agent plugins from the ``jnreg`` entry-point group and validates them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata

import pluggy

from jnreg.core.host import hookspecs
from jnreg.core.host.spec import AgentSpec
from jnreg.errors import PluginError, UnknownAgentError

ENTRY_POINT_GROUP = "jnreg"
#: Set to 1 to load no plugins from entry points (the built-in agents included).
DISABLE_AUTOLOAD_ENV = "JNREG_DISABLE_PLUGIN_AUTOLOAD"


@dataclass(frozen=True)
class Agent:
    """An agent spec together with the plugin that registered it."""

    spec: AgentSpec
    plugin: str
    package: str | None

    @property
    def name(self) -> str:
        return self.spec.name


class Host:
    """Holds the plugin manager and the agents its plugins registered."""

    def __init__(self, autoload: bool | None = None) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._agents: dict[str, Agent] | None = None
        self._packages: dict[str, str | None] = {}
        self._import_problems: list[str] = []
        self._contested: dict[str, list[str]] = {}
        self.problems: list[str] = []
        if autoload is None:
            autoload = os.environ.get(DISABLE_AUTOLOAD_ENV, "") not in ("1", "true", "yes")
        if autoload:
            self._load_entry_points()

    def _load_entry_points(self) -> None:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if self.pm.get_plugin(ep.name) is not None or self.pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a team's broken plugin must not take the others down
                self._import_problems.append(f"plugin {ep.name!r} ({ep.value}) failed to import: {exc}")
                continue
            try:
                self._register_checked(plugin, ep.name)
            except PluginError as exc:
                self._import_problems.append(str(exc))
                continue
            self._packages[ep.name] = ep.dist.name if ep.dist is not None else None

    def _register_checked(self, plugin: object, name: str | None) -> str:
        """Register, then refuse (and unregister) a plugin whose hooks match no spec: a misspelt hook."""
        try:
            registered = self.pm.register(plugin, name=name)
        except ValueError as exc:  # pluggy: name or object already registered
            raise PluginError(f"plugin {name or plugin!r} cannot be registered: {exc}") from None
        if registered is None:
            raise PluginError(f"plugin {name or plugin!r} is blocked")
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=registered)
            raise PluginError(f"plugin {registered!r} is invalid: {exc}") from None
        return registered

    def register(self, plugin: object, name: str | None = None) -> str:
        """Register an in-process plugin (tests, embedding); returns its name."""
        registered = self._register_checked(plugin, name)
        self._agents = None
        return registered

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self._packages.pop(name, None)
        self._agents = None

    def agents(self) -> dict[str, Agent]:
        """Every valid agent, by name; broken plugins are recorded in ``problems``."""
        if self._agents is None:
            self._agents = self._collect()
        return self._agents

    def _collect(self) -> dict[str, Agent]:
        agents: dict[str, Agent] = {}
        self.problems = list(self._import_problems)
        self._contested: dict[str, list[str]] = {}
        for impl in self.pm.hook.jnreg_register_agents.get_hookimpls():
            plugin_name = impl.plugin_name
            pending: list[AgentSpec] = []

            def register(spec: AgentSpec, _pending: list[AgentSpec] = pending, _plugin: str = plugin_name) -> None:
                if not isinstance(spec, AgentSpec):
                    raise PluginError(f"plugin {_plugin!r} registered {type(spec).__name__}, not an AgentSpec")
                _pending.append(spec)

            try:
                impl.function(register=register)
            except Exception as exc:
                self.problems.append(f"plugin {plugin_name!r} failed: {exc}")
                continue
            for spec in pending:
                if spec.name in self._contested:
                    self._contested[spec.name].append(plugin_name)
                elif spec.name in agents:
                    self._contested[spec.name] = [agents.pop(spec.name).plugin, plugin_name]
                else:
                    agents[spec.name] = Agent(spec=spec, plugin=plugin_name, package=self._packages.get(plugin_name))
        for name, plugins in self._contested.items():
            # Neither claim wins; every other agent keeps working.
            self.problems.append(self._clash(name, plugins))
        return dict(sorted(agents.items()))

    @staticmethod
    def _clash(name: str, plugins: list[str]) -> str:
        return f"agent {name!r} is registered by two plugins: " + " and ".join(repr(p) for p in plugins)

    def get(self, name: str) -> Agent:
        agents = self.agents()
        if name in self._contested:
            raise PluginError(self._clash(name, self._contested[name]))
        if name not in agents:
            known = ", ".join(agents) or "none"
            hint = f"; plugin problems: {'; '.join(self.problems)}" if self.problems else ""
            raise UnknownAgentError(f"unknown agent {name!r}; known agents: {known}{hint}")
        return agents[name]


_host: Host | None = None


def get_host() -> Host:
    """The process-wide host, created on first use."""
    global _host
    if _host is None:
        _host = Host()
    return _host


def reset_host(host: Host | None = None) -> Host | None:
    """Replace the process-wide host (tests); returns the one it replaced."""
    global _host
    previous, _host = _host, host
    return previous
