"""Latency features on a quiet and on a busy machine, in one run.

1. Quiet: `chipprune prune --model cifar_resnet56 --target-latency 0.65` with a fresh latency table,
   once with the defaults (residual streams lose at most 30%) and once with `--max-shared-ratio 0.5`,
   then the pruned model against the original, timed the way `eval --latency` times (batch 1, 64);
   and the same budget blended over batch 1 and 64 (`--latency-batch 1 64`), for batch serving.
2. Busy: the same beside one CPU-bound process per core that this bench starts (a fresh table
   again), and the same timing, still busy.
3. Quiet again: the busy run's plan timed once more, to compare with the quiet plan.

Checks (printed, and the exit status is 1 if one fails): no prune exits 0 with nothing pruned or
with a plan predicted slower than the original; the busy plan, timed quietly, is within 15% of the
quiet plan's batch-1 speed-up, or the busy prune stopped with a message about the timing; the busy
intervals are wider than the quiet ones and contain the quiet figure.

    python bench/latency_noise.py --out docs/latency_noise.json     # about 10-20 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import chipprune
from chipprune.evaluation.latency import Comparison, compare_models
from chipprune.evaluation.metrics import count_macs
from chipprune.io.atomic import write_json
from chipprune.reporting.console import speedup_text


def prune(out: Path, table: Path, target: str, *options: str) -> dict:
    """Run the CLI; its exit status, the last lines it printed, and the report when it succeeded."""
    args = [sys.executable, "-m", "chipprune", "prune", "--model", "cifar_resnet56", "--target-latency", target,
            "--latency-table", str(table), "--out", str(out), "--no-eval", "--quiet", *options]
    started = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True)
    result = {"exit": proc.returncode, "seconds": round(time.perf_counter() - started, 1),
              "message": (proc.stdout + proc.stderr).strip().splitlines()[-3:]}
    if proc.returncode == 0:
        result["report"] = json.loads((out / "report.json").read_text())
    return result


def timed(folder: Path, batches: list[int]) -> dict[str, Comparison]:
    """What `eval --latency` measures (eager PyTorch): the original against the pruned model."""
    pruned = chipprune.load_pruned(folder)
    original = chipprune.get_model_spec("cifar_resnet56").build()
    return compare_models(original, pruned, 32, batches)


class Neighbours:
    """One CPU-bound process per core, for the duration of a `with` block."""

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
        time.sleep(1)

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
            p.wait()


def row(label: str, run: dict, times: dict[str, Comparison] | None, base_macs: int, macs: int | None) -> str:
    if run["exit"] != 0:
        return f"{label:22} exit {run['exit']}: {run['message'][-1]}"
    r = run["report"]
    if not times:  # a run that succeeded but was not timed: its prediction only
        return f"{label:22} exit 0  MACs {macs / base_macs:6.1%}  predicted {r['predicted_speedup']['1']:.2f}x  (not timed)"
    b1, b64 = times["1"], times["64"]
    efficiency = b64.speedup / (base_macs / macs)
    return (f"{label:22} exit 0  MACs {macs / base_macs:6.1%}  predicted {r['predicted_speedup']['1']:.2f}x  "
            f"b1 {b1.speedup:.2f}x [{b1.speedup_low:.2f}-{b1.speedup_high:.2f}]  b64 {b64.speedup:.2f}x "
            f"[{b64.speedup_low:.2f}-{b64.speedup_high:.2f}]  b64 efficiency {efficiency:.2f}  ({run['seconds']:.0f} s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="0.65")
    parser.add_argument("--max-shared-ratio", default="0.5", help="for the compared runs (the default 0.3 is tried once, quietly)")
    parser.add_argument("--out", default=None, help="JSON of every figure")
    parser.add_argument("--skip-busy", action="store_true", help="the quiet run only (a quick look; the checks need both)")
    args = parser.parse_args()
    base_macs = count_macs(chipprune.get_model_spec("cifar_resnet56").build(), 32)
    work = Path(tempfile.mkdtemp(prefix="latency-noise-"))
    runs, times, failures = {}, {}, []

    shared = ("--max-shared-ratio", args.max_shared_ratio)
    runs["quiet, defaults"] = prune(work / "defaults", work / "defaults-table.json", args.target)
    runs["quiet"] = prune(work / "quiet", work / "quiet-table.json", args.target, *shared)
    runs["quiet, batch 1+64"] = prune(work / "blended", work / "quiet-table.json", args.target, *shared, "--latency-batch", "1", "64")
    for key, folder in (("quiet, defaults", "defaults"), ("quiet", "quiet"), ("quiet, batch 1+64", "blended")):
        if runs[key]["exit"] == 0:
            times[key] = timed(work / folder, [1, 64])
    if args.skip_busy:
        for key in runs:
            print(row(key, runs[key], times.get(key), base_macs, runs[key].get("report", {}).get("macs_after")))
        return 0
    with Neighbours():
        runs["busy"] = prune(work / "busy", work / "busy-table.json", args.target, *shared)
        if runs["busy"]["exit"] == 0:
            times["busy"] = timed(work / "busy", [1, 64])
    if runs["busy"]["exit"] == 0:
        times["busy plan, quiet"] = timed(work / "busy", [1, 64])

    macs = {k: r["report"]["macs_after"] for k, r in runs.items() if r["exit"] == 0}
    print(f"{os.cpu_count()} cores; cifar_resnet56 --target-latency {args.target} --max-shared-ratio {args.max_shared_ratio} "
          "(except 'defaults'); timings: medians of alternating rounds, 95% intervals\n")
    for key in ("quiet, defaults", "quiet", "quiet, batch 1+64", "busy"):
        print(row(key, runs[key], times.get(key), base_macs, macs.get(key)))
    if "busy plan, quiet" in times:
        print(row("busy plan, timed quiet", runs["busy"], times["busy plan, quiet"], base_macs, macs["busy"]))
    for key, text in (("quiet", "quiet"), ("busy", "busy")):
        if key in times:
            print(f"  {text}, batch 1: {speedup_text(times[key]['1'])}")

    for key, run in runs.items():
        if run["exit"] == 0 and run["report"]["macs_after"] >= base_macs:
            failures.append(f"{key}: exit 0 with nothing pruned")
        if run["exit"] == 0 and run["report"]["predicted_speedup"]["1"] <= 1:
            failures.append(f"{key}: a plan predicted no faster than the original")
    if runs["busy"]["exit"] == 0 and "quiet" in times:
        quiet, again = times["quiet"]["1"].speedup, times["busy plan, quiet"]["1"].speedup
        if abs(again / quiet - 1) > 0.15:
            failures.append(f"the busy plan runs {again:.2f}x quietly against the quiet plan's {quiet:.2f}x (more than 15% apart)")
        for b in ("1", "64"):
            q, busy = times["quiet"][b], times["busy"][b]
            if busy.speedup_high - busy.speedup_low < q.speedup_high - q.speedup_low:
                failures.append(f"batch {b}: the busy interval is narrower than the quiet one")
            if not busy.speedup_low <= q.speedup <= busy.speedup_high:
                failures.append(f"batch {b}: the busy interval does not contain the quiet speed-up {q.speedup:.2f}x")
    elif runs["busy"]["exit"] != 0 and "timing" not in " ".join(runs["busy"]["message"]):
        failures.append("the busy prune failed without naming the timing")
    print("\nchecks: " + ("all passed" if not failures else "; ".join(failures)))
    if args.out:
        write_json(args.out, {"target": args.target, "cores": os.cpu_count(), "failures": failures,
                              "runs": {k: {kk: vv for kk, vv in r.items() if kk != "report"} for k, r in runs.items()},
                              "macs_fraction": {k: m / base_macs for k, m in macs.items()},
                              "predicted_speedup": {k: r["report"]["predicted_speedup"] for k, r in runs.items() if r["exit"] == 0},
                              "timed": {k: {b: vars(c) for b, c in t.items()} for k, t in times.items()}})
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
