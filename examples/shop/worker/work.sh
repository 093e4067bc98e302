#!/bin/sh
# The shop's worker: does its (pretend) work in a loop and says so.
set -eu
echo "worker started: $(hostname)"
while true; do
  echo "processed batch at $(date -u +%H:%M:%S)"
  sleep "${WORK_INTERVAL:-5}"
done
