"""Griffe extension for the API reference: the docstrings' Sphinx and Hugging Face markup as Markdown.

The docstrings follow their host libraries (``:func:`x``` as in SB3, ``[`~trl.GRPOConfig`]`` as in TRL); MkDocs
renders Markdown, so both become code spans (``~`` keeps the last component, as in Sphinx), and the ``::`` that
introduces a literal block becomes ``:`` (the indented block itself is Markdown code already).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

SPHINX_ROLE = re.compile(r":(?:func|class|meth|attr|data|mod|exc|obj):`(~?)([^`]+)`")
HF_REFERENCE = re.compile(r"\[`(~?)([^`\]]+)`\]")
# reStructuredText's "text::" before an indented literal block (which Markdown shows as code already).
LITERAL_BLOCK_MARKER = re.compile(r"::$", flags=re.MULTILINE)


def _code(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def as_markdown(text: str) -> str:
    """Docstring text with its cross-reference markup turned into code spans."""
    return LITERAL_BLOCK_MARKER.sub(":", HF_REFERENCE.sub(_code, SPHINX_ROLE.sub(_code, text)))


class DocstringMarkup(griffe.Extension):
    """Rewrite every loaded object's docstring with :func:`as_markdown` before it is parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = as_markdown(obj.docstring.value)
