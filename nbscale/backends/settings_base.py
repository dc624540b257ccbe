"""What every platform's settings model shares: one base class, one way to load a
``[backends.NAME]`` table, and one error shape.

A platform's ``settings.py`` declares a pydantic model of its table::

    class MySettings(PlatformSettings):
        platform: ClassVar[str] = "mine"          # the table's type = "..."
        endpoint: Text = Field("http://...", examples=["http://127.0.0.1:9000"])

        @field_validator("endpoint")
        @classmethod
        def _http(cls, value: str) -> str:
            if not value.startswith("http"):
                raise invalid(f"{value!r} is not a URL", 'e.g. "http://127.0.0.1:9000"')
            return value

and loads a table with ``MySettings.load(bconf)``. Whatever is wrong comes back as
one :class:`~nbscale.errors.SpecError` naming the first problem::

    [backends.kf] tolerations.0.effect: must be 'NoSchedule', ... , got 'x'; e.g. tolerations = ...
    [backends.kf] imagee: is not a setting of the kubeflow backend; known settings: a, b, c

that is ``[backends.NAME] PATH: PROBLEM; FIX``. A validator says what is wrong (and
what to do) with :func:`invalid`; pydantic's own errors (a wrong type, a value out of
range, an unknown key in a nested table) are worded here, with the field's first
``examples`` entry as the fix. The price settings every platform may have
(``nbscale.cost`` reads them from the raw table) are checked here too, by
:func:`nbscale.cost.check_price_settings`.
"""

from __future__ import annotations

import json
import re
import types
import typing
from typing import Annotated, Any, ClassVar, Self, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError
from typing_extensions import is_typeddict

from ..config import BackendConfig
from ..cost import check_price_settings
from ..errors import SpecError

__all__ = [
    "PlatformSettings",
    "RemoteSettings",
    "Text",
    "invalid",
    "settings_error",
    "table_where",
    "toml_value",
]

#: a non-empty string, no other type turned into one
Text = Annotated[str, StringConstraints(strict=True, min_length=1)]

_CUSTOM = "nbscale_setting"
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_TYPE_WORDS = {
    "string_type": "must be a string",
    "string_too_short": "must not be empty",
    "bool_type": "must be true or false",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "int_parsing": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
}
_BOUNDS = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "too_short": "must have at least {min_length} item(s)",
    "too_long": "must have at most {max_length} item(s)",
    "string_too_long": "must be at most {max_length} characters",
    "string_pattern_mismatch": "must match {pattern}",
}


def invalid(problem: str, fix: str | None = None, field: str | None = None) -> PydanticCustomError:
    """The error a validator raises: ``raise invalid("'x' is not ...", "write ...")``.

    ``field`` names the setting when a ``model_validator`` (which has no path) raises it.
    """
    # the context's keys are substituted where the template names them: use unlikely ones
    return PydanticCustomError(_CUSTOM, problem, {"nbscale_fix": fix, "nbscale_field": field})


def table_where(name: str, path: str) -> str:
    """``[backends.NAME] PATH``: how a message names a setting."""
    return f"[backends.{name}] {path}"


