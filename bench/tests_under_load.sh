#!/usr/bin/env bash
# The default test run five times in a row beside one CPU-bound process per core, after a pilot under the
# same load (its report lands in /tmp/pilot-loaded/pilot.md). Prints one line per run: exit status, seconds.
#   bash bench/tests_under_load.sh
set -u
cd "$(dirname "$0")/.."
hogs=()
for _ in $(seq "$(nproc)"); do python -c "while True: pass" & hogs+=($!); done
trap 'kill "${hogs[@]}" 2>/dev/null' EXIT
echo "commit $(git rev-parse --short HEAD); $(nproc) CPU-bound neighbours"
rm -rf /tmp/pilot-loaded
/usr/bin/time -f "pilot: %e s" python -m chipprune pilot --out /tmp/pilot-loaded --quiet > /tmp/pilot-loaded.txt 2>&1 || true
echo "pilot exit $?"
for i in 1 2 3 4 5; do
  start=$(date +%s)
  python -m pytest -q -p no:cacheprovider > "/tmp/loaded-run-$i.txt" 2>&1
  echo "run $i: exit $?, $(( $(date +%s) - start )) s, $(tail -1 "/tmp/loaded-run-$i.txt")"
done
