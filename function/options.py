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
from pipeline.angles import DETECTOR_ANGLES
from pipeline.boost import PIXEL_BOOSTS
from pipeline.config import FALSE_WORDS, TRUE_WORDS
from pipeline.masks import DEFAULT_MASK_BLUR, MASK_TYPES, REGIONS
from pipeline.models.enhancer import DEFAULT_ENHANCER_BLEND, DEFAULT_ENHANCER_ROLE, DEFAULT_ENHANCER_WEIGHT
from pipeline.selection import DEFAULT_REFERENCE_THRESHOLD

IMAGE_FIELDS = ("source", "target", "reference")  # images travel beside the options, never as one
_FORM_INTEGER = re.compile(r"[+-]?[0-9]+")
_FORM_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_TYPE_WORDS = {"integer": "an integer", "number": "a number", "boolean": "a boolean (true or false)",
               "string": "a string"}


@dataclass(frozen=True)
class ListOf:
    """The items of a list option: words from `enum`, integers from `values`, or integers within bounds;
    how many."""

    enum: tuple[str, ...] = ()
    values: tuple[int, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    min_items: int = 1
    max_items: int | None = None

    def item_schema(self) -> dict[str, Any]:
        if self.enum:
            return {"type": "string", "enum": list(self.enum)}
        if self.values:
            return {"type": "integer", "enum": list(self.values)}
        return {"type": "integer", "minimum": self.minimum, "maximum": self.maximum}

    def pattern(self) -> str:
        """The comma-separated text form as a regular expression (JSON Schema `pattern`)."""
        item = "(" + "|".join(self.enum or map(str, self.values)) + ")" if self.enum or self.values else (
            _INTEGER_ITEM)  # words of [a-z-] and digits: no escapes
        more = "*" if self.max_items is None else f"{{{self.max_items - 1}}}"
        if self.max_items is not None and self.max_items != self.min_items:
            more = f"{{{self.min_items - 1},{self.max_items - 1}}}"
        return rf"^\s*{item}\s*(,\s*{item}\s*){more}$"

    def schema(self) -> dict[str, Any]:
        array: dict[str, Any] = {"type": "array", "items": self.item_schema(), "minItems": self.min_items}
        if self.max_items is not None:
            array["maxItems"] = self.max_items
        return {"anyOf": [array, {"type": "string", "pattern": self.pattern()}]}

    def from_json(self, value: Any) -> tuple[Any, ...] | None:
        if isinstance(value, str):
            return self.from_text(value)
        if not isinstance(value, list) or len(value) < self.min_items or (
                self.max_items is not None and len(value) > self.max_items):
            return None
        items = []
        for item in value:
            if self.enum:
                if not isinstance(item, str) or item not in self.enum:
                    return None
            else:
                if isinstance(item, bool) or not isinstance(item, (int, float)) or (
                        isinstance(item, float) and not (math.isfinite(item) and item.is_integer())):
                    return None
                item = int(item)
                if self.values and item not in self.values:
                    return None
                if not (self.minimum is None or item >= self.minimum) or not (self.maximum is None or item <= self.maximum):
                    return None
            items.append(item)
        return tuple(items)

    def from_text(self, value: Any) -> tuple[Any, ...] | None:
        if not isinstance(value, str) or not re.search(self.pattern(), value):
            return None
        words = [word.strip() for word in value.split(",")]
        return tuple(words) if self.enum else tuple(int(word) for word in words)

    def words(self) -> str:
        what = f"one or more of {', '.join(self.enum or map(str, self.values))}" if self.enum or self.values else (
            f"{self.min_items} whole numbers between {self.minimum} and {self.maximum}")
        return f"a list of {what} (an array, or one string with commas between the items)"


_INTEGER_ITEM = "(100|[1-9]?[0-9])"  # whole percentages 0-100: the only integer lists there are


@dataclass(frozen=True)
class Option:
    """One option: its JSON Schema type and bounds, which are all the checking there is."""

    name: str
    type: str  # a JSON Schema type: string, integer, number, boolean, or array (with `items`)
    description: str
    default: Any = None
    enum: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    items: ListOf | None = None

    def schema(self) -> dict[str, Any]:
        """This option as a JSON Schema (OpenAPI 3.1) property."""
        out: dict[str, Any] = ({"type": self.type} if self.items is None else self.items.schema())
        out["description"] = self.description
        if self.enum:
            out["enum"] = list(self.enum)
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.default is not None:
            out["default"] = list(self.default) if isinstance(self.default, tuple) else self.default
        return out

    def check(self, value: Any, form: bool) -> Any:
        """The value as its type; ValueError naming the option otherwise."""
        if self.items is not None:
            typed = self.items.from_text(value) if form else self.items.from_json(value)
            if typed is None:
                raise ValueError(f"{self.name} must be {self.items.words()}, got {_show(value)}")
            return tuple(dict.fromkeys(typed)) if self.items.enum or self.items.values else typed
        typed = self._from_text(value) if form else self._from_json(value)
        if typed is None:
            words = "one of true/false/1/0/yes/no/on/off" if form and self.type == "boolean" else _TYPE_WORDS[self.type]
            raise ValueError(f"{self.name} must be {words}, got {_show(value)}")
        if self.enum and typed not in self.enum:
            raise ValueError(f"{self.name} must be one of {', '.join(map(str, self.enum))}, got {_show(value)}")
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
    Option("format", "string", "output format; without it the output URI's extension or the Accept header (for an "
                               "image answer) decides, else JPEG; one the output's extension contradicts is a 400",
           enum=("jpeg", "jpg", "png", "webp")),
    Option("quality", "integer", "JPEG and WebP quality; without format, the Accept header's best of JPEG and WebP "
                                 "is written; for a PNG answer a 400", default=92, minimum=1, maximum=100),
    Option("pixel_boost", "integer", "the size in pixels the face is swapped at: the swapper runs on "
                                     "(pixel_boost / its size)^2 interleaved tiles; a multiple of the swapper's "
                                     "size (its default): 128 for inswapper, 256 for hyperswap, simswap, ghost, "
                                     "blendswap and uniface, 512 for simswap_unofficial", enum=PIXEL_BOOSTS),
    Option("mask", "array", "which masks shape the swapped face, combined as their minimum: box (the feathered "
                            "crop), occlusion (keeps what covers the face; needs an occluder), region (only the "
                            "mask_regions; needs a face_parser)", default=("box",), items=ListOf(enum=MASK_TYPES)),
    Option("mask_blur", "number", "with mask box: the box's feather, 0 (hard edge) to 1; 0.3 is insightface's",
           default=DEFAULT_MASK_BLUR, minimum=0, maximum=1),
    Option("mask_padding", "array", "with mask box: percent of the crop cut off its top, right, bottom and left; "
                                    "top + bottom and left + right each below 100",
           default=(0, 0, 0, 0), items=ListOf(minimum=0, maximum=100, min_items=4, max_items=4)),
    Option("swapper", "string", "the model set's swapper role to swap with (the manifest names them: `swapper`, "
                                "its default, and any extra role of a swapper kind such as hyperswap or simswap)",
           default="swapper"),
    Option("swapper_weight", "number", "moves the source identity toward (0) or away from (1) each target face's, "
                                       "as FaceFusion's face_swapper_weight: 0.5 leaves it unchanged; no effect "
                                       "with blendswap and uniface (their source is a face crop)",
           default=0.5, minimum=0, maximum=1),
    Option("mask_regions", "array", "with mask region: the face regions that are swapped", default=tuple(REGIONS),
           items=ListOf(enum=tuple(REGIONS))),
    Option("enhancer", "string", "with enhance: the model set's role whose enhancer runs (a role of kind gfpgan, "
                                 "codeformer, gpen or restoreformer++)", default=DEFAULT_ENHANCER_ROLE),
    Option("enhancer_blend", "integer", "with enhance: percent of the enhanced face over the swapped one (0: the "
                                        "swapped face unchanged, 100: the enhanced face)",
           default=DEFAULT_ENHANCER_BLEND, minimum=0, maximum=100),
    Option("enhancer_weight", "number", "with enhance and an enhancer with a fidelity weight (codeformer): 0 "
                                        "restores the most, 1 keeps the most of the face",
           default=DEFAULT_ENHANCER_WEIGHT, minimum=0, maximum=1),
    Option("detector_angles", "array", "look for faces (the target's, each source's and the reference's) on "
                                       "copies rotated counter-clockwise by each angle (0: as it is; 90, 180, 270 "
                                       "find faces lying sideways or upside down)", default=(0,),
           items=ListOf(values=DETECTOR_ANGLES)),
)
BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}