def toml_value(value: Any) -> str:
    """A value as one would write it in the TOML file (for the examples in messages)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        items = ", ".join(
            f"{k if _BARE_KEY.match(str(k)) else json.dumps(str(k))} = {toml_value(v)}"
            for k, v in value.items()
        )
        return f"{{ {items} }}" if items else "{}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


class PlatformSettings(BaseModel):
    """The base of each platform's ``[backends.NAME]`` model: frozen, and a key it does not
    declare is refused. ``name`` is the backend's name (the table's, not a setting)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the ``type = "..."`` of the tables this model checks (its platform's entry-point name)
    platform: ClassVar[str] = ""

    name: str

    @classmethod
    def known_settings(cls) -> list[str]:
        """The keys a table may have, sorted (every field but ``name``)."""
        return sorted(k for k in cls.model_fields if k != "name")

    @classmethod
    def load(cls, bconf: BackendConfig) -> Self:
        """Check a ``[backends.NAME]`` table; raise one ``SpecError`` naming the first problem."""
        raw = dict(bconf.settings)
        known = cls.known_settings()
        unknown = sorted(str(key) for key in raw if key not in known)
        if unknown:  # before any other problem: a typo explains the rest
            raise _unknown_setting(cls, bconf.name, unknown[0])
        try:
            return cls.model_validate({**raw, "name": bconf.name})
        except ValidationError as exc:
            raise settings_error(cls, bconf.name, exc) from None

    @model_validator(mode="before")
    @classmethod
    def _check_prices(cls, data: Any) -> Any:
        # nbscale.cost reads these from the raw table of any backend: refuse bad ones here
        if isinstance(data, dict):
            check_price_settings(str(data.get("name", "?")), data)
        return data


class RemoteSettings(PlatformSettings):
    """What every platform whose jobs run in someone else's containers shares: what travels
    with a job (``nbscale.codefolder``, ``nbscale.requirements``)."""

    #: a pip requirements file every job of this backend installs (relative: in the job's
    #: folder), or "auto"; a job's ``--requirements`` wins
    requirements: Text | None = Field(None, examples=["requirements.txt"])
    #: install requirements from the container's package index instead of a wheelhouse
    #: built here (clusters often have no index access: off by default)
    pip_index: bool = Field(False, strict=True, examples=[True])
    #: the most the job's folder may hold, in MB
    code_limit_mb: int = Field(100, strict=True, ge=1, le=10_000, examples=[100])


# -- ValidationError -> SpecError ---------------------------------------------------------


def settings_error(model: type[BaseModel], name: str, exc: ValidationError) -> SpecError:
    """The first error of ``exc`` as ``SpecError("[backends.NAME] PATH", "PROBLEM; FIX")``."""
    errors = exc.errors(include_url=False)
    if not errors:  # pragma: no cover - pydantic always reports one
        return SpecError(table_where(name, "(table)"), str(exc))
    err = errors[0]
    ctx = err.get("ctx") or {}
    shared = ctx.get("error")
    if isinstance(shared, SpecError):  # a shared check (nbscale.cost) worded it: same shape
        problem = shared.message.removeprefix(f"{shared.field}: ")
        return SpecError(shared.field, f"{problem}; {shared.hint}" if shared.hint else problem)
    loc = tuple(err.get("loc", ()))
    path = ".".join(str(part) for part in loc) or ctx.get("nbscale_field") or "(table)"
    field = str(loc[0]) if loc else ctx.get("nbscale_field")
    if err.get("type") == "extra_forbidden" and len(loc) == 1:
        return _unknown_setting(model, name, str(loc[0]))
    problem, fix = _problem(model, err, loc)
    if fix is None:
        fix = _example(model, field, missing=err.get("type") == "missing", name=name)
    return SpecError(table_where(name, path), f"{problem}; {fix}" if fix else problem)


def _unknown_setting(model: type[BaseModel], name: str, key: str) -> SpecError:
    if issubclass(model, PlatformSettings):
        known, platform = model.known_settings(), model.platform or model.__name__
    else:
        known, platform = sorted(model.model_fields), model.__name__
    return SpecError(
        table_where(name, key),
        f"is not a setting of the {platform} backend; known settings: {', '.join(known)}",
    )


def _problem(model: type[BaseModel], err: dict[str, Any], loc: tuple) -> tuple[str, str | None]:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    if kind == _CUSTOM:
        return err["msg"], ctx.get("nbscale_fix")
    if kind == "missing":
        return "is missing", None
    if kind == "extra_forbidden":
        keys = _nested_keys(model, loc[:-1])
        return "is not a known key", (f"known keys: {', '.join(keys)}" if keys else None)
    if kind == "value_error":
        problem = str(err.get("msg", "is not valid")).removeprefix("Value error, ")
    elif kind == "literal_error":
        problem = f"must be {ctx.get('expected', 'one of the allowed values')}"
    elif kind in _TYPE_WORDS:
        problem = _TYPE_WORDS[kind]
    elif kind in _BOUNDS:
        problem = _BOUNDS[kind].format(**ctx)
    else:
        problem = str(err.get("msg", "is not valid"))
    if "input" in err:
        shown = repr(err["input"])
        problem += f", got {shown if len(shown) <= 60 else shown[:57] + '...'}"
    return problem, None


def _example(model: type[BaseModel], field: str | None, missing: bool, name: str) -> str | None:
    info = model.model_fields.get(field or "")
    if info is None or not info.examples:
        return None
    written = f"{field} = {toml_value(info.examples[0])}"
    return f"add {written} to [backends.{name}]" if missing else f"e.g. {written}"


def _nested_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys the nested table at ``loc`` may have (a TypedDict or a model in the types)."""
    if not loc or loc[0] not in model.model_fields:
        return []
    kind: Any = model.model_fields[loc[0]].annotation
    for part in loc[1:]:
        kind = _unwrap(kind)
        args = [a for a in typing.get_args(kind) if a is not Ellipsis]
        if isinstance(part, int) and args:
            kind = args[0]
        elif isinstance(part, str) and typing.get_origin(kind) is dict and len(args) == 2:
            kind = args[1]
        elif isinstance(part, str) and isinstance(kind, type) and issubclass(kind, BaseModel):
            found = kind.model_fields.get(part)
            kind = found.annotation if found else None
        else:
            return []
    kind = _unwrap(kind)
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return sorted(kind.model_fields)
    if is_typeddict(kind):
        return sorted(getattr(kind, "__annotations__", {}))
    return []


def _unwrap(kind: Any) -> Any:
    """``Annotated[X, ...]`` and ``X | None`` down to ``X``."""
    while True:
        origin = typing.get_origin(kind)
        if origin is Annotated:
            kind = typing.get_args(kind)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in typing.get_args(kind) if a is not type(None)]
            if len(members) != 1:
                return kind
            kind = members[0]
        else:
            return kind
