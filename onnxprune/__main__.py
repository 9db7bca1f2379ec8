"""Entry point of the ``onnxprune`` command (and ``python -m onnxprune``).

It takes over Ctrl-C (SIGINT) and SIGTERM before anything heavy loads: either one while the
command starts exits with one line and no traceback (130 for SIGINT, 143 for SIGTERM, as later).
``cli.main`` then handles both as KeyboardInterrupt (``cli.on_signal``), and its ``except
KeyboardInterrupt`` says what was written (an interrupt that a library's import turned into
another exception included). (Only the interpreter's own start-up, before this file runs, is out
of reach.)
"""

import os
import signal
import sys


def _stopped_while_starting(signum, _frame) -> None:
    word = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
    sys.stderr.write(f"onnxprune: {word}; nothing was written\n")
    raise SystemExit(128 + signum)


signal.signal(signal.SIGINT, _stopped_while_starting)
signal.signal(signal.SIGTERM, _stopped_while_starting)

from onnxprune import cli  # noqa: E402
from onnxprune.cli import main as _main  # noqa: E402  (after the handlers, on purpose)
from onnxprune.cli import on_signal  # noqa: E402


def main() -> int:
    """Run the command line with KeyboardInterrupt back in place (remembered: see ``cli.on_signal``)."""
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        code = _main()
    except KeyboardInterrupt:  # a second signal while the first one was being reported
        code = 128 + (cli.SIGNAL_SEEN or signal.SIGINT)
    for sig in (signal.SIGINT, signal.SIGTERM):  # done: a signal now would only hide the exit status
        signal.signal(sig, signal.SIG_IGN)
    if cli.SIGNAL_SEEN:
        # CPython marks a KeyboardInterrupt raised inside code it runs for an extension's import as
        # unhandled even after we caught it, and at exit kills itself with SIGINT (status -2, not
        # 130). Everything is written or cleaned up by now: leave with our status.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
