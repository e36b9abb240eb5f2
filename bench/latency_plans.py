"""Latency-aware plans against MAC-driven ones: predicted and measured speed-up, MACs, accuracy.

    python bench/latency_plans.py [--shared ../shared] [--rounds 3] [--models cifar_resnet56 resnet50] [--out FILE]

For each model, plans are made from one set of CHIP scores: the paper's string (ResNet-56), a MAC
budget of 50% (one ratio for every group, as `--target-macs 0.5`), the same rounded to multiples of
8, and latency budgets from the per-layer latency table (`--target-latency`): at batch 1, at batch 1
and 64 together (the mean of the two fractions), and at batch 1 with the latency the MAC plan is
predicted to have (same latency, which plan keeps more accuracy?); with residual streams capped at
30% (the default), 50% and 70%. Each plan prunes a copy of the model; ResNet-56 is evaluated on the
1,000 ../shared CIFAR-10 test images after BatchNorm re-estimation on the 640 calibration images (no
fine-tuning). Latency: the original and every plan are timed in turn, --rounds times (the fastest
block of each timing), and the speed-up is the median over rounds of original / plan, so that a
noisy neighbour slows both sides of a ratio. ResNet-50 (224x224, random weights: sizes and speed
only) is timed at batch 1 and 64.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import chipprune
from chipprune import Calibration, PlanRequest, load_pruned, save_pruned, score
from chipprune.data import open_data
from chipprune.errors import ChipPruneError
from chipprune.evaluation.latency import measure_latency
from chipprune.evaluation.metrics import count_macs, evaluate, recalibrate_batchnorm
from chipprune.io.atomic import read_json, write_json
from chipprune.pipeline import prune_to_plan
from chipprune.planning import Plan, make_plan, size_after
from chipprune.planning.latency_search import BlendedLatency, plan_for_latency
from chipprune.planning.latency_table import LatencyModel, LatencyTable
from chipprune.surgery import prunable_groups


def _pruned(model, spec, keep, scores):
    m = copy.deepcopy(model)
    _, groups, _ = prunable_groups(m, spec)
    plan = Plan({g.name: 1 - keep[g.name] / g.channels for g in groups}, dict(keep), "bench")
    return prune_to_plan(m, spec, plan, scores=scores, progress=False)


def measure(spec_file: Path) -> None:
    """Time the original and every pruned folder in turn, round after round (run in a fresh process)."""
    job = read_json(spec_file)
    original = chipprune.load_model(job["model"], None)[0]
    models = {"original": original, **{label: load_pruned(folder) for label, folder in job["folders"].items()}}
    times = {b: {label: [] for label in models} for b in job["batch_sizes"]}
    for _ in range(job["rounds"]):
        for b in job["batch_sizes"]:
            time.sleep(3)  # after heavy large-batch work, let the machine settle before timing small batches
            for label, m in models.items():
                times[b][label].append(measure_latency(m, job["image_size"], b, min_run_time=1.0 if b == 1 else 2.0).min_ms)
    write_json(spec_file.with_suffix(".times.json"), times)


def _latency_plan(groups, scores, predictor, target, **options):
    try:
        return plan_for_latency(groups, scores, predictor, target, **options).keep
    except ChipPruneError as exc:
        print(f"  (skipped: {exc})")
        return None


def run_model(name, weights, data, batch_sizes, rounds, table, calib_images, paper, table_batches):
    """Plans for ``name``, timed at ``batch_sizes``; latency tables (predictions) at ``table_batches``."""
    model, spec = chipprune.load_model(name, weights)
    _, groups, _ = prunable_groups(model, spec)
    calib = Calibration(data=data, images=calib_images, batch_size=min(128, calib_images))
    t0 = time.perf_counter()
    scores = score(model, spec, calib, groups=groups, progress=False)
    print(f"\n{name}: scored {len(groups)} groups on {calib_images} images in {time.perf_counter() - t0:.0f} s", flush=True)
    measured_before = table.measured
    t0 = time.perf_counter()
    lm = {b: LatencyModel(model, spec, groups, table, batch_size=b, progress=False) for b in table_batches}
    base_macs = count_macs(model, spec.image_size)

    plans: dict[str, dict[str, int]] = {}
    if paper:
        plans[f"paper {paper}"] = make_plan(model, spec, groups, PlanRequest(sparsity=paper)).keep
    macs_plan = make_plan(model, spec, groups, PlanRequest(target_macs=0.5)).keep
    plans["MACs 50% (one ratio)"] = macs_plan
    plans["MACs 50%, round-to 8"] = make_plan(model, spec, groups, PlanRequest(target_macs=0.5, round_to=8)).keep
    if paper:  # the MAC budget of the fastest latency plan below, for a comparison at (about) equal speed
        plans["MACs 44% (one ratio)"] = make_plan(model, spec, groups, PlanRequest(target_macs=0.44)).keep
    b1 = lm[table_batches[0]]
    plans[f"latency 75% at batch {table_batches[0]}"] = _latency_plan(groups, scores, b1, 0.75 * b1.original)
    for frac in (0.65, 0.5):
        plans[f"latency {frac:.0%} at batch {table_batches[0]}, streams to 70%"] = _latency_plan(
            groups, scores, b1, frac * b1.original, max_shared_ratio=0.7)
    plans[f"latency 68% at batch {table_batches[0]}, streams to 50%"] = _latency_plan(
        groups, scores, b1, 0.68 * b1.original, max_shared_ratio=0.5)
    if len(lm) > 1:
        both = "+".join(map(str, table_batches))
        blended = BlendedLatency(list(lm.values()))
        plans[f"latency 75% at batch {both}"] = _latency_plan(groups, scores, blended, 0.75)
        for cap in (0.5, 0.7):
            plans[f"latency 60% at batch {both}, streams to {cap:.0%}"] = _latency_plan(
                groups, scores, blended, 0.6, max_shared_ratio=cap)
    same = b1.predict(macs_plan)
    plans[f"latency = MAC plan's ({same / b1.original:.0%}) at batch {table_batches[0]}"] = _latency_plan(groups, scores, b1, same)
    plans[f"latency = MAC plan's at batch {table_batches[0]}, streams to 70%"] = _latency_plan(
        groups, scores, b1, same, max_shared_ratio=0.7)
    plans = {label: keep for label, keep in plans.items() if keep is not None}
    table.save()
    print(f"latency tables and plans: {time.perf_counter() - t0:.0f} s, {table.measured - measured_before} layer shapes timed", flush=True)

    results = {label: _pruned(model, spec, keep, scores) for label, keep in plans.items()}
    models = {label: r.model for label, r in results.items()}
    accuracy = {}
    if weights is not None:
        source = open_data(data)
        test, loader = source.test_loader(spec), calib.loader(spec, source)
        accuracy["original"] = evaluate(model, test)["top1"]
        for label, m in models.items():
            recalibrate_batchnorm(m, loader)
            accuracy[label] = evaluate(m, test)["top1"]

    # Timing runs in a fresh process, as `chipprune eval --latency` would: in this one, after minutes
    # of table timing and large frees, small batches ran several times slower on our VM (ad-hoc checks).
    with tempfile.TemporaryDirectory() as tmp:
        folders = {}
        for i, (label, m) in enumerate(models.items()):
            folders[label] = save_pruned(results[label], Path(tmp) / f"plan{i}")
        spec_file = Path(tmp) / "measure.json"
        write_json(spec_file, {"model": name, "image_size": spec.image_size, "batch_sizes": batch_sizes, "rounds": rounds,
                               "folders": {k: str(v) for k, v in folders.items()}})
        subprocess.run([sys.executable, __file__, "--measure", str(spec_file)], check=True)
        times = {int(b): v for b, v in read_json(spec_file.with_suffix(".times.json")).items()}

    rows = []
    for label, keep in plans.items():
        macs = count_macs(models[label], spec.image_size)
        row = {"plan": label, "macs_fraction": macs / base_macs, "params": size_after(model, spec, groups, keep)[0],
               "top1": accuracy.get(label), "top1_original": accuracy.get("original")}
        for b in batch_sizes:
            ratios = [o / p for o, p in zip(times[b]["original"], times[b][label])]
            row[f"b{b}_original_ms"] = statistics.median(times[b]["original"])
            row[f"b{b}_measured_ms"] = statistics.median(times[b][label])
            if b in lm:
                lm[b].refresh(keep)  # as plan_for_latency_budget does before it reports a prediction
            row[f"b{b}_predicted_speedup"] = lm[b].original / lm[b].predict(keep) if b in lm else None
            row[f"b{b}_speedup"] = statistics.median(ratios)
        rows.append(row)
    return spec, base_macs, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument("--models", nargs="+", default=["cifar_resnet56", "resnet50"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--table", type=Path, default=None, help="latency table (default: this machine's cache)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--measure", type=Path, default=None, help=argparse.SUPPRESS)  # internal: the timing process
    args = parser.parse_args()
    if args.measure:
        measure(args.measure)
        return
    data = args.shared / "data" / "cifar10"
    shared_weights = args.shared / "weights" / "cifar10-resnet"
    table = LatencyTable(args.table)
    machine = f"{platform.machine()}, {table.machine}"
    print(f"machine: {machine}\nlatency table: {table.path} ({len(table.entries)} entries at start)")
    results = {}
    for name in args.models:
        if name == "cifar_resnet56":
            w = next(shared_weights.glob("resnet56-*.th"), None) if shared_weights.is_dir() else None
            spec, base_macs, rows = run_model(name, w or "bundled", data if data.is_dir() else "bundled", [1, 64], args.rounds,
                                              table, 640, "[0.]+[0.15]*2+[0.4]*27", [1, 64])
        else:  # 224x224 on a small CPU: a batch-64 table would take an hour; batch 64 is measured, not predicted
            spec, base_macs, rows = run_model(name, None, "bundled", [1, 64], max(1, args.rounds - 2), table, 32, None, [1])
        results[name] = rows
        b = [k[1:-12] for k in rows[0] if k.endswith("_original_ms")]
        print(f"\n{name} ({spec.image_size}x{spec.image_size}), original: "
              + ", ".join(f"batch {x} {rows[0][f'b{x}_original_ms']:.2f} ms" for x in b) + f", {base_macs / 1e6:.1f}M MACs")
        head = f"{'plan':44}{'MACs':>7}{'top-1':>7}" + "".join(
            f"{'b' + x + ' ms':>10}{'speed-up':>9}{'predicted':>10}{'/MAC ratio':>11}" for x in b)
        print(head)
        print("-" * len(head))
        for r in rows:
            top1 = f"{r['top1']:7.2f}" if r["top1"] is not None else f"{'-':>7}"
            line = f"{r['plan']:44}{r['macs_fraction']:>7.1%}{top1}"
            for x in b:
                pred = r[f"b{x}_predicted_speedup"]
                line += (f"{r[f'b{x}_measured_ms']:>10.2f}{r[f'b{x}_speedup']:>8.2f}x"
                         + (f"{pred:>9.2f}x" if pred else f"{'-':>10}") + f"{r[f'b{x}_speedup'] * r['macs_fraction']:>11.2f}")
            print(line)
        if rows[0]["top1_original"] is not None:
            print(f"original top-1: {rows[0]['top1_original']:.2f}% (BatchNorm re-estimated after pruning, no fine-tuning)")
    print("\ncolumns: bN ms = measured at batch N (median over rounds of the fastest block); speed-up = median over rounds of "
          "original/plan timed in the same round; predicted = speed-up the latency table predicts; /MAC ratio = speed-up "
          "divided by the MAC reduction (1.0: as fast as the MACs promise)")
    if args.out:
        args.out.write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
