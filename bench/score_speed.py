"""How fast and how exact is CHIP scoring? Forward passes vs the whole score step vs the official loop.

    python bench/score_speed.py [--shared ../shared] [--official-images 2] [--repeats 3]
                                [--resnet50-images 64] [--out FILE]

ResNet-56 (bundled weights) and 640 calibration images (5 x 128, ../shared CIFAR-10 when present,
else the bundled sample), all 30 groups / 55 feature maps, as `chipprune score` does.

1. Speed, measured in one run (median of --repeats, interleaved):
   - bare forward passes over the calibration loader (data loading included);
   - chipprune's whole score step (the same loop with hooks and CI);
   - the official per-channel loop (re-implemented below from the official CHIP code: per image
     and channel, clone the batch, zero the row, nuclear norm of the float32 map rounded to 4
     decimals), timed on --official-images images of every map and extrapolated to 640 images.
     The official code also writes every map to disk first; that time is not counted.
   Also per map shape: the official loop and chipprune's CI alone on the same maps, and their ratio;
   and the float64 eigen-decomposition of each image's Gram matrix alone (split over the threads as
   chipprune splits it), the step exact scoring cannot skip: forward + eigensolver bounds the ratio.
2. Exactness against a literal float64 evaluation of the definition (one SVD per image and
   channel): random maps of several shapes, and 4 real images of every one of the 55 maps.
3. Peak memory (maximum resident set size of a fresh process): the forward passes alone and the
   whole score step, for ResNet-56 (640 images, batch 128) and for ResNet-50 at 224 x 224 (random
   weights, --resnet50-images at batch 32, and twice as many: streaming keeps the peak flat).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import chipprune
from chipprune import Calibration, score
from chipprune.scoring.independence import channel_independence, channel_independence_reference
from chipprune.scoring.placement import map_on_cpu_threads
from chipprune.surgery import prunable_groups


# --- the official loop, as in the CHIP repository's calculate_ci.py ---------------------------------
def _reduced_1_row_norm(batch: torch.Tensor, row_index: int, data_index: int) -> float:
    batch[data_index, row_index, :] = 0
    return torch.norm(batch[data_index, :, :], p="nuc").item()


def official_ci(maps: torch.Tensor, images: int, channels: int | None = None) -> torch.Tensor:
    """CI of the first ``images`` images of one batch of maps (N, C, H, W), the official way, on the
    maps' own device. ``channels``: only the first so many (every channel costs the same: a clone of
    the batch and one nuclear norm), for timing large layers."""
    conv_output = torch.round(maps.float(), decimals=4)  # np.round(maps, 4) in the official code
    conv_reshape = conv_output.reshape(conv_output.shape[0], conv_output.shape[1], -1)
    channels = conv_reshape.shape[1] if channels is None else channels
    r1_norm = torch.zeros([images, channels])
    for i in range(images):
        for j in range(channels):
            r1_norm[i, j] = _reduced_1_row_norm(conv_reshape.clone(), j, data_index=i)
    ci = torch.zeros_like(r1_norm)
    for i in range(images):
        original_norm = torch.norm(conv_reshape[i, :, :].clone(), p="nuc").item()
        ci[i] = original_norm - r1_norm[i]
    return ci


def eigensolver_alone(maps: torch.Tensor) -> float:
    """Seconds for the float64 eigen-decomposition of every image's Gram matrix, the one step exact CI
    cannot skip, with the images split over the CPU threads as chipprune splits them (Gram not timed)."""
    a = maps.reshape(maps.shape[0], maps.shape[1], -1).double()
    grams = [part @ part.mT for part in a.chunk(torch.get_num_threads())] if a.shape[1] <= a.shape[2] else []
    t0 = time.perf_counter()
    if grams:
        map_on_cpu_threads(torch.linalg.eigh, grams, len(grams))
    return time.perf_counter() - t0


def _errors(got: torch.Tensor, ref: torch.Tensor) -> tuple[float, bool]:
    rel = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-300))
    # Rankings must agree except among exactly tied reference values (dead channels score 0).
    same = True
    order = torch.argsort(ref, stable=True)
    for a, b in zip(order[:-1], order[1:]):
        if ref[a] != ref[b] and got[a] >= got[b] and (ref[b] - ref[a]) > 1e-7 * ref.abs().max():
            same = False
    return rel, same


def _peak_memory_child(model_name: str, data: str, images: int, batch: int, mode: str) -> None:
    """Run in a fresh process: forward passes or the score step; print peak RSS (MiB) and seconds."""
    weights = "bundled" if model_name.startswith("cifar_") else "none"
    model, spec = chipprune.load_model(model_name, weights)
    _, groups, _ = prunable_groups(model, spec)
    calib = Calibration(data=data, images=images, batch_size=batch)
    t0 = time.perf_counter()
    if mode == "forward":
        with torch.inference_mode():
            for x, _ in calib.loader(spec):
                model(x)
    else:
        score(model, spec, calib, groups=groups, progress=False)
    seconds = time.perf_counter() - t0
    print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "seconds": seconds}))


def _peak_memory(model_name: str, data: str, images: int, batch: int, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--child", model_name, str(data), str(images), str(batch), mode]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        name, data, images, batch, mode = sys.argv[2:7]
        _peak_memory_child(name, data, int(images), int(batch), mode)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument("--official-images", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--resnet50-images", type=int, default=64, help="0 skips the ResNet-50 memory runs")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    data = args.shared / "data" / "cifar10"
    data = data if data.is_dir() else "bundled"
    model, spec = chipprune.load_model("cifar_resnet56", "bundled")
    _, groups, _ = prunable_groups(model, spec)
    calib = Calibration(data=data, images=640, batch_size=128)
    loader = calib.loader(spec)
    n_maps = len({(s.module_name, s.kind) for g in groups for s in g.sources})
    print(f"ResNet-56, {len(groups)} groups, {n_maps} feature maps, 640 images from {data}")

    def forward() -> None:
        torch.manual_seed(0)
        with torch.inference_mode():
            for x, _ in loader:
                model(x)

    def scoring() -> None:
        score(model, spec, calib, groups=groups, progress=False)

    forward()  # warm-up
    t_fwd, t_score = [], []
    for _ in range(args.repeats):
        for fn, acc in ((forward, t_fwd), (scoring, t_score)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    fwd, sco = statistics.median(t_fwd), statistics.median(t_score)

    # Capture the first batch's maps exactly as scoring sees them (inputs of the consuming layers).
    maps: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    keys = sorted({s.module_name for g in groups for s in g.sources})
    hooks = [modules[k].register_forward_pre_hook(lambda _m, a, k=k: maps.__setitem__(k, a[0].detach().clone())) for k in keys]
    torch.manual_seed(0)
    with torch.inference_mode():
        model(next(iter(loader))[0])
    for h in hooks:
        h.remove()
    spatial = {k: v for k, v in maps.items() if v.dim() == 4}

    # Official loop and ours on every map, per image, extrapolated to 640 images; by map shape.
    by_shape: dict[tuple[int, ...], dict[str, float]] = {}
    for name, m in spatial.items():
        row = by_shape.setdefault(
            tuple(m.shape[1:]), {"maps": 0, "official": 0.0, "ours": 0.0, "eigensolver": 0.0, "error": 0.0}
        )
        t0 = time.perf_counter()
        official_ci(m, args.official_images)
        row["official"] += (time.perf_counter() - t0) / args.official_images * 640
        t0 = time.perf_counter()
        channel_independence(m)
        row["ours"] += (time.perf_counter() - t0) / m.shape[0] * 640
        row["eigensolver"] += eigensolver_alone(m) / m.shape[0] * 640
        row["maps"] += 1
    official_640 = sum(r["official"] for r in by_shape.values())
    ours_ci_640 = sum(r["ours"] for r in by_shape.values())
    eigensolver_640 = sum(r["eigensolver"] for r in by_shape.values())

    # Exactness.
    worst_random, worst_real, rankings_ok = 0.0, 0.0, True
    torch.manual_seed(0)
    for shape in [(4, 16, 32, 32), (4, 32, 16, 16), (4, 64, 8, 8), (4, 256, 7, 7), (4, 40, 3, 3)]:
        x = torch.relu(torch.randn(shape))
        rel, same = _errors(channel_independence(x), channel_independence_reference(x))
        worst_random, rankings_ok = max(worst_random, rel), rankings_ok and same
    for name, m in spatial.items():
        rel, same = _errors(channel_independence(m[:4]), channel_independence_reference(m[:4]))
        worst_real, rankings_ok = max(worst_real, rel), rankings_ok and same
        by_shape[tuple(m.shape[1:])]["error"] = max(by_shape[tuple(m.shape[1:])]["error"], rel)

    # Peak memory, each in a fresh process.
    memory_runs = [("cifar_resnet56", 640, 128)]
    if args.resnet50_images:
        memory_runs += [("resnet50", args.resnet50_images, 32), ("resnet50", 2 * args.resnet50_images, 32)]
    memory = []
    for name, images, batch in memory_runs:
        fwd_run, score_run = (_peak_memory(name, str(data), images, batch, mode) for mode in ("forward", "score"))
        memory.append({"model": name, "images": images, "batch": batch, "forward": fwd_run, "score": score_run})

    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    rows = [
        ("bare forward passes (640 images)", fwd, 1.0),
        ("chipprune score step (forward + CI, all maps)", sco, sco / fwd),
        ("  of which CI alone (estimated: score - forward)", sco - fwd, (sco - fwd) / fwd),
        ("chipprune CI on the same maps, per-image rate x 640", ours_ci_640, ours_ci_640 / fwd),
        (f"official per-channel loop, {args.official_images} images/map x 640", official_640, official_640 / fwd),
        ("float64 eigensolver alone on the same maps (x 640)", eigensolver_640, eigensolver_640 / fwd),
    ]
    print(f"\n{'step':56}{'seconds':>10}{'x forward':>11}")
    for label, sec, ratio in rows:
        print(f"{label:56}{sec:>10.2f}{ratio:>11.2f}")
    print(
        f"\n{'map shape (C, H, W)':22}{'maps':>6}{'official s':>12}{'ours s':>9}{'ratio':>8}"
        f"{'eigensolver s':>15}{'max rel error':>15}"
    )
    for shape, r in sorted(by_shape.items()):
        print(
            f"{str(shape):22}{r['maps']:>6}{r['official']:>12.1f}{r['ours']:>9.2f}"
            f"{r['official'] / r['ours']:>7.0f}x{r['eigensolver']:>15.2f}{r['error']:>15.1e}"
        )
    print(
        f"{'all':22}{sum(r['maps'] for r in by_shape.values()):>6}{official_640:>12.1f}{ours_ci_640:>9.2f}"
        f"{official_640 / ours_ci_640:>7.0f}x{eigensolver_640:>15.2f}"
    )
    print(f"\nofficial loop / chipprune score step: {official_640 / sco:.0f}x")
    print(f"official loop / chipprune CI only:     {official_640 / ours_ci_640:.0f}x")
    floor = fwd + eigensolver_640
    print(
        f"official loop / (forward + eigensolver alone): {official_640 / floor:.0f}x, the most an exact score step"
        " built on one float64 eigen-decomposition per image can reach here"
    )
    print(f"max relative error vs float64 definition: random maps {worst_random:.1e}, real maps (55 x 4 images) {worst_real:.1e}")
    print(f"rankings identical except exact ties: {rankings_ok}")
    print(f"\n{'peak memory (fresh process)':34}{'images':>8}{'batch':>7}{'forward MiB':>13}{'score MiB':>11}{'score s':>9}")
    for m in memory:
        print(
            f"{m['model']:34}{m['images']:>8}{m['batch']:>7}{m['forward']['peak_mib']:>13.0f}"
            f"{m['score']['peak_mib']:>11.0f}{m['score']['seconds']:>9.1f}"
        )
    print(f"machine: {machine}")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "machine": machine,
                    "data": str(data),
                    "forward_s": fwd,
                    "score_s": sco,
                    "score_over_forward": sco / fwd,
                    "official_extrapolated_s": official_640,
                    "official_over_score": official_640 / sco,
                    "ci_only_s": ours_ci_640,
                    "eigensolver_alone_s": eigensolver_640,
                    "official_over_forward_plus_eigensolver": official_640 / floor,
                    "by_shape": {str(k): v for k, v in sorted(by_shape.items())},
                    "peak_memory": memory,
                    "max_rel_error_random": worst_random,
                    "max_rel_error_real": worst_real,
                    "rankings_identical": rankings_ok,
                    "timings_forward": t_fwd,
                    "timings_score": t_score,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
