"""A1111's styles file: how a style applies, and the one line for a file that does not parse."""

from __future__ import annotations

import pytest

from sdrt.errors import SdrtError
from sdrt.serve.limits import RequestRejected
from sdrt.serve.styles import Styles, apply


def test_apply_as_documented() -> None:
    assert apply("a cat", "{prompt}, oil painting") == "a cat, oil painting"
    assert apply("a cat", "masterpiece, {prompt}") == "masterpiece, a cat"
    assert apply("a cat", "film grain") == "a cat, film grain"
    assert apply("", "film grain") == "film grain" and apply("a cat", "") == "a cat"


def test_styles_file(tmp_path) -> None:
    path = tmp_path / "styles.csv"
    path.write_text('\ufeffname,prompt,negative_prompt,extra\nA,"x, {prompt}",bad,1\n,ignored,,\nB,y,,\n')
    styles = Styles(path)
    assert [s["name"] for s in styles.listing()] == ["A", "B"]
    assert styles.apply(["A", "B"], "cat", "") == ("x, cat, y", "bad")
    with pytest.raises(RequestRejected, match="style 'C' is not one of this server's styles \\(A, B"):
        styles.apply(["C"], "cat", "")


@pytest.mark.parametrize("text, message", [
    ("title,text\nA,b\n", "has no 'name' and 'prompt' columns \\(its header: text, title\\)"),
    ("", "has no 'name' and 'prompt' columns \\(its header: empty\\)"),
    ('name,prompt\nA,"unterminated\n', "is not a CSV file"),
    ("name,prompt\nA,b,c,d\n", "line 2 has more cells than the header"),
])
def test_a_file_that_does_not_parse_is_one_line(tmp_path, text, message) -> None:
    path = tmp_path / "styles.csv"
    path.write_text(text)
    with pytest.raises(SdrtError, match=message):
        Styles(path)


def test_unreadable_file(tmp_path) -> None:
    with pytest.raises(SdrtError, match="cannot read it"):
        Styles(tmp_path / "missing.csv")
