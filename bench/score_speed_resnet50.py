"""CHIP scoring of ResNet-50 at 224 x 224: the score step, the bare forward passes, the official loop
on the same maps, and peak memory, on one device (the GPU target of our scoring work).

    python bench/score_speed_resnet50.py [--device cuda] [--images 640] [--batch-size 64]
                                         [--official-images 1] [--official-channels 32]
                                         [--placements auto,cpu,cusolver] [--threads 1,2,all]
                                         [--exact-below 600] [--shared ../shared] [--out FILE]

ResNet-50 with random weights (sizes and speed only: no pretrained weights ship), all prunable
groups; the calibration images are ../shared CIFAR-10 resized to 224 when present, else the
bundled sample. Measured in one run:
- the bare forward passes over the calibration loader, and chipprune's whole score step;
- per map shape, the official per-channel loop (bench/score_speed.py's re-implementation, run on
  the same device) on --official-channels channels of --official-images images of the first
  batch's maps, and chipprune's CI on that batch; both extrapolated to all channels and --images;
- exactness against the float64 definition on 2 images of one map of each shape (with fewer
  channels than 600, where the literal definition is affordable);
- peak memory: torch.cuda.max_memory_allocated on CUDA, the process's maximum RSS on CPU;
- where the decompositions run (scoring/placement.py): on a GPU, the probe's time per matrix of
  every placement for every map size, and the whole score step with the probe's choices and with
  each of --placements forced (the GPU libraries on one batch, scaled up and marked);
  on a CPU, the score step at each of --threads.
On a CPU, `--images 16 --batch-size 8 --official-channels 2` checks that the script runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch

import chipprune
from chipprune import Calibration, score
from chipprune.scoring import placement
from chipprune.scoring.independence import channel_independence, channel_independence_reference
from chipprune.surgery import prunable_groups
from score_speed import official_ci  # bench/ is on the path when this script runs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _first_batch_maps(model, groups, loader, device) -> list[torch.Tensor]:
    """The first batch's maps as scoring sees them (inputs of the consuming layers); a tensor fed to
    two layers (a stage input and its downsample) is one map, as in scoring."""
    originals: list[torch.Tensor] = []
    maps: list[torch.Tensor] = []

    def grab(_module, args) -> None:
        if not any(args[0] is o for o in originals):
            originals.append(args[0])
            maps.append(args[0].detach().clone())

    modules = dict(model.named_modules())
    keys = sorted({s.module_name for g in groups for s in g.sources})
    hooks = [modules[k].register_forward_pre_hook(grab) for k in keys]
    with torch.inference_mode():
        model(next(iter(loader))[0].to(device))
    for h in hooks:
        h.remove()
    return [m for m in maps if m.dim() == 4]


def _decomposition(shape: tuple[int, ...]) -> tuple[str, tuple[int, int]]:
    c, m = shape[0], shape[1] * shape[2]
    return ("eigh", (c, c)) if c <= m else ("svd", (c, m))


def probe_table(maps: list[torch.Tensor], device: torch.device) -> tuple[float, dict]:
    """Probe every map size now (as the first score step would), timed; the probe's table."""
    _sync(device)
    t0 = time.perf_counter()
    for m in maps:
        placement._placement(*_decomposition(tuple(m.shape[1:])), device)
    _sync(device)
    return time.perf_counter() - t0, placement.placement_table(device)["choices"]


def timed_score(model, spec, groups, data, images: int, batch: int, device) -> float:
    calib = Calibration(data=data, images=images, batch_size=batch)
    _sync(device)
    t0 = time.perf_counter()
    score(model, spec, calib, groups=groups, device=device, progress=False)
    _sync(device)
    return time.perf_counter() - t0


def score_rows(args, model, spec, groups, data, device) -> list[dict]:
    """The score step per placement (GPU) or per thread count (CPU)."""
    rows = []
    if device.type == "cuda":
        for where in args.placements.split(","):
            if where == "magma" and not torch.cuda.has_magma:
                rows.append({"what": "placement magma", "note": "this PyTorch has no MAGMA"})
                continue
            images = args.images if where == "cpu" else min(args.images, args.batch_size)  # the GPU libraries: one batch
            with placement.decompositions_on(where):
                sec = timed_score(model, spec, groups, data, images, args.batch_size, device)
            rows.append({"what": f"placement {where}", "images": images, "seconds": sec, "seconds_for_all": sec * args.images / images})
            print(f"score step, decompositions on {where:9} {images:5} images {sec:8.1f} s  -> {rows[-1]['seconds_for_all']:8.1f} s "
                  f"for {args.images}{'' if images == args.images else ' (scaled)'}", flush=True)
        return rows
    everything = torch.get_num_threads()
    for threads in args.threads.split(","):
        n = everything if threads == "all" else int(threads)
        torch.set_num_threads(n)
        sec = timed_score(model, spec, groups, data, args.images, args.batch_size, device)
        rows.append({"what": f"{n} threads", "images": args.images, "seconds": sec, "seconds_for_all": sec})
        print(f"score step on {n} CPU threads: {sec:.1f} s", flush=True)
    torch.set_num_threads(everything)
    return rows


