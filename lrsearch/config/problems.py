"""A study file's validation errors in the user's words: pydantic's errors become one problem per bad value, each
naming the field as the YAML spells it, the bad value and what is allowed (:func:`problems`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

__all__ = ["problems"]


def problems(exc: ValidationError, root: type[BaseModel]) -> list[str]:
    """Every problem of ``exc`` (raised validating ``root``), one line each."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    plain: list[dict] = []
    for error in exc.errors():
        tag_at = next((i for i, part in enumerate(error["loc"]) if _is_tag(part)), None)
        if tag_at is None:
            plain.append(error)
        else:
            key = tuple(_user_loc(error["loc"][:tag_at]))
            groups.setdefault(key, {}).setdefault(str(error["loc"][tag_at]), []).append(error)
    found = [line for error in plain for line in _describe(error, root)]
    for key, members in groups.items():
        # A value that fits no member of a union: report the member whose shape it has, else one line.
        fitting = [errs for errs in members.values() if not all(_is_shape_error(e, key) for e in errs)]
        if fitting:
            found += [line for error in fitting[0] for line in _describe(error, root)]
        else:
            first = next(iter(members.values()))[0]
            where = ".".join(str(part) for part in key)
            expected = " or ".join(_member_name(m) for m in members)
            found.append(f"{where}: expected {expected} (got {first['input']!r})")
    return found


def _describe(error: dict, root: type[BaseModel]) -> list[str]:
    loc = _user_loc(error["loc"])
    where = ".".join(str(part) for part in loc)
    kind = error["type"]
    if kind == "value_error":
        message = str(error["ctx"]["error"]) if "ctx" in error else error["msg"]
        lines = message.splitlines()
        # A validator that checks several fields names each in its lines ("search.adam.lr: ...").
        return [line if line.split(".", 1)[0] in root.model_fields or not where else f"{where}: {line}"
                for line in lines]
    if kind == "extra_forbidden":
        return [f"{where}: unknown key (allowed: {', '.join(_allowed_keys(loc[:-1], root))})"]
    if kind == "literal_error":
        return [f"{where}: {error['input']!r} is not allowed (allowed: {error['ctx']['expected']})"]
    if kind == "missing":
        return [f"{where}: required key is missing"]
    return [f"{where}: {error['msg'].lower()} (got {error['input']!r})"]


def _is_shape_error(error: dict, union_loc: tuple) -> bool:
    at_root = tuple(_user_loc(error["loc"])) == union_loc
    return at_root and (error["type"].endswith(("_type", "_parsing")) or error["type"] == "model_type")


def _is_tag(part: Any) -> bool:
    return isinstance(part, str) and (part[:1].isupper() or "[" in part or part in _TAGS)


def _member_name(tag: str) -> str:
    return {"str": "a name", "float": "a number", "int": "an integer"}.get(tag, "a mapping" if "[" in tag or
                                                                       tag[:1].isupper() else tag)


def _user_loc(loc: tuple) -> list:
    """Drop pydantic's union-member tags ('str', 'TaskRef', 'float', ...) from an error location."""
    return [part for part in loc if not _is_tag(part)]


_TAGS = {"str", "int", "float", "bool", "list", "dict", "literal['auto']"}


def _allowed_keys(loc: list, root: type[BaseModel]) -> list[str]:
    model: Any = root
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return [name for name in model.model_fields if name != "source"]