def properties() -> dict[str, dict[str, Any]]:
    """Every option as a JSON Schema property, for the OpenAPI document."""
    return {option.name: option.schema() for option in OPTIONS}


def schema() -> dict[str, Any]:
    """The options object as a JSON Schema: these properties and no others."""
    return {"type": "object", "properties": properties(), "additionalProperties": False}


# the encoder's options of a video target (function/video_options.py holds them; named here so an image
# request that carries one is told it is for videos, and a video request that carries an image-only one
# is told the reverse)
VIDEO_ONLY = frozenset({"crf", "preset", "codec"})
IMAGE_ONLY = frozenset({"format", "quality"})


def validate(raw: Mapping[str, Any], form: bool = False) -> dict[str, Any]:
    """The options given, checked and typed; InvalidOptions naming every unknown or bad one.

    `form`: the values are multipart text fields rather than JSON values.
    """
    errors = []
    unknown = sorted(str(name) for name in raw if name not in BY_NAME)
    for_video = [name for name in unknown if name in VIDEO_ONLY]
    if for_video:  # documented options, just not for an image: say so rather than "unknown"
        errors.append(f"{', '.join(for_video)} appl{'ies' if len(for_video) == 1 else 'y'} to video targets only "
                      "(the target is an image)")
        unknown = [name for name in unknown if name not in VIDEO_ONLY]
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
