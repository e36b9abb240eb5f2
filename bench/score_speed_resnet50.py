"""CHIP scoring of ResNet-50 at 224 x 224: the score step, the bare forward passes, the official loop
on the same maps, and peak memory, on one device (the GPU target of our scoring work).

    python bench/score_speed_resnet50.py [--device cuda] [--images 640] [--batch-size 64]
                                         [--official-images 1] [--official-channels 32]
                                         [--shared ../shared] [--out FILE]

ResNet-50 with random weights (sizes and speed only: no pretrained weights ship), all prunable
groups; the calibration images are ../shared CIFAR-10 resized to 224 when present, else the
bundled sample. Measured in one run:
- the bare forward passes over the calibration loader, and chipprune's whole score step;
- per map shape, the official per-channel loop (bench/score_speed.py's re-implementation, run on
  the same device) on --official-channels channels of --official-images images of the first
  batch's maps, and chipprune's CI on that batch; both extrapolated to all channels and --images;
- exactness against the float64 definition on 2 images of one map of each shape (with fewer
  channels than 600, where the literal definition is affordable);
- peak memory: torch.cuda.max_memory_allocated on CUDA, the process's maximum RSS on CPU.
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
from chipprune.scoring.independence import channel_independence, channel_independence_reference
from chipprune.surgery import prunable_groups
from score_speed import official_ci  # bench/ is on the path when this script runs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--official-images", type=int, default=1)
    parser.add_argument("--official-channels", type=int, default=32, help="channels per map the official loop is timed on")
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    data = args.shared / "data" / "cifar10"
    data = data if data.is_dir() else "bundled"

    model, spec = chipprune.load_model("resnet50", "none")
    model = model.eval().to(device)
    _, groups, _ = prunable_groups(model, spec)
    calib = Calibration(data=data, images=args.images, batch_size=args.batch_size)
    loader = calib.loader(spec)
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
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    score(model, spec, calib, groups=groups, device=device, progress=True)
    _sync(device)
    score_s = time.perf_counter() - t0
    peak_mib = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20

    # The first batch's maps, as scoring sees them (inputs of the consuming layers).
    # A tensor fed to two layers (a stage input and its downsample) is one map, as in scoring.
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
    originals.clear()

    by_shape: dict[tuple[int, ...], dict[str, float]] = {}
    for m in maps:
        if m.dim() != 4:
            continue
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
        if row["maps"] == 1 and m.shape[1] < 600:
            ref = channel_independence_reference(m[:2].cpu())
            row["error"] = float((channel_independence(m[:2]).cpu() - ref).abs().max() / ref.abs().max())

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
            "by_shape": {str(k): v for k, v in sorted(by_shape.items())},
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
