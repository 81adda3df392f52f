"""Render docs/reference/config.md from the config models, so the reference cannot drift.

Run `python -m appliance.config_reference > docs/reference/config.md` (`make docs`);
a test fails when the committed file differs from what this renders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from appliance.config import AdapterConfig, ApplianceConfig

_HEADER = """\
# Configuration reference

Generated from the models in `appliance/config.py` by `make docs`; do not edit by hand.

The appliance reads one TOML file (`/etc/appliance/config.toml` on a device, or the path given
to `appliance run --config`). Every key is optional unless marked *required*. Unknown keys,
wrong types and broken TOML are refused with the file, line and key; check a file with
`appliance check-config PATH`.

Secrets (marked *secret*) may be written inline, or read from a file relative to the config
file with `{ file = "token.txt" }`, or from systemd's credentials directory with
`{ credential = "NAME" }` (see `LoadCredential=` in the unit). Secrets are never logged.
"""


def render() -> str:
    """The whole reference page as Markdown."""
    parts = [_HEADER]
    for name, info in ApplianceConfig.model_fields.items():
        if name == "adapters":
            parts.append(_adapters_section(info))
        else:
            model = info.annotation
            assert isinstance(model, type) and issubclass(model, BaseModel)
            parts.append(_table(f"[{name}]", model))
    return "\n".join(parts)


def _adapters_section(info: FieldInfo) -> str:
    lines = ["## `[[adapters]]`", "", info.description or "", ""]
    for model in get_args(get_args(AdapterConfig)[0]):
        kind = get_args(model.model_fields["type"].annotation)[0]
        lines.append(_table(f'[[adapters]] type = "{kind}"', model, level="###"))
    return "\n".join(lines)


def _table(title: str, model: type[BaseModel], *, level: str = "##") -> str:
    rows = [
        f"{level} `{title}`",
        "",
        (model.__doc__ or "").strip(),
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
    ]
    rows += [_row(name, info) for name, info in model.model_fields.items() if name != "type"]
    return "\n".join(rows) + "\n"


def _row(name: str, info: FieldInfo) -> str:
    return f"| `{name}` | {_type_name(info.annotation)} | {_default(info)} | {info.description} |"


def _default(info: FieldInfo) -> str:
    if info.default is PydanticUndefined:
        return "*required*"
    value: Any = info.default
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, tuple):
        value = list(value)
    return "unset" if value is None else f"`{json.dumps(value)}`"


def _type_name(annotation: Any) -> str:
    if annotation is SecretStr or SecretStr in get_args(annotation):
        return "string, *secret*"
    names = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}
    if annotation in names:
        return names[annotation]
    args = [a for a in get_args(annotation) if a is not type(None) and a is not Ellipsis]
    origin = getattr(annotation, "__origin__", None)
    if origin is tuple:
        return f"array of {_type_name(args[0])}"
    if str(origin) == "typing.Literal" or type(annotation).__name__ == "_LiteralGenericAlias":
        return " \\| ".join(f'`"{a}"`' for a in get_args(annotation))
    if args:
        return " or ".join(_type_name(a) for a in args)
    return getattr(annotation, "__name__", str(annotation))


if __name__ == "__main__":
    print(render(), end="")
