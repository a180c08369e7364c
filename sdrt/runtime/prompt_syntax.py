"""AUTOMATIC1111's prompt syntax: emphasis brackets, weights, escapes and BREAK -> weighted text segments.

Written from the web UI's documented behaviour (its wiki's "Attention/emphasis" and "Infinite prompt
length" sections), not from its code:

=====================  ==========================================================================
``(text)``             the enclosed text's weight x 1.1; nested brackets multiply (``((text))`` 1.21)
``(text:1.3)``         x 1.3 (any number: ``(text:0.5)`` lowers it); only round brackets take a number
``[text]``             the weight / 1.1
``\\(`` ``\\)`` ``\\[`` ``\\]``  literal brackets; ``\\\\`` a literal backslash
``BREAK``              (uppercase, a word of its own) ends the current 75-token chunk: the text after it
                       starts a new one
=====================  ==========================================================================

What the web UI does with malformed input, and so does this parser: an opening bracket that is never
closed applies its factor to everything after it; a closing bracket with no opening one, and a
``:number)`` with no open round bracket, are literal text; a lone backslash is dropped. Adjacent
segments of equal weight are merged, and an empty prompt is one empty segment of weight 1.

Two choices where the web UI's behaviour is an accident rather than a rule: a ``:number)`` whose number
does not parse (``(a:1.2.3)``) is literal text (the web UI fails), and ``BREAK`` inside brackets still
breaks the chunk (the web UI then reads the word "BREAK" with a negative weight).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: the factors of one pair of round / square brackets
ROUND = 1.1
SQUARE = 1 / 1.1
#: an escaped character -> what it stands for
ESCAPES = {"\\(": "(", "\\)": ")", "\\[": "[", "\\]": "]", "\\\\": "\\"}
#: the pieces the scanner reads, first match wins: escapes, a lone backslash, brackets, an explicit
#: weight closing a round bracket, plain text, a colon that is no weight
_PIECES = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]|[^\\()\[\]:]+|:")
#: BREAK as a word of its own, with the whitespace around it
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


@dataclass(frozen=True)
class Break:
    """Where the prompt says BREAK (the current chunk ends; the next text starts a new one)."""

    def __repr__(self) -> str:
        return "BREAK"


BREAK = Break()


def parse(prompt: str) -> list:
    """The prompt as [(text, weight) | BREAK, ...], as the web UI reads it (see the module docstring)."""
    pieces: list = []  # [text, weight] lists while weights are still being multiplied, or BREAK
    round_open: list[int] = []  # where each open bracket's range starts (an index into `pieces`)
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            if piece is not BREAK:
                piece[1] *= factor

    for match in _PIECES.finditer(prompt):
        token, number = match.group(0), match.group(1)
        if token in ESCAPES:
            pieces.append([ESCAPES[token], 1.0])
        elif token == "\\":
            continue  # the web UI drops a backslash that escapes nothing
        elif token == "(":
            round_open.append(len(pieces))
        elif token == "[":
            square_open.append(len(pieces))
        elif number is not None and round_open and _is_number(number):
            scale(round_open.pop(), float(number))
        elif token == ")" and round_open:
            scale(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            scale(square_open.pop(), SQUARE)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i:
                    pieces.append(BREAK)
                pieces.append([part, 1.0])
    for start in round_open:  # never closed: the factor runs to the end of the prompt
        scale(start, ROUND)
    for start in square_open:
        scale(start, SQUARE)
    return _merged(pieces)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _merged(pieces: list) -> list:
    """Adjacent pieces of one weight joined, then empty text dropped (an empty prompt: one empty piece).

    Joining comes first, as in the web UI: text on either side of an empty piece of another weight
    stays apart (each piece is tokenized on its own)."""
    joined: list = []
    for piece in pieces:
        if piece is not BREAK and joined and joined[-1] is not BREAK and joined[-1][1] == piece[1]:
            joined[-1] = (joined[-1][0] + piece[0], piece[1])
        else:
            joined.append(piece if piece is BREAK else (piece[0], piece[1]))
    kept = [p for p in joined if p is BREAK or p[0]]
    return kept or [("", 1.0)]


def plain_text(prompt: str) -> str:
    """The prompt's words without the syntax (what a log or a file name shows)."""
    return "".join(" " if p is BREAK else p[0] for p in parse(prompt))
