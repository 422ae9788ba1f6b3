"""The list of every config key that `python -m train --help` prints.

It is read from the config dataclasses themselves (type hint, default, `help` metadata), so
the definitions in train/config.py and models/config.py are the only place a key is described.
"""
from __future__ import annotations

import dataclasses
import typing

from train.config import Config, _toml_value


def _type_name(typ) -> str:
    if typing.get_origin(typ) is list:
        (item,) = typing.get_args(typ)
        return f"list[{item.__name__}]"
    return getattr(typ, "__name__", str(typ))


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def key_rows(cfg: Config | None = None) -> list[tuple[str, str, str, str]]:
    """(key, type, default, meaning) for every key, in definition order."""
    cfg = cfg or Config()
    rows = []
    for s in dataclasses.fields(cfg):
        section = getattr(cfg, s.name)
        hints = typing.get_type_hints(type(section))
        for f in dataclasses.fields(section):
            meaning = f.metadata.get("help", "")
            options = f.metadata.get("choices")
            if options:
                meaning = f"{meaning} {{{'|'.join(options)}}}".strip()
            rows.append((f"{s.name}.{f.name}", _type_name(hints[f.name]), _toml_value(_default(f)), meaning))
    return rows


def keys_text() -> str:
    """The config-key section of --help: one line per key, grouped by section."""
    rows = key_rows()
    width = max(len(f"--{k} {t}") for k, t, _, _ in rows)
    lines, section = [], None
    for key, typ, default, meaning in rows:
        if key.split(".")[0] != section:
            section = key.split(".")[0]
            lines.append(f"\n[{section}]")
        lines.append(f"  {f'--{key} {typ}':<{width}}  {meaning} (default {default})")
    return "\n".join(lines)
