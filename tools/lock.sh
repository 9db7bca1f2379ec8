#!/usr/bin/env bash
# Refresh requirements/lock.txt on purpose: resolve pyproject's ranges (test and bench extras) to the
# newest releases with uv, for Python 3.11 on Linux x86_64 (the project's machines). Review the diff,
# run the suite against it (bash tools/setup.sh), and say in the commit that the lock was refreshed.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-}
if [ -z "$UV" ]; then
  if command -v uv >/dev/null 2>&1; then
    UV=uv
  else
    [ -x .cache/uv/bin/uv ] || { python3 -m venv .cache/uv && .cache/uv/bin/pip install -q uv; }
    UV=.cache/uv/bin/uv
  fi
fi
# torch<=2.14.1 and torchvision<=0.29.1 in pyproject are the releases pip finds on the machines' local disk.
"$UV" pip compile pyproject.toml --extra test --extra bench --python-version 3.11 \
  --python-platform x86_64-manylinux_2_28 --no-header --quiet -o requirements/lock.txt
{ echo "# Every package of the development and CI environment, pinned. Made by tools/lock.sh (uv pip compile)"
  echo "# from pyproject.toml's test and bench extras; refresh only on purpose, and say so in the commit."
  cat requirements/lock.txt; } > requirements/lock.txt.new
mv requirements/lock.txt.new requirements/lock.txt
echo "wrote requirements/lock.txt ($(grep -c '==' requirements/lock.txt) pins)"
