"""Algorithm discovery: plugins through the ``radrouter.algorithms`` entry point group and
third-party models through manifests in the configured folders, all validated on load."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from algorithms.contract import Algorithm, AlgorithmInfo, Purpose
from algorithms.manifest.discovery import discover_manifests

LOGGER = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "radrouter.algorithms"


@dataclass(frozen=True)
class PluginProblem:
    """A plugin that could not be used, and why. Shown by ``status`` and ``/readyz``."""

    name: str
    error: str


class PluginError(Exception):
    pass


def validate_plugin(name: str, plugin: object) -> type[Algorithm]:
    """Check that ``plugin`` is an Algorithm class registered under its own name."""
    if not isinstance(plugin, type):
        raise PluginError(f"entry point {name!r} is not a class")
    info = getattr(plugin, "info", None)
    if not isinstance(info, AlgorithmInfo):
        raise PluginError(f"{plugin.__qualname__}.info is not an AlgorithmInfo")
    if info.name != name:
        raise PluginError(f"entry point {name!r} names a plugin whose info.name is {info.name!r}")
    for method in ("load", "run"):
        if not callable(getattr(plugin, method, None)):
            raise PluginError(f"{plugin.__qualname__} has no {method}() method")
    return plugin


class Registry:
    """The algorithms this installation can run, by name."""

    def __init__(
        self,
        plugins: Mapping[str, type[Algorithm]],
        problems: Iterable[PluginProblem] = (),
    ) -> None:
        self._plugins = dict(plugins)
        self.problems = tuple(problems)

    @classmethod
    def discover(
        cls, group: str = ENTRY_POINT_GROUP, manifest_dirs: Iterable[Path] = ()
    ) -> Registry:
        """Installed plugins, then the manifest models in ``manifest_dirs`` (the routing
        YAML's ``model_dirs``). A broken plugin or manifest becomes a :class:`PluginProblem`;
        a manifest whose name is taken by an installed plugin is refused."""
        plugins: dict[str, type[Algorithm]] = {}
        problems: list[PluginProblem] = []
        for entry in entry_points(group=group):
            try:
                plugins[entry.name] = validate_plugin(entry.name, _load(entry))
            except Exception as exc:  # boundary: a broken plugin is reported, not fatal
                LOGGER.error("algorithm plugin %r rejected: %s", entry.name, exc)
                problems.append(PluginProblem(entry.name, str(exc)))
        taken = set(plugins) | {problem.name for problem in problems}
        found = discover_manifests([Path(d) for d in manifest_dirs], taken=taken)
        for name, plugin in found.algorithms.items():
            plugins[name] = validate_plugin(name, plugin)
        problems.extend(PluginProblem(p.name, p.message) for p in found.problems)
        return cls(plugins, problems)

    def names(self) -> list[str]:
        return sorted(self._plugins)

    def __contains__(self, name: object) -> bool:
        return name in self._plugins

    def info(self, name: str) -> AlgorithmInfo:
        return self._plugins[name].info

    def parameter_names(self) -> dict[str, frozenset[str]]:
        """Each algorithm's parameter names (what ``algorithms.<name>.parameters`` may set);
        a mapping by algorithm name, so it also serves as the collection of names."""
        return {name: frozenset(plugin.info.parameters) for name, plugin in self._plugins.items()}

    def purposes(self) -> dict[str, Purpose]:
        """Each algorithm's purpose (clinical or quality control), by name."""
        return {name: plugin.info.purpose for name, plugin in self._plugins.items()}

    def plugin(self, name: str) -> type[Algorithm]:
        """The algorithm class registered under ``name``."""
        return self._plugins[name]

    def create(self, name: str) -> Algorithm:
        return self._plugins[name]()


def _load(entry: EntryPoint) -> object:
    return entry.load()
