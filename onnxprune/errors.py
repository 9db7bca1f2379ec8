"""Errors the tool reports to users as one line, with the exit code the CLI uses; ``first_line``,
which turns a library's exception (or any text) into such a line; and ``printable``, which makes
text from a model safe to show on a terminal."""

from __future__ import annotations


class OnnxPruneError(Exception):
    """A problem with the model or the request; the message is shown to the user as is.

    ``exit_code`` follows the CLI convention: 1 for a model problem, 2 for a usage problem.
    """

    exit_code = 1


class UsageError(OnnxPruneError):
    """The request itself is wrong (bad target, bad option): exit code 2."""

    exit_code = 2


class ModelError(OnnxPruneError):
    """The model cannot be read, analysed or pruned as asked: exit code 1."""

    exit_code = 1


def first_line(exc_or_text: BaseException | str) -> str:
    """The first line of an exception's message (its type name when the message is empty) or of a
    text ("" when empty): what a one-line error quotes from a library's multi-line report."""
    text = str(exc_or_text).strip()
    if text:
        return text.splitlines()[0]
    return type(exc_or_text).__name__ if isinstance(exc_or_text, BaseException) else ""


# Characters a terminal acts on instead of showing: C0 and C1 controls (ESC starts an escape
# sequence, BEL rings, CR overwrites the line), DEL, line and paragraph separators, and the
# bidirectional overrides and isolates (they reorder what follows them on screen).
_UNSHOWN = frozenset(chr(c) for c in (*range(0x20), *range(0x7F, 0xA0), 0x061C, 0x200E, 0x200F, 0x2028, 0x2029,
                                      *range(0x202A, 0x202F), *range(0x2066, 0x206A)))


def printable(text: object) -> str:
    """``text`` with every character a terminal would act on (see ``_UNSHOWN``) written as a visible
    escape, as Python writes it in a string literal (ESC as ``\\x1b``, a newline as ``\\n``): names
    from a model (inputs, tensors, nodes, op types, domains) reach the terminal in summaries, tables,
    logs and errors, and a model must not be able to send escape sequences to the user's terminal,
    nor split one error line into several."""
    text = str(text)
    if not any(ch in _UNSHOWN for ch in text):
        return text
    return "".join(ch.encode("unicode_escape").decode("ascii") if ch in _UNSHOWN else ch for ch in text)
