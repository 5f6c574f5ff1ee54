#!/usr/bin/env bash
# Set everything up (idempotent), start the two-host lab, boot a guest that dirties 100 MiB/s,
# check and move it live from hostA to hostB, and print what the guest saw: the heartbeat report.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
vmigrate=.venv/bin/vmigrate
echo "==> vmigrate lab up"
$vmigrate lab up
$vmigrate lab vm rm demo >/dev/null 2>&1 || true
echo "==> vmigrate lab vm create demo --memory 512 --dirty-rate 100"
$vmigrate lab vm create demo --memory 512 --dirty-rate 100
sleep 2
echo "==> vmigrate check demo --from hostA --to hostB"
$vmigrate check demo --from hostA --to hostB
echo "==> vmigrate live demo --from hostA --to hostB"
$vmigrate live demo --from hostA --to hostB
sleep 1
echo "==> vmigrate lab heartbeat demo"
$vmigrate lab heartbeat demo
$vmigrate lab status
echo "The lab stays up for you to explore; 'vmigrate lab down' removes all of it."
