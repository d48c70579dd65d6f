"""JSON as TF Serving's REST API reads and writes it (RapidJSON under util/json_tensor.cc).

Reading: any depth of nesting (a deep key the request does not use is no reason to refuse it), NaN, Inf and
Infinity with either sign, and RapidJSON's own words for a parse error with its offset. Python's json module
reads every ordinary document; only a document it refuses is read again by the iterative reader here.
Writing: floats by WriteDecimal's rule (six significant digits when they read back as the same value, else
all the type's digits; `.0` on whole numbers not in scientific notation), so 9000000.0f prints as 9e+06 and
1435774336.0f as 1435774336.0, exactly as TF Serving prints them.
"""
from __future__ import annotations

import json
import re
from json.decoder import scanstring

import numpy as np


class ParseError(ValueError):
    """A document RapidJSON would not parse: its message (error/en.h) and the offset it stops at."""

    def __init__(self, message: str, offset: int):
        super().__init__(f"{message} at offset: {offset}")
        self.message, self.offset = message, offset


def loads(text: str):
    """The document in `text`; ParseError in RapidJSON's words when it is not JSON."""
    if _BIG_EXPONENT.search(text):  # Python reads 1e400 as inf; RapidJSON refuses it: the reader decides
        return _Reader(text).document()
    try:
        return json.loads(text, object_pairs_hook=_first_wins)
    except (ValueError, RecursionError):
        return _Reader(text).document()  # deeper than Python's recursion limit, RapidJSON's extras, or an error


def _first_wins(pairs) -> dict:
    """An object whose repeated key keeps its first value, as RapidJSON's FindMember finds it."""
    members: dict = {}
    for key, value in pairs:
        members.setdefault(key, value)
    return members


_BIG_EXPONENT = re.compile(r"[0-9][eE]\+?[0-9]{3}")


# ---- the iterative reader ----
_SPACE = re.compile(r"[ \t\n\r]*")
_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)")
_DIGITS = re.compile(r"[0-9]+")
_SPECIAL = re.compile(r"(-?)(NaN|Infinity|Inf)")
_WORDS = {"true": True, "false": False, "null": None}
_STRING_ERRORS = (("Unterminated string", "Missing a closing quotation mark in string."),
                  ("Invalid \\uXXXX escape", "Incorrect hex digit after \\u escape in string."),
                  ("Invalid \\escape", "Invalid escape character in string."),
                  ("Invalid control character", "Invalid encoding in string."))


