"""Layer-pattern parser: the full symbol set, repeats, and errors that say where."""
import pytest

from models.pattern import PatternError, parse_pattern


@pytest.mark.parametrize("pattern, expected", [
    ("(*-)x2", list("*-*-")),
    ("Mx3", list("MMM")),
    ("(R-R-W-)x2", list("R-R-W-R-R-W-")),
    ("((M-)x2*-)x2", list("M-M-*-M-M-*-")),
    (" * - W ", list("*-W")),
    ("M-M-M-*-", list("M-M-M-*-")),
])
def test_parse(pattern, expected):
    assert parse_pattern(pattern) == expected


@pytest.mark.parametrize("pattern, fragment", [
    ("", "empty"), ("(*-", "unclosed"), ("*-)", "unmatched"), ("(*-)x", "repeat count"),
    ("(*-)x0", ">= 1"), ("*Q", "unknown symbol"), ("()x2", "empty group"),
])
def test_reject(pattern, fragment):
    with pytest.raises(PatternError, match=fragment):
        parse_pattern(pattern)
