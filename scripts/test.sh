#!/usr/bin/env bash
# The README's test command: install PRISM with its dev and ray extras (torch pinned), lint, run every test
# on two pytest-xdist workers.
set -euo pipefail
cd "$(dirname "$0")/.."
# Pin torch first: on PRISM's build machines this resolves to a CPU wheel already on disk.
python -m pip install -q torch==2.13.0
python -m pip install -q -e '.[dev,ray]'
python -m ruff check .
# Two workers, one test file per worker (module fixtures such as the localnet run are built once):
# the whole run fits in about 15 minutes on two cores. PRISM_TEST_WORKERS=0 runs serially.
python -m pytest -q -n "${PRISM_TEST_WORKERS:-2}" --dist loadfile "$@"
