#!/usr/bin/env bash
# The README's test command: install PRISM with its dev and ray extras (torch pinned), lint, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# Pin torch first: on PRISM's build machines this resolves to a CPU wheel already on disk.
python -m pip install -q torch==2.13.0
python -m pip install -q -e '.[dev,ray]'
python -m ruff check .
python -m pytest -q "$@"
