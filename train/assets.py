"""Files that ship beside the code: the TOML recipes (configs/) and the SLURM templates (slurm/).

In a checkout (or an editable install) they sit at the repository root; an installed wheel puts
them under `<prefix>/share/longweave/` (pyproject's data-files). `find_asset` looks in both, so
`longweave-train --config tiny` and `longweave-launch slurm --dry-run` work from any directory.
"""
from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def asset_roots() -> list[Path]:
    """Where shipped files may be: the checkout, then the install prefixes' share/longweave."""
    roots = [REPO]
    for prefix in (sysconfig.get_path("data"), sys.prefix, sys.base_prefix):
        root = Path(prefix) / "share" / "longweave"
        if root not in roots:
            roots.append(root)
    return roots


def find_asset(relative: str) -> Path | None:
    for root in asset_roots():
        if (root / relative).is_file():
            return root / relative
    return None


def recipe_names() -> list[str]:
    names = set()
    for root in asset_roots():
        names.update(p.stem for p in (root / "configs").glob("*.toml"))
    return sorted(names)


def resolve_config_path(path: str | Path) -> Path:
    """An existing file as given; else a recipe name (`tiny`) or `configs/NAME.toml` from the shipped recipes.

    Returns the path unchanged when nothing matches, so the caller's "not found" error names it.
    """
    p = Path(path)
    if p.is_file() or p.is_absolute():
        return p
    candidates = [str(p)] if "/" in str(p) else [f"configs/{p.name}", f"configs/{p.name}.toml"]
    for rel in candidates:
        found = find_asset(rel)
        if found is not None:
            return found
    return p
