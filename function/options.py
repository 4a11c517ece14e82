"""The fusion options: one declarative table that checks multipart fields, JSON bodies and
`fusion.requested` events alike, and from which the OpenAPI document's option schema is generated.

JSON (bodies and events) must carry real JSON types: an integer for `index`, `quality` and
`min_face_size` (1.0 counts, as in JSON Schema; 1.5 and true do not), a number for
`reference_threshold`, a boolean for `enhance`, a string for `faces` and `format`. Multipart fields
are text, so there the same types are read from their text: "1" is an integer, "1.5" is not; a
boolean is one of true/false/1/0/yes/no/on/off (the words of every boolean setting), and an empty
field counts as not given (HTML forms send their empty inputs). An option the table does not name
is refused, with every problem of a request named in one 400.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline import FACE_MODES, InvalidOptions
from pipeline.config import FALSE_WORDS, TRUE_WORDS
from pipeline.selection import DEFAULT_REFERENCE_THRESHOLD

IMAGE_FIELDS = ("source", "target", "reference")  # images travel beside the options, never as one
_FORM_INTEGER = re.compile(r"[+-]?[0-9]+")
_FORM_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_TYPE_WORDS = {"integer": "an integer", "number": "a number", "boolean": "a boolean (true or false)",
               "string": "a string"}


@dataclass(frozen=True)
class Option:
    """One option: its JSON Schema type and bounds, which are all the checking there is."""

    name: str
    type: str  # a JSON Schema type: string, integer, number, boolean
    description: str
    default: Any = None
    enum: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None

    def schema(self) -> dict[str, Any]:
        """This option as a JSON Schema (OpenAPI 3.1) property."""
        out: dict[str, Any] = {"type": self.type, "description": self.description}
        if self.enum:
            out["enum"] = list(self.enum)
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.default is not None:
            out["default"] = self.default
        return out

    def check(self, value: Any, form: bool) -> Any:
        """The value as its type; ValueError naming the option otherwise."""
        typed = self._from_text(value) if form else self._from_json(value)
        if typed is None:
            words = "one of true/false/1/0/yes/no/on/off" if form and self.type == "boolean" else _TYPE_WORDS[self.type]
            raise ValueError(f"{self.name} must be {words}, got {_show(value)}")
        if self.enum and typed not in self.enum:
            raise ValueError(f"{self.name} must be one of {', '.join(self.enum)}, got {_show(value)}")
        if (self.minimum is not None and typed < self.minimum) or (self.maximum is not None and typed > self.maximum):
            bounds = (f"between {_num(self.minimum)} and {_num(self.maximum)}" if self.minimum is not None
                      and self.maximum is not None else f"at least {_num(self.minimum)}" if self.minimum is not None
                      else f"at most {_num(self.maximum)}")
            raise ValueError(f"{self.name} must be {bounds}, got {_show(value)}")
        return typed

    def _from_json(self, value: Any) -> Any:
        if self.type == "boolean":
            return value if isinstance(value, bool) else None
        if self.type == "string":
            return value if isinstance(value, str) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if self.type == "integer":
            if isinstance(value, float):
                return int(value) if value.is_integer() else None
            return value
        return float(value)

    def _from_text(self, value: Any) -> Any:
        if not isinstance(value, str):
            return None
        text = value.strip()
        if self.type == "boolean":
            word = text.lower()
            return True if word in TRUE_WORDS else False if word in FALSE_WORDS else None
        if self.type == "integer":
            return int(text) if _FORM_INTEGER.fullmatch(text) else None
        if self.type == "number":
            return float(text) if _FORM_NUMBER.fullmatch(text) else None
        return text


def _num(value: float | None) -> str:
    return f"{value:g}" if value is not None else ""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


OPTIONS: tuple[Option, ...] = (
    Option("faces", "string", "which target faces to swap", default="largest", enum=tuple(FACE_MODES)),
    Option("index", "integer", "with faces=index: the face to swap, counting from 0 left to right", minimum=0),
    Option("reference_threshold", "number", "with faces=reference: the cosine similarity a target face needs",
           default=DEFAULT_REFERENCE_THRESHOLD, minimum=-1, maximum=1),
    Option("min_face_size", "integer", "target faces smaller than this many pixels are left alone", default=0,
           minimum=0),
    Option("enhance", "boolean", "restore the swapped faces with the enhancer", default=False),
    Option("format", "string", "output format; without it the Accept header (for an image answer) or the output "
                               "URI's extension decides, else JPEG", enum=("jpeg", "jpg", "png", "webp")),
    Option("quality", "integer", "JPEG and WebP quality", default=92, minimum=1, maximum=100),
)
BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}


def properties() -> dict[str, dict[str, Any]]:
    """Every option as a JSON Schema property, for the OpenAPI document."""
    return {option.name: option.schema() for option in OPTIONS}


def schema() -> dict[str, Any]:
    """The options object as a JSON Schema: these properties and no others."""
    return {"type": "object", "properties": properties(), "additionalProperties": False}


def validate(raw: Mapping[str, Any], form: bool = False) -> dict[str, Any]:
    """The options given, checked and typed; InvalidOptions naming every unknown or bad one.

    `form`: the values are multipart text fields rather than JSON values.
    """
    errors = []
    unknown = sorted(str(name) for name in raw if name not in BY_NAME)
    if unknown:
        errors.append(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(_show(n) for n in unknown)} "
                      f"(options are {', '.join(BY_NAME)})")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        option = BY_NAME.get(name)
        if option is None or (form and value == ""):  # an empty form field is one not filled in
            continue
        try:
            values[name] = option.check(value, form)
        except ValueError as exc:
            errors.append(str(exc))
    if errors:
        raise InvalidOptions("; ".join(errors))
    return values
