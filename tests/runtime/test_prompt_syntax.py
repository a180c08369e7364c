"""AUTOMATIC1111's prompt syntax: the parse table of the examples its documentation gives, and the malformed
input it tolerates."""

from __future__ import annotations

import pytest

from sdrt.runtime.prompt_syntax import BREAK, parse, plain_text

#: prompt -> [(text, weight) | BREAK]: the web UI's documented examples first (its wiki's attention/emphasis
#: section and the examples in its parser's documentation), then what it documents for BREAK and escapes
PARSE_TABLE = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.3 * 1.1 * 1.1), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.1 * 1.1 * 1.1 * 1.1), (".", 1.1)]),
    ("a (word)", [("a ", 1.0), ("word", 1.1)]),
    ("a ((word))", [("a ", 1.0), ("word", 1.1 * 1.1)]),
    ("a [word]", [("a ", 1.0), ("word", 1 / 1.1)]),
    ("a (word:1.5)", [("a ", 1.0), ("word", 1.5)]),
    ("a (word:0.25)", [("a ", 1.0), ("word", 0.25)]),
    ("a \\(word\\)", [("a (word)", 1.0)]),
    ("anime_\\(character\\)", [("anime_(character)", 1.0)]),
    ("(word: 1.2 )", [("word", 1.2)]),
    ("masterpiece, (red hair:1.3), [blurry]",
     [("masterpiece, ", 1.0), ("red hair", 1.3), (", ", 1.0), ("blurry", 1 / 1.1)]),
    ("a cat BREAK a dog", [("a cat", 1.0), BREAK, ("a dog", 1.0)]),
    ("BREAK", [BREAK]),
    ("BREAKFAST break", [("BREAKFAST break", 1.0)]),  # uppercase, a word of its own
    ("", [("", 1.0)]),
    # malformed: what the web UI does with it
    ("x) y]", [("x) y]", 1.0)]),  # closing brackets with nothing open are text
    ("a:1.2) b", [("a:1.2) b", 1.0)]),  # a weight with no open round bracket is text
    ("[a:1.5]", [("a:1.5", 1 / 1.1)]),  # square brackets take no weight
    ("(a [b) c]", [("a ", 1.1), ("b", 1.1 / 1.1), (" c", 1 / 1.1)]),  # ranges, not nesting
    ("a \\ b", [("a  b", 1.0)]),  # a lone backslash is dropped
    ("\\\\", [("\\", 1.0)]),
    ("(a:1.2.3)", [("a:1.2.3)", 1.1)]),  # not a number: text (the web UI fails here)
]


@pytest.mark.parametrize("prompt, expected", PARSE_TABLE, ids=[p or "<empty>" for p, _ in PARSE_TABLE])
def test_parse_table(prompt: str, expected: list) -> None:
    got = parse(prompt)
    assert len(got) == len(expected), got
    for piece, want in zip(got, expected):
        if want is BREAK:
            assert piece is BREAK
        else:
            assert piece[0] == want[0] and piece[1] == pytest.approx(want[1], rel=1e-12), got


def test_weights_multiply_in_the_documented_order() -> None:
    """The documentation's exact floats: 1.3 * 1.1 * 1.1 and 1.1 ** 4 as computed one bracket at a time."""
    pieces = dict(p for p in parse("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).") if p is not BREAK)
    assert pieces["house"] == 1.5730000000000004 and pieces["sky"] == 1.4641000000000006


def test_plain_text() -> None:
    assert plain_text("masterpiece, (red hair:1.3) BREAK [blurry]") == "masterpiece, red hair blurry"
