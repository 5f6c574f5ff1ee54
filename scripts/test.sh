#!/usr/bin/env bash
# The whole test suite, as root: set-up (idempotent), ruff, mypy --strict, unit tests, and the
# lab tests, which run real libvirt daemons and real QEMU guests. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
echo "==> ruff"
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
echo "==> mypy --strict"
.venv/bin/mypy
echo "==> pytest"
exec .venv/bin/pytest -ra "$@"
