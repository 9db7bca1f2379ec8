"""Entry point of the ``onnxprune`` command (and ``python -m onnxprune``).

It takes over Ctrl-C before anything heavy loads: an interrupt while the command starts exits
with 130 and one line, no traceback. ``cli.main`` then puts Python's own handler back, and its
``except KeyboardInterrupt`` says what was written (an interrupt that a library's import turned into
another exception included). (Only the interpreter's own start-up, before
this file runs, is out of reach.)
"""

import os
import signal
import sys


def _interrupted_while_starting(_signum, _frame) -> None:
    sys.stderr.write("onnxprune: interrupted; nothing was written\n")
    raise SystemExit(130)


signal.signal(signal.SIGINT, _interrupted_while_starting)

from onnxprune import cli  # noqa: E402
from onnxprune.cli import main as _main  # noqa: E402  (after the handler, on purpose)
from onnxprune.cli import on_sigint  # noqa: E402


def main() -> int:
    """Run the command line with KeyboardInterrupt back in place (remembered: see ``cli.on_sigint``)."""
    signal.signal(signal.SIGINT, on_sigint)
    try:
        code = _main()
    except KeyboardInterrupt:  # a second Ctrl-C while the first one was being reported
        code = 130
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # done: an interrupt now would only hide the exit status
    if cli.SIGINT_SEEN:
        # CPython marks a KeyboardInterrupt raised inside code it runs for an extension's import as
        # unhandled even after we caught it, and at exit kills itself with SIGINT (status -2, not
        # 130). Everything is written or cleaned up by now: leave with our status.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
