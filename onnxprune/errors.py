"""Errors the tool reports to users as one line, with the exit code the CLI uses."""

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
