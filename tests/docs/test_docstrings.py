"""Every public name of the four packages is documented, parameter by parameter, and in the API reference.

Checked on the imported objects (what users see in ``help()`` and what the reference renders): a docstring for
each name in ``__all__``, and for each class or function every named parameter of its signature (``*args`` and
``**kwargs`` excepted) described in the host library's style: ``:param x:`` (SB3, timm, this library) or an
``x (type...):`` entry (TRL's Hugging Face style, in ``trl_era``'s config and trainer).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("era_core", "sb3_era", "timm_era", "trl_era")


def public_names(package: str) -> list[tuple[str, str]]:
    return [(package, name) for name in importlib.import_module(package).__all__]


NAMES = [pair for package in PACKAGES for pair in public_names(package)]


def documented_parameters(doc: str) -> set[str]:
    sphinx = re.findall(r":param (?:[^:\n]* )?(\w+):", doc)
    hugging_face = re.findall(r"^\s+\**(\w+) \(", doc, flags=re.MULTILINE)
    return set(sphinx) | set(hugging_face)


def signature_parameters(obj: object) -> list[str]:
    if dataclasses.is_dataclass(obj):
        # A config dataclass documents the fields it adds (TRL's configs each document their own).
        return list(vars(obj).get("__annotations__", {}))
    function = obj.__init__ if inspect.isclass(obj) else obj
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return []
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [p.name for p in signature.parameters.values() if p.name != "self" and p.kind not in variadic]


@pytest.mark.parametrize(("package", "name"), NAMES, ids=[f"{p}.{n}" for p, n in NAMES])
def test_public_name_is_documented(package: str, name: str) -> None:
    obj = getattr(importlib.import_module(package), name)
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        # A constant's docstring is the string literal after its assignment, which only the source holds.
        assignment = re.compile(rf'^{name}(: [^=]+)? = .*\n"""', flags=re.MULTILINE)
        sources = (path.read_text() for path in (ROOT / package).rglob("*.py"))
        assert any(assignment.search(source) for source in sources), f"{package}.{name} has no docstring"
        return
    doc = inspect.getdoc(obj) or ""
    assert doc.strip(), f"{package}.{name} has no docstring"
    if inspect.isclass(obj) and obj.__init__.__doc__ and obj.__init__ is not object.__init__:
        doc += "\n" + inspect.getdoc(obj.__init__)
    missing = [p for p in signature_parameters(obj) if p not in documented_parameters(doc)]
    assert not missing, f"{package}.{name}: parameters without a description: {missing}"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_is_in_the_api_reference(package: str) -> None:
    page = (ROOT / "docs" / "reference" / f"{package}.md").read_text()
    if re.search(rf"^::: {package}\s*$(?!\n\s+options:\n\s+members: false)", page, flags=re.MULTILINE):
        return  # the whole package, every name in __all__
    missing = [name for _, name in public_names(package) if f"::: {package}.{name}\n" not in page + "\n"]
    assert not missing, f"docs/reference/{package}.md does not render {missing}"


CLASSES = [
    (package, name)
    for package, name in NAMES
    if inspect.isclass(getattr(importlib.import_module(package), name))
]


@pytest.mark.parametrize(("package", "name"), CLASSES, ids=[f"{p}.{n}" for p, n in CLASSES])
def test_public_methods_are_documented(package: str, name: str) -> None:
    cls = getattr(importlib.import_module(package), name)
    undocumented = []
    for member_name, member in vars(cls).items():
        if member_name.startswith("_") or member_name == "extra_repr":  # nn.Module's repr hook
            continue
        function = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
        if callable(function) and not (getattr(function, "__doc__", None) or "").strip():
            undocumented.append(member_name)
    assert not undocumented, f"{package}.{name}: public methods without a docstring: {undocumented}"
