"""What every registry shares: entries keyed by name, the settings an entry owns, and references
to code that are checked whole when a config is validated.

An entry names code as ``"module:attribute"`` (a mask function, a model builder, a dataset
loader, a metric's function; ``attribute`` may be ``Class.method``). Validation resolves each
reference without importing the module (validation runs before torch is imported): the module's
source is found and parsed, and the attribute must be defined at its top level. A typo is refused
in one line at validation, never inside a job.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from functools import cache
from typing import Any, Generic, TypeVar

Entry = TypeVar("Entry")
IN_SPEC = ("always", "changed")


class Registry(dict[str, Entry], Generic[Entry]):
    """The entries of one kind by name; :meth:`register` adds one (a later entry of the same
    name replaces the earlier one)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, entry: Entry) -> Entry:
        self[entry.name] = entry
        return entry

    def where(self, name: str) -> str:
        """The prefix of a problem line about one entry."""
        return f"{self.kind} registry: {name}"


@dataclass(frozen=True)
class Setting:
    """A config key that one entry owns, under its registry's config section (``metrics.*`` for
    a metric, ``prune.*`` for a pruning method): its default, its JSON-schema rule (type, bounds,
    enum) and what it does. The schema, validation, the config dataclass's options and
    docs/configuration.md derive from it. ``in_spec``: ``"always"``, in the job spec whenever the
    entry acts; ``"changed"``, only when it differs from its default, so that adding a setting
    changes no existing spec (and reruns nothing)."""

    key: str
    default: Any
    rule: dict
    description: str
    in_spec: str = "changed"

    def schema(self) -> dict:
        """The setting's schema property."""
        return {**self.rule, "default": self.default, "description": self.description}

    def acts(self, value) -> bool:
        """Whether ``value`` enters the job spec."""
        return self.in_spec == "always" or value != self.default


def setting_problems(where: str, settings: tuple[Setting, ...]) -> list[str]:
    """One line per malformed setting of an entry."""
    problems = []
    for setting in settings:
        if not isinstance(setting, Setting):
            problems.append(f"{where}: settings must be Setting entries, got {setting!r}")
            continue
        if setting.in_spec not in IN_SPEC:
            problems.append(f"{where}: setting {setting.key}: in_spec must be one of {list(IN_SPEC)}")
        if not setting.description.strip():
            problems.append(f"{where}: setting {setting.key}: description is empty")
    return problems


def reference_problem(reference: str | None, what: str) -> str | None:
    """Why ``reference`` ("module:attribute") names no code, or None when it does. ``what``
    names the field in the message ("masks", "builder", ...)."""
    if not isinstance(reference, str) or reference.count(":") != 1:
        return f"{what} must be 'module:function', got {reference!r}"
    module, attribute = reference.split(":")
    try:
        names = _module_names(module)
    except ImportError as exc:
        return f"{what} {reference!r}: module {module} not found ({exc})"
    if names is None:  # no Python source (a compiled module): import it
        target = importlib.import_module(module)
        for part in attribute.split("."):
            target = getattr(target, part, None)
        return None if target is not None else f"{what} {reference!r}: {module} has no {attribute}"
    parts = attribute.split(".")
    scope = names
    for depth, part in enumerate(parts):
        if part not in scope:
            if _loaded(module, parts):  # added to the imported module at run time (a session)
                return None
            return f"{what} {reference!r}: {module} defines no {'.'.join(parts[: depth + 1])}"
        scope = scope[part]
    return None


def _loaded(module: str, parts: list[str]) -> bool:
    """Whether an already imported module has the attribute (set after import, not in its source)."""
    target = sys.modules.get(module)
    for part in parts:
        target = getattr(target, part, None)
    return target is not None


@cache
def _module_names(module: str) -> dict | None:
    """The names a module defines at its top level (functions, classes with their methods,
    assignments, imports), read from its source without importing it; None without source."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise ImportError("no such module")
    if not spec.origin or not spec.origin.endswith(".py"):
        return None
    with open(spec.origin, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    return _defined(tree.body)


def _defined(body: list[ast.stmt]) -> dict:
    names: dict = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names[node.name] = {}
        elif isinstance(node, ast.ClassDef):
            names[node.name] = _defined(node.body)
        elif isinstance(node, ast.Assign):
            names |= {t.id: {} for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = {}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0]: {} for alias in node.names}
    return names