class _Reader:
    """A JSON reader with an explicit stack of open containers instead of recursion."""

    def __init__(self, text: str):
        self.text, self.end = text, len(text)

    def space(self, pos: int) -> int:
        return _SPACE.match(self.text, pos).end()

    def document(self):
        pos = self.space(0)
        if pos == self.end:
            raise ParseError("The document is empty.", pos)
        stack: list[list] = []  # [container, key of the value being read (objects)]
        while True:
            value, pos, opened = self.value(pos)
            if opened is not None:
                stack.append(opened)
                continue
            while True:  # put the value in its container; close every container that ends here
                if not stack:
                    pos = self.space(pos)
                    if pos != self.end:
                        raise ParseError("The document root must not be followed by other values.", pos)
                    return value
                container, key = stack[-1]
                if isinstance(container, dict):
                    container.setdefault(key, value)  # RapidJSON's FindMember finds a repeated key's first value
                else:
                    container.append(value)
                pos = self.space(pos)
                char = self.text[pos:pos + 1]
                if char == ",":
                    pos = self.space(pos + 1)
                    if isinstance(container, dict):
                        stack[-1][1], pos = self.key(pos)
                    break
                if char != ("}" if isinstance(container, dict) else "]"):
                    raise ParseError("Missing a comma or '}' after an object member." if isinstance(container, dict)
                                     else "Missing a comma or ']' after an array element.", pos)
                stack.pop()
                value, pos = container, pos + 1

    def value(self, pos: int):
        """(value, next position, None) for a complete value, or (None, position of the first member or
        element, [container, key]) for a container that holds something."""
        char = self.text[pos:pos + 1]
        if char in ("{", "["):
            empty, closer = ({}, "}") if char == "{" else ([], "]")
            inner = self.space(pos + 1)
            if self.text[inner:inner + 1] == closer:
                return empty, inner + 1, None
            if char == "[":
                return None, inner, [empty, None]
            key, inner = self.key(inner)
            return None, inner, [empty, key]
        if char == '"':
            return (*self.string(pos), None)
        return (*self.scalar(pos), None)

    def key(self, pos: int) -> tuple[str, int]:
        if self.text[pos:pos + 1] != '"':
            raise ParseError("Missing a name for object member.", pos)
        key, pos = self.string(pos)
        pos = self.space(pos)
        if self.text[pos:pos + 1] != ":":
            raise ParseError("Missing a colon after a name of object member.", pos)
        return key, self.space(pos + 1)

    def string(self, pos: int) -> tuple[str, int]:
        try:
            return scanstring(self.text, pos + 1, True)
        except json.JSONDecodeError as err:
            message = next((ours for theirs, ours in _STRING_ERRORS if err.msg.startswith(theirs)),
                           "Invalid encoding in string.")
            raise ParseError(message, err.pos) from None

    def scalar(self, pos: int):
        for word, value in _WORDS.items():
            if self.text.startswith(word, pos):
                return value, pos + len(word)
        special = _SPECIAL.match(self.text, pos)
        if special and not (special.group(2) == "Inf" and self.text[special.end():special.end() + 1] == "i"):
            number = float("nan") if special.group(2) == "NaN" else float("inf")
            return (-number if special.group(1) else number), special.end()
        integer = _INTEGER.match(self.text, pos)
        if not integer:
            raise ParseError("Invalid value.", pos)
        end, is_float = integer.end(), False
        if self.text[end:end + 1] == ".":
            digits = _DIGITS.match(self.text, end + 1)
            if not digits:
                raise ParseError("Miss fraction part in number.", end + 1)
            end, is_float = digits.end(), True
        if self.text[end:end + 1] in ("e", "E"):
            start = end + 1 + (self.text[end + 1:end + 2] in ("+", "-"))
            digits = _DIGITS.match(self.text, start)
            if not digits:
                raise ParseError("Miss exponent in number.", start)
            end, is_float = digits.end(), True
        literal = self.text[pos:end]
        if not is_float:
            try:
                return int(literal), end
            except ValueError:  # more digits than Python converts (4300): far beyond any double
                raise ParseError("Number too big to be stored in double.", pos) from None
        value = float(literal)
        if value in (float("inf"), float("-inf")):
            raise ParseError("Number too big to be stored in double.", pos)
        return value, end


# ---- writing ----
class Number(str):
    """A number's JSON text, written as it is."""


def decimal(value: np.floating) -> Number:
    """json_tensor.cc WriteDecimal for a float32 or float64 value."""
    if np.isnan(value):
        return Number("NaN")
    if np.isinf(value):
        return Number("-Infinity" if value < 0 else "Infinity")
    kind = type(value)
    text = format(float(value), ".6g")  # absl::StrCat's six significant digits (printf's %g)
    if kind(text) != value:  # does not read back as the same value: all the type's digits (max_digits10)
        text = format(float(value), ".9g" if kind == np.float32 else ".17g")
    if "." not in text and "e" not in text:
        text += ".0"
    return Number(text)


def dumps(value, indent: str = "    ", level: int = 0) -> str:
    """value (dicts, lists, strings, ints, bools, None and Number) as JSON text, one member or element a line
    as RapidJSON's PrettyWriter does, with lists of scalars on one line."""
    if isinstance(value, Number):
        return str(value)
    if isinstance(value, dict):
        if not value:
            return "{}"
        inner = indent * (level + 1)
        members = [f"{inner}{json.dumps(key)}: {dumps(item, indent, level + 1)}" for key, item in value.items()]
        return "{\n" + ",\n".join(members) + "\n" + indent * level + "}"
    if isinstance(value, list):
        items = [dumps(item, indent, level + 1) for item in value]
        if not any(isinstance(item, (dict, list)) for item in value):
            return "[" + ", ".join(items) + "]"
        inner = indent * (level + 1)
        return "[\n" + ",\n".join(inner + item for item in items) + "\n" + indent * level + "]"
    return json.dumps(value)
