"""Errors the tool reports to users as one line, with the exit code the CLI uses, and ``first_line``,
which turns a library's exception (or any text) into such a line."""

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