def shape_rows(args, maps, device) -> dict:
    """Per map shape: the official loop (extrapolated), chipprune's CI per image, exactness."""
    by_shape: dict[tuple[int, ...], dict[str, float]] = {}
    for m in maps:
        row = by_shape.setdefault(tuple(m.shape[1:]), {"maps": 0, "official": 0.0, "ours": 0.0, "error": float("nan")})
        _sync(device)
        t0 = time.perf_counter()
        channels = min(args.official_channels, m.shape[1])
        official_ci(m, args.official_images, channels)
        _sync(device)
        row["official"] += (time.perf_counter() - t0) / (args.official_images * channels) * m.shape[1] * args.images
        t0 = time.perf_counter()
        channel_independence(m)
        _sync(device)
        row["ours"] += (time.perf_counter() - t0) / m.shape[0] * args.images
        row["maps"] += 1
        if row["maps"] == 1 and m.shape[1] < args.exact_below:
            ref = channel_independence_reference(m[:1].cpu())
            row["error"] = float((channel_independence(m[:1]).cpu() - ref).abs().max() / ref.abs().max())
    return by_shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--official-images", type=int, default=1)
    parser.add_argument("--official-channels", type=int, default=32, help="channels per map the official loop is timed on")
    parser.add_argument("--placements", default="cpu,cusolver,magma",
                        help="GPU: the forced placements whose score step is timed besides auto")
    parser.add_argument("--threads", default="1,2,all", help="CPU: the thread counts whose score step is timed")
    parser.add_argument("--exact-below", type=int, default=600, help="check exactness on maps with fewer channels than this")
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    data = args.shared / "data" / "cifar10"
    data = data if data.is_dir() else "bundled"

    model, spec = chipprune.load_model("resnet50", "none")
    model = model.eval().to(device)
    _, groups, _ = prunable_groups(model, spec)
    loader = Calibration(data=data, images=args.images, batch_size=args.batch_size).loader(spec)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()}, {torch.get_num_threads()} threads"
    print(f"ResNet-50 at {spec.image_size}x{spec.image_size}, {len(groups)} groups, {args.images} images "
          f"(batch {args.batch_size}) from {data}; {name}; torch {torch.__version__}", flush=True)

    def forward() -> None:
        with torch.inference_mode():
            for x, _ in loader:
                model(x.to(device))
        _sync(device)

    forward()  # warm-up: kernels, allocator, data cache
    t0 = time.perf_counter()
    forward()
    forward_s = time.perf_counter() - t0
    maps = _first_batch_maps(model, groups, loader, device)
    probe_s, probes = probe_table(maps, device) if device.type == "cuda" else (0.0, {})
    if probes:
        print(f"\nprobe of every map size: {probe_s:.1f} s; time per matrix (ms), fastest chosen")
        for key, entry in sorted(probes.items()):
            times = "  ".join(f"{w} {1e3 * t:8.3f}" for w, t in sorted(entry["seconds"].items()))
            print(f"  {key:14} {times}   -> {entry['placement']}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    score_s = timed_score(model, spec, groups, data, args.images, args.batch_size, device)
    peak_mib = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
    # Printed now: a time limit that stops the rows below must not take the headline figure with it.
    print(f"\nscore step, {args.images} images, probe's choices: {score_s:.1f} s (bare forward passes {forward_s:.1f} s)", flush=True)
    by_shape = shape_rows(args, maps, device)
    placements = score_rows(args, model, spec, groups, data, device)

    official = sum(r["official"] for r in by_shape.values())
    ours = sum(r["ours"] for r in by_shape.values())
    print(f"\n{'step':46}{'seconds':>10}{'x forward':>11}")
    for label, sec in (("bare forward passes", forward_s), ("chipprune score step (forward + CI)", score_s),
                       ("chipprune CI alone, per-image rate", ours),
                       ("official loop, extrapolated", official)):
        print(f"{label:46}{sec:>10.1f}{sec / forward_s:>11.1f}")
    print(f"\n{'map shape (C, H, W)':22}{'maps':>6}{'official s':>12}{'ours s':>9}{'ratio':>8}{'max rel error':>15}")
    for shape, r in sorted(by_shape.items()):
        print(f"{str(shape):22}{r['maps']:>6}{r['official']:>12.1f}{r['ours']:>9.2f}{r['official'] / r['ours']:>7.0f}x{r['error']:>15.1e}")
    print(f"\nofficial loop / chipprune score step: {official / score_s:.0f}x; / CI alone: {official / ours:.0f}x")
    print(f"peak memory of the score step: {peak_mib:.0f} MiB ({'GPU, allocated' if device.type == 'cuda' else 'process RSS'})")
    if args.out:
        args.out.write_text(json.dumps({
            "device": name, "images": args.images, "batch_size": args.batch_size, "forward_s": forward_s,
            "score_s": score_s, "official_extrapolated_s": official, "ci_only_s": ours, "peak_mib": peak_mib,
            "probe_s": probe_s, "probes": probes, "placements": placements,
            "by_shape": {str(k): v for k, v in sorted(by_shape.items())},
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
