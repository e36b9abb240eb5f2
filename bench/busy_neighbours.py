"""How much a busy machine slows chipprune's tests, with torch's default threads and with one.

Runs the same pytest selection on an idle machine and beside N CPU-bound neighbour processes, with
OMP_NUM_THREADS unset (torch uses every core) and set to 1, and prints the wall time of each and its
ratio to the idle run with the same threads. The test suite pins one thread (tests/conftest.py);
this bench overrides that through CHIPPRUNE_BENCH_THREADS, which conftest reads only when set here.

    python bench/busy_neighbours.py                       # default selection, 2 neighbours
    python bench/busy_neighbours.py --neighbours 1 --tests tests/test_prune.py

Each round runs the four cases back to back (idle and busy, for each thread setting); the table
gives the median over rounds and, in brackets, the rounds' range: this machine's speed drifts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TESTS = ["tests/test_any_model.py", "-k", "family", "tests/test_cli.py::test_default_job_end_to_end", "tests/test_prune.py"]


def run_tests(tests: list[str], threads: str | None) -> float:
    env = {**os.environ, "CHIPPRUNE_BENCH_THREADS": threads or "default"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def with_neighbours(n: int, work):
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(1)
        return work()
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neighbours", type=int, default=2, help="CPU-bound processes beside the tests (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the four runs (default 3)")
    parser.add_argument("--tests", nargs=argparse.REMAINDER, default=DEFAULT_TESTS, help="pytest arguments (last option)")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, {args.neighbours} neighbours, {args.rounds} rounds; tests: {' '.join(args.tests)}\n", flush=True)
    cases = {"torch default": None, "1": "1"}
    times: dict[str, dict[str, list[float]]] = {label: {"idle": [], "busy": []} for label in cases}
    for r in range(args.rounds):
        for label, threads in cases.items():
            times[label]["idle"].append(run_tests(args.tests, threads))
            times[label]["busy"].append(with_neighbours(args.neighbours, lambda: run_tests(args.tests, threads)))
            print(f"round {r + 1}, threads {label}: idle {times[label]['idle'][-1]:.1f} s, busy {times[label]['busy'][-1]:.1f} s", flush=True)

    def cell(values: list[float], unit: str) -> str:
        return f"{statistics.median(values):.1f}{unit} ({min(values):.1f}-{max(values):.1f})"

    print(f"\n{'math threads':14}{'idle s':>20}{'busy s':>22}{'busy / idle (same round)':>30}")
    for label, t in times.items():
        ratios = [b / i for i, b in zip(t["idle"], t["busy"])]
        print(f"{label:14}{cell(t['idle'], ''):>20}{cell(t['busy'], ''):>22}{cell(ratios, 'x'):>30}")


if __name__ == "__main__":
    main()
