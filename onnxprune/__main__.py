"""Entry point of the ``onnxprune`` command (and ``python -m onnxprune``).

It takes over Ctrl-C before anything heavy loads: an interrupt while the command starts exits
with 130 and one line, no traceback. ``cli.main`` then puts Python's own handler back, and its
``except KeyboardInterrupt`` says what was written. (Only the interpreter's own start-up, before
this file runs, is out of reach.)
"""

import signal
import sys


def _interrupted_while_starting(_signum, _frame) -> None:
    sys.stderr.write("onnxprune: interrupted; nothing was written\n")
    raise SystemExit(130)


signal.signal(signal.SIGINT, _interrupted_while_starting)

from onnxprune.cli import main as _main  # noqa: E402  (after the handler, on purpose)


def main() -> int:
    """Run the command line with Python's KeyboardInterrupt back in place."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    code = _main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # done: an interrupt now would only hide the exit status
    return code


if __name__ == "__main__":
    sys.exit(main())
