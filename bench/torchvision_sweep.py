"""Which models can chipprune prune? torchvision's classifiers, detectors and segmenters, and timm's
CNN families (``timm:NAME``), each pruned at ratio 0.3 with CHIP on random data.

    python bench/torchvision_sweep.py [--size 64] [--seg-size N] [--only PATTERN...] [--skip PREFIX...] [--out FILE.json]
    python bench/torchvision_sweep.py --show RUN.json... [--out COMBINED.json]   # saved runs as one table

For each model, in a process of its own (one math thread; peak memory is that process's): build it
with random weights, trace its coupled channel groups, score them with CHIP on 2 batches of random
images, prune every group at ratio 0.3 (``pipeline.prune_to_plan``), run it, save and reload it
(every output tensor must be equal), export it to ONNX (checked with ONNX Runtime; a failure is
recorded with its message), and count MACs before and after on the model's own example input.
A model that runs over ``--timeout`` seconds (120) or over ``--memory-gb`` (4) is stopped and
recorded as such, with the steps it finished.

Sizes: classifiers at ``--size`` (64; Inception-v3 at 299), detectors and segmenters at their
spec's own size (detectors resize every image to their own min size anyway; ``--seg-size`` runs
segmenters smaller). Transformers (vit,
swin, maxvit) are skipped by default: chipprune targets convolutional networks. ``--only`` keeps
names containing any PATTERN (shell wildcards allowed).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TIMM = [
    "resnet18", "resnet50", "efficientnet_b0", "convnext_atto", "convnext_tiny", "regnetx_002", "regnety_002",
    "mobilenetv3_small_050", "mobilenetv3_large_100", "resnext50_32x4d", "seresnext26d_32x4d", "ecaresnet26t",
    "res2net50_26w_4s", "resnest14d", "densenet121", "dpn68", "dla34", "cspdarknet53", "ghostnet_100", "repvgg_a0",
    "mobileone_s0", "mobilenetv4_conv_small", "efficientnetv2_rw_t", "mixnet_s", "rexnet_100", "lcnet_050",
    "xception41", "hrnet_w18_small", "nfnet_l0", "convnextv2_atto", "edgenext_xx_small", "inception_next_atto",
    "poolformer_s12",
]
STEPS = ("build", "trace", "score and prune", "reload", "onnx")


def sweep_names(only: list[str] | None, skip: list[str]) -> list[str]:
    from chipprune.models import torchvision_models

    names = [n for n in torchvision_models.names() if not n.startswith(tuple(skip))] + [f"timm:{n}" for n in TIMM]
    if only:
        pats = [p if any(c in p for c in "*?[") else f"*{p}*" for p in only]
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in pats)]
    return names


# ---- the child: one model -------------------------------------------------------------------------

def _write(path: str, row: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(row, f)
    os.replace(tmp, path)  # the parent reads whole rows only, even after a kill


def _outputs_equal(a, b) -> bool:
    import torch
    import torch.utils._pytree as pytree

    la, lb = pytree.tree_leaves(a), pytree.tree_leaves(b)
    return len(la) == len(lb) and all(
        torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(la, lb))


def _prune(name: str, size: int, seg_size: int | None, batch: int, row: dict, path: str):
    import torch

    from chipprune import get_model_spec
    from chipprune.evaluation.metrics import count_macs
    from chipprune.pipeline import prune_to_plan
    from chipprune.planning import PlanRequest, make_plan
    from chipprune.surgery import prunable_groups

    spec = get_model_spec(name)
    if spec.task == "classification":
        spec = get_model_spec(name, image_size=299 if name == "inception_v3" else size)
    elif spec.task == "segmentation" and seg_size:
        spec = get_model_spec(name, image_size=seg_size)
    row.update(task=spec.task, size=spec.image_size, step="build")
    _write(path, row)
    torch.manual_seed(0)
    model = spec.build().eval()
    row.update(params_before=sum(p.numel() for p in model.parameters()), step="trace")
    _write(path, row)
    _, groups, _ = prunable_groups(model, spec)
    plan = make_plan(model, spec, groups, PlanRequest(sparsity="0.3"))
    row.update(groups=len(groups), macs_before=count_macs(model, spec.example_input()), step="score and prune")
    _write(path, row)
    n = batch if spec.task == "classification" else max(1, batch // 2)
    batches = [(spec.model_input(torch.rand(n, 3, spec.image_size, spec.image_size)), None) for _ in range(2)]
    t0 = time.perf_counter()
    result = prune_to_plan(model, spec, plan, batches=batches, progress=False)
    row.update(prune="ok", seconds_prune=round(time.perf_counter() - t0, 2),
               macs_after=count_macs(result.model, spec.example_input()), step="reload")
    row["mac_ratio"] = row["macs_after"] / row["macs_before"]
    _write(path, row)
    return result, spec


def _reload_and_export(result, spec, row: dict, path: str) -> None:
    import torch

    from chipprune import load_pruned, save_pruned
    from chipprune.io.onnx import export_onnx

    x = spec.model_input(torch.rand(2 if spec.task == "classification" else 1, 3, spec.image_size, spec.image_size))
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        out = result.model(x)
        save_pruned(result, Path(tmp) / "pruned")
        row["reload"] = "identical" if _outputs_equal(load_pruned(Path(tmp) / "pruned")(x), out) else "differs"
        row["step"] = "onnx"
        _write(path, row)
        t0 = time.perf_counter()
        try:
            row["onnx_max_diff"] = export_onnx(result.model, spec, Path(tmp) / "model.onnx")
            row["onnx"] = "ok"
        except Exception as exc:  # noqa: BLE001 - a failed export is a finding, recorded with its message
            row["onnx"] = f"{type(exc).__name__}: {str(exc)[:400]}"
        row["seconds_onnx"] = round(time.perf_counter() - t0, 2)


def child(name: str, size: int, seg_size: int | None, batch: int, path: str) -> None:
    import torch

    torch.set_num_threads(1)
    row: dict = {"model": name}
    try:
        result, spec = _prune(name, size, seg_size, batch, row, path)
        _reload_and_export(result, spec, row, path)
        row["step"] = "done"
    except Exception as exc:  # noqa: BLE001 - any failure is recorded, with the step it happened in
        row["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
    _write(path, row)


# ---- the parent: one process per model --------------------------------------------------------------

def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
    except OSError:
        return 0


def _watch(proc: subprocess.Popen, timeout: float, limit_kib: int) -> tuple[str | None, int]:
    """Wait for ``proc``; kill it past ``timeout`` seconds or ``limit_kib`` of memory. (why killed, peak KiB)."""
    start, killed = time.monotonic(), None
    while True:  # os.wait4, not proc.poll(): it gives this one child's peak memory
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return killed, usage.ru_maxrss
        if killed is None and (_rss_kib(proc.pid) > limit_kib or time.monotonic() - start > timeout):
            killed = "memory" if _rss_kib(proc.pid) > limit_kib else "timeout"
            os.kill(proc.pid, signal.SIGKILL)
        time.sleep(0.1)


def run_one(name: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "row.json")
        cmd = [sys.executable, __file__, "--child", name, "--size", str(args.size), "--batch", str(args.batch), "--row", path]
        cmd += ["--seg-size", str(args.seg_size)] if args.seg_size else []
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        t0 = time.perf_counter()
        with open(Path(tmp) / "stderr", "w+") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
            killed, peak_kib = _watch(proc, args.timeout, int(args.memory_gb * 1024**2))
            err.seek(0)
            stderr = err.read()
        row = json.loads(Path(path).read_text()) if Path(path).is_file() else {"model": name}
    row.update(seconds=round(time.perf_counter() - t0, 1), peak_mb=round(peak_kib / 1024))
    over = killed == "memory" or peak_kib > args.memory_gb * 1024**2
    why = (f"timed out after {args.timeout:.0f} s" if killed == "timeout" else f"over {args.memory_gb:g} GB of memory" if over
           else None)
    if why and row.get("step") == "onnx":  # pruned and reloaded: only the export was cut short
        row["onnx"] = f"not finished: {why}"
    elif why:
        row["error"] = f"{why} (in step: {row.get('step', 'start')})"
    elif row.get("step") != "done" and "error" not in row:
        row["error"] = f"the process died in step {row.get('step', 'start')}: {stderr.strip()[-300:]}"
    row["status"] = "ok" if row.get("reload") == "identical" and "error" not in row else (
        "reload differs" if row.get("reload") == "differs" else f"error: {row.get('error', '?')}")
    return row


def combine(files: list[str]) -> list[dict]:
    """Rows of saved runs, in order; a later file's row replaces an earlier one for the same model and size."""
    rows: dict[tuple, dict] = {}
    for file in files:
        for r in json.loads(Path(file).read_text()):
            rows[(r["model"], r.get("size"))] = r
    return list(rows.values())


