"""Layer-pattern strings (Megatron / Nemotron-H convention, extended).

One symbol per sublayer: `*` global attention, `W` sliding-window attention, `M` Mamba-2,
`R` Griffin recurrent block, `-` MLP, and any symbol a registered MixerSpec adds
(models/mixer_spec.py). Groups repeat with `(...)xN`, a single symbol with `SxN`; whitespace
is ignored. Examples: "(*-)x12", "Mx48", "(R-R-W-)x4", "(M-M-M-*-)x6".
"""
from __future__ import annotations

from models.mixer_spec import registered


class PatternError(ValueError):
    pass


def parse_pattern(pattern: str) -> list[str]:
    """Expand a pattern into a flat list of symbols, or raise PatternError saying where it broke."""
    symbols = registered()
    text = "".join(pattern.split())
    if not text:
        raise PatternError("model.pattern is empty; e.g. '(*-)x4'")
    pos = 0

    def fail(msg: str) -> PatternError:
        return PatternError(f"model.pattern {pattern!r}: {msg} at position {pos}")

    def repeat_count() -> int:
        nonlocal pos
        if pos < len(text) and text[pos] == "x":
            pos += 1
            start = pos
            while pos < len(text) and text[pos].isdigit():
                pos += 1
            if start == pos:
                raise fail("'x' must be followed by a repeat count")
            n = int(text[start:pos])
            if n < 1:
                raise fail("repeat count must be >= 1")
            return n
        return 1

    def seq(depth: int) -> list[str]:
        nonlocal pos
        out: list[str] = []
        while pos < len(text):
            ch = text[pos]
            if ch == "(":
                pos += 1
                inner = seq(depth + 1)
                if pos >= len(text) or text[pos] != ")":
                    raise fail("unclosed '('")
                pos += 1
                if not inner:
                    raise fail("empty group '()'")
                out.extend(inner * repeat_count())
            elif ch == ")":
                if depth == 0:
                    raise fail("unmatched ')'")
                return out
            elif ch in symbols:
                pos += 1
                out.extend([ch] * repeat_count())
            else:
                raise fail(f"unknown symbol {ch!r} (valid: {' '.join(symbols)})")
        return out

    layers = seq(0)
    if pos != len(text):
        raise fail("trailing characters")
    return layers
