"""Decode Stripe's form encoding (`metadata[k]=v`, `expand[0]=x`, `expand[]=x`) into values.

The SDK sends nested parameters with bracketed keys; Stripe reads them back into nested
hashes and arrays. A dict whose keys are all decimal indices becomes a list.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TypeAlias

FormValue: TypeAlias = "str | list[FormValue] | dict[str, FormValue]"

_SEGMENT = re.compile(r"\[([^\[\]]*)\]")


def split_key(key: str) -> list[str]:
    """`metadata[order][id]` → ["metadata", "order", "id"]; `expand[]` → ["expand", ""]."""
    head, _, rest = key.partition("[")
    segments = [head]
    if rest:
        segments.extend(_SEGMENT.findall("[" + rest))
    return segments


def decode(pairs: Iterable[tuple[str, str]]) -> dict[str, FormValue]:
    tree: dict[str, object] = {}
    for key, value in pairs:
        _insert(tree, split_key(key), value)
    return {name: _finish(node) for name, node in tree.items()}


def _insert(tree: dict[str, object], segments: list[str], value: str) -> None:
    node = tree
    for position, segment in enumerate(segments):
        last = position == len(segments) - 1
        name = segment if segment else str(len(node))  # `[]` appends
        if last:
            node[name] = value
            return
        child = node.get(name)
        if not isinstance(child, dict):
            child = {}
            node[name] = child
        node = child


def _finish(node: object) -> FormValue:
    if isinstance(node, str):
        return node
    assert isinstance(node, dict)
    if node and all(key.isdigit() for key in node):
        return [_finish(node[key]) for key in sorted(node, key=int)]
    return {key: _finish(child) for key, child in node.items()}
