"""Which torchvision classifiers can chipprune prune? Every one, pruned at 30% with CHIP on random data.

    python bench/torchvision_sweep.py [--size 64] [--skip vit swin maxvit] [--out FILE]

For each model: trace the coupled channel groups, score them with CHIP on 2 batches of 4 random
images, prune every group at ratio 0.3, run a forward pass, save and reload (outputs must be equal).
Random weights and 64x64 inputs keep it fast on a CPU; sizes are counted at that input size.
Transformers (vit, swin, maxvit) are skipped by default: chipprune targets convolutional networks.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
import torchvision

from chipprune import ChipPruneError, get_model_spec, load_pruned, save_pruned
from chipprune.evaluation.metrics import count_macs
from chipprune.pipeline import prune_to_plan
from chipprune.planning import PlanRequest, make_plan
from chipprune.surgery import prunable_groups


def try_model(name: str, size: int) -> dict:
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = get_model_spec(name).build().eval()
    spec = get_model_spec(name, image_size=299 if name == "inception_v3" else size)
    size = spec.image_size
    try:
        _, groups, _ = prunable_groups(model, spec)
        plan = make_plan(model, spec, groups, PlanRequest(sparsity="0.3"))
        macs = count_macs(model, size)
        batches = [(torch.randn(4, 3, size, size), None) for _ in range(2)]
        result = prune_to_plan(model, spec, plan, batches=batches, progress=False)
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            out = result.model(x)
        with tempfile.TemporaryDirectory() as tmp:
            save_pruned(result, tmp)
            with torch.no_grad():
                same = torch.equal(load_pruned(tmp)(x), out)
        status = "ok" if same else "reload differs"
        return {"model": name, "status": status, "groups": len(groups), "mac_ratio": count_macs(result.model, size) / macs,
                "seconds": time.perf_counter() - t0}
    except ChipPruneError as exc:
        return {"model": name, "status": f"error: {str(exc)[:90]}", "seconds": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--skip", nargs="*", default=["vit", "swin", "maxvit"])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    names = [n for n in sorted(torchvision.models.list_models(module=torchvision.models)) if not n.startswith(tuple(args.skip))]
    rows = []
    print(f"{'model':24}{'groups':>8}{'MACs after/before':>19}{'seconds':>9}  status")
    for name in names:
        r = try_model(name, args.size)
        rows.append(r)
        ratio = f"{r['mac_ratio']:.2f}" if "mac_ratio" in r else "-"
        print(f"{name:24}{r.get('groups', '-'):>8}{ratio:>19}{r['seconds']:>9.1f}  {r['status']}", flush=True)
    ok = sum(r["status"] == "ok" for r in rows)
    print(f"\n{ok} of {len(rows)} models pruned, ran and reloaded to identical outputs")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