def _line(r: dict) -> str:
    ratio = f"{r['mac_ratio']:.2f}" if "mac_ratio" in r else "-"
    gmacs = f"{r['macs_before'] / 1e9:.2f}" if "macs_before" in r else "-"
    onnx = "-" if "onnx" not in r else "ok" if r["onnx"] == "ok" else "-" if r["onnx"].startswith("not finished") else "FAIL"
    return (f"{r['model']:38}{r.get('task', '-')[:5]:>6}{r.get('size', '-'):>5}{r.get('groups', '-'):>7}{gmacs:>9}{ratio:>7}"
            f"{onnx:>6}{r['seconds']:>8.1f}{r['peak_mb']:>7}  {r['status'][:110]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64, help="classifiers' input size (default 64)")
    parser.add_argument("--seg-size", type=int, default=None, help="segmenters' input size (default: their own, 520)")
    parser.add_argument("--batch", type=int, default=4, help="images per scoring batch (halved for detectors, segmenters)")
    parser.add_argument("--only", nargs="*", default=None, help="keep names containing any PATTERN")
    parser.add_argument("--skip", nargs="*", default=["vit", "swin", "maxvit"], help="leave out names with these prefixes")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--memory-gb", type=float, default=4.0)
    parser.add_argument("--out", default=None, help="write the rows as JSON (rewritten after every model)")
    parser.add_argument("--show", nargs="+", default=None, metavar="FILE.json",
                        help="print saved runs as one table instead of running (later files' rows replace earlier ones "
                             "for the same model and size); with --out, write them combined")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--row", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.size, args.seg_size, args.batch, args.row)
    print(f"{'model':38}{'task':>6}{'size':>5}{'groups':>7}{'GMACs':>9}{'after':>7}{'onnx':>6}{'seconds':>8}{'peakMB':>7}  status",
          flush=True)
    if args.show:
        rows = combine(args.show)
        print(*map(_line, rows), sep="\n")
        if args.out:
            Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
        return summarise(rows)
    rows = []
    for name in sweep_names(args.only, args.skip):
        rows.append(run_one(name, args))
        print(_line(rows[-1]), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    summarise(rows)


def summarise(rows: list[dict]) -> None:
    parts: dict[tuple, list[dict]] = {}
    for r in rows:  # segmenters by size: they may have been run at their own size and smaller
        task = r.get("task", "classification")
        source = "timm" if r["model"].startswith("timm:") else "torchvision"
        parts.setdefault((source, task, r.get("size") if task == "segmentation" else None), []).append(r)
    for (source, task, size), part in parts.items():
        ok = sum(r["status"] == "ok" for r in part)
        onnx = sum(r.get("onnx") == "ok" for r in part)
        at = f" at {size}x{size}" if size else ""
        print(f"{source} {task}{at}: {ok} of {len(part)} pruned, ran and reloaded to identical outputs; {onnx} exported to ONNX")


if __name__ == "__main__":
    main()
