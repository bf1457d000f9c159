"""Stored rows checked against their dataclass: each known key's JSON type, before a row is
built (a row of another shape, written by hand or by another program, is a named error at
open, never a TypeError deep in a job)."""

from __future__ import annotations

import sys
import types
import typing
from dataclasses import MISSING, fields
from typing import Any

JSON_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
    dict: "an object",
    type(None): "null",
}
MAX_SHAPES = 256  # per kind of row


def _allowed_types(hint: Any) -> tuple[type, ...]:
    """The Python types a stored JSON value may have for a field annotated `hint`."""
    parts = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    out: list[type] = []
    for part in parts:
        out.append(typing.get_origin(part) or part)  # list[dict] is stored as a JSON list
        if part is float:
            out.append(int)  # JSON does not tell 1.0 from 1
    return tuple(out)


class RowSchema:
    """The JSON types each field of a dataclass may be stored as (but the fields checked by
    value elsewhere, as enums are), and the row shapes already checked against them."""

    def __init__(self, cls: type, what: str, checked_elsewhere: tuple[str, ...]) -> None:
        hints = typing.get_type_hints(cls)
        self.what = what  # "dataset", "job": the rows' name in messages
        self.types: dict[str, tuple[type, ...]] = {
            f.name: _allowed_types(hints[f.name])
            for f in fields(cls)
            if f.name not in checked_elsewhere
        }
        self.required = tuple(
            f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
        )
        # Row shapes (keys and value types, in order) -> their known keys. Bounded: rows of
        # odd shapes (hand-edited, hostile) are checked each time rather than kept.
        self._shapes: dict[tuple[tuple[str, ...], tuple[type, ...]], tuple[str, ...]] = {}

    def known_keys(self, raw: dict[str, Any], name: object) -> tuple[str, ...]:
        """The keys of `raw` that are fields, interned (a call with keywords matches interned
        names by identity: building a row took 5x longer without); ValueError naming the row
        (`name`) and the field for a value of another JSON type. Unknown keys are no error
        (rows of another dsm version). Checked once per shape: a store's rows share a few
        (10,000 rows checked key by key cost ~0.3 s, twice per start)."""
        shape = (tuple(raw), tuple(map(type, raw.values())))
        known = self._shapes.get(shape)
        if known is None:
            known = self._check(raw, name)
            if len(self._shapes) < MAX_SHAPES:
                self._shapes[shape] = known
        return known

    def check_items(self, items: list[Any], where: str) -> None:
        """Each of `items` (a row's nested list: a manifest, a files list) an object of this
        schema holding its required fields; ValueError naming the item (`where[i]`) and the
        field (a hand-edited one was a KeyError or TypeError in every job of the store).
        One look-up an item of a shape checked before: a Hub manifest of 100,000 files is
        checked at every open (0.16 s item by item, about the time orjson takes to parse it)."""
        shapes = self._shapes
        for i, item in enumerate(items):
            if (
                type(item) is not dict
                or (tuple(item), tuple(map(type, item.values()))) not in shapes
            ):
                self._check_item(item, f"{where}[{i}]")

    def _check_item(self, item: object, label: str) -> None:
        if not isinstance(item, dict):
            raise ValueError(f"{self.what} {label} is {_cut(item)}, expected an object")
        missing = [key for key in self.required if key not in item]
        if missing:
            raise ValueError(f"{self.what} {label} has no field {missing[0]!r}")
        self.known_keys(item, label)

    def _check(self, raw: dict[str, Any], name: object) -> tuple[str, ...]:
        known = []
        for key, value in raw.items():
            allowed = self.types.get(key)
            if allowed is None:  # unknown, or checked by value elsewhere
                continue
            # bool is an int in Python but not in this schema.
            if not isinstance(value, allowed) or isinstance(value, bool) != (bool in allowed):
                # JSON has one kind of number: a float field is "a number", not also int
                want = " or ".join(
                    JSON_NAMES[t] for t in allowed if t is not int or float not in allowed
                )
                raise ValueError(
                    f"{self.what} {name}: field {key!r} is {_cut(value)}, expected {want}"
                )
            known.append(sys.intern(key))
        return tuple(known)


def _cut(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
