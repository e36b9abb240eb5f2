"""Command line: each subcommand parses its options and calls the library (the work is done there)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from ._version import __version__
from .cli_types import OneLineParser, integer, latency_target, number
from .data.calibration import Calibration
from .data.sources import BUNDLED, open_data
from .errors import ChipPruneError
from .evaluation.latency import compare_latency, model_runner, onnx_runner
from .evaluation.metrics import count_macs, count_params, evaluate
from .io.atomic import save_tensors, write_json
from .io.folder import check_writable, claim_folder
from .io.onnx import export_onnx, onnx_metadata
from .io.pruned import open_pruned, read_report, save_pruned
from .io.weights import weights_reference
from .models.registry import get_model_spec, list_models, load_model
from .models.spec import ModelSpec
from .pilot import PilotSettings, run_pilot, sensitivity
from .pipeline import plan, prune, score
from .planning.request import PlanRequest
from .reporting.console import plan_summary, prune_summary, score_summary, speedup_text
from .reporting.markdown import pilot_markdown
from .results import FinetuneReport
from .runtime import barrier, resolve_device, setup_distributed, teardown_distributed
from .scoring.criteria import CRITERIA
from .scoring.placement import PLACEMENTS, decompositions_on
from .training.finetune import finetune, train_from_scratch
from .training.loop import TrainConfig
from .training.recipes import RECIPES, recipe_with

DEFAULT_MODEL = "cifar_resnet56"


_DEVICE_HELP = "auto (default), cpu, cuda, cuda:1, ..."
_FOLDER_DATA_HELP = "data root (default: the data the folder was made with, as its report.json records; else the bundled sample)"
_TRUST_HELP = "the folder's model, needed only when it is your own package.module:function (loading runs that code)"


def _folder_data(folder: str | Path, data: str | None) -> str:
    """``data`` when given, else the data ``folder``'s run recorded (if it is still there), else the bundled sample."""
    if data is not None:
        return data
    recorded = read_report(folder).get("data_path")
    if recorded and (recorded == BUNDLED or Path(recorded).exists()):
        return recorded
    if recorded:
        warnings.warn(f"the data {folder} was made with ({recorded}) is not there any more; using the bundled sample (--data names other data)")
    return BUNDLED


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"registry name (default {DEFAULT_MODEL}; see 'chipprune models')")
    p.add_argument(
        "--weights",
        default="bundled",
        help="weights file (.safetensors, or a torch state dict read with weights_only), "
        "'bundled' for the shipped ones (default), or 'none' for random initialisation",
    )
    p.add_argument("--num-classes", type=integer(1), default=None, help="classifier outputs, if not the model's default")
    p.add_argument("--image-size", type=integer(16), default=None, help="input size to trace and count at (default: the model's)")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        default=BUNDLED,
        help="'bundled' (default: shipped CIFAR-10 sample), a CIFAR-10 root (cifar-10-batches-py), "
        "or an ImageFolder root with train/ and test/ (or val/)",
    )
    p.add_argument("--calib-images", type=integer(1), default=640, help="calibration images (default 640 = 5 x 128)")
    p.add_argument(
        "--require-calib-images", action="store_true",
        help="stop if the data has fewer training images than --calib-images (default: warn and use them all)",
    )
    p.add_argument("--batch-size", type=integer(1), default=128, help="calibration batch size (default 128)")
    p.add_argument("--seed", type=integer(0), default=0, help="seed for image choice and augmentation")
    p.add_argument(
        "--criterion", default="chip", choices=list(CRITERIA),
        help="; ".join(f"{c.name}: {c.description}" for c in CRITERIA.values()) + " (default chip)",
    )
    p.add_argument("--device", default="auto", help=_DEVICE_HELP)
    p.add_argument(
        "--decompose-on", default="auto", choices=PLACEMENTS,
        help="where CHIP's eigen-decompositions run when scoring on a GPU: auto (default: the fastest per size, "
        "measured once per machine and cached), cpu (all cores), cusolver or magma (on the GPU)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _calibration(args: argparse.Namespace) -> Calibration:
    if args.calib_images < 1 or args.batch_size < 1:
        raise ChipPruneError("--calib-images and --batch-size must be positive")
    return Calibration(args.data, args.calib_images, args.batch_size, args.seed, require_all=args.require_calib_images)


def cmd_models(args: argparse.Namespace) -> None:
    names = list_models()
    print(f"{'name':38}{'task':15}{'input':>6}  {'prunes':7} notes")
    unsupported = 0
    for name in names:
        spec = get_model_spec(name)
        note = spec.unsupported or spec.notes + (f"; paper sparsity {spec.paper_sparsity}" if spec.paper_sparsity else "")
        unsupported += spec.unsupported is not None
        print(f"{name:38}{spec.task:15}{spec.image_size:>6}  {'no' if spec.unsupported else 'yes':7} {note}")
    print(f"\n{len(names)} models, {len(names) - unsupported} of them prunable (docs/MODELS.md)")


def cmd_score(args: argparse.Namespace) -> None:
    # Under torchrun each process scores its share of the images; process 0 writes the result.
    if Path(args.out).suffix != ".safetensors":  # its .json twin is written beside it, under the same stem
        raise ChipPruneError(f"--out {args.out}: the scores file must end in .safetensors (a .json twin is written beside it)")
    check_writable(args.out, folder=False)
    dist_info = setup_distributed(resolve_device(args.device))
    device = dist_info.device
    torch.manual_seed(args.seed)  # the same random initialisation everywhere for --weights none
    model, spec = load_model(args.model, args.weights, args.num_classes, args.image_size)
    model.to(device)
    t0 = time.perf_counter()
    scores = score(model, spec, _calibration(args), criterion=args.criterion, device=device, progress=not args.quiet)
    seconds = time.perf_counter() - t0
    if not dist_info.is_main:
        return
    out = Path(args.out)
    images = next(iter(scores.values())).images
    save_tensors({k: v.scores for k, v in scores.items()}, out, metadata={"model": spec.name, "criterion": args.criterion})
    write_json(
        out.with_suffix(".json"),
        {
            "model": spec.name,
            "criterion": args.criterion,
            "images": images,
            "seconds": round(seconds, 3),
            "groups": {
                k: {"maps": v.maps, "split_half_spearman": v.split_half_spearman, "scores": [float(s) for s in v.scores]}
                for k, v in scores.items()
            },
        },
    )
    print(score_summary(scores, images, seconds, str(out)))


def _plan_request(args: argparse.Namespace) -> PlanRequest:
    return PlanRequest(
        sparsity=args.sparsity, target_macs=args.target_macs, target_latency=args.target_latency, round_to=args.round_to,
        ignored=tuple(args.ignore), latency_batch_sizes=tuple(args.latency_batch), latency_table=args.latency_table,
        max_shared_ratio=args.max_shared_ratio, retime=args.retime,
    )


def cmd_prune(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)  # the same random initialisation in every run for --weights none
    model, spec = load_model(args.model, args.weights, args.num_classes, args.image_size)
    model.to(device)
    request = _plan_request(args)
    if args.dry_run:  # a latency budget scores every group to plan; the scores are dropped
        groups, found = plan(model, spec, request, calibration=_calibration(args), criterion=args.criterion, device=device,
                             progress=not args.quiet)
        print(plan_summary(spec.name, groups, found, count_params(model), count_macs(model, spec.example_input()), spec.image_size))
        return
    folder = Path(args.out) if args.out else Path("chipprune-out") / spec.name.replace(":", "_")
    with claim_folder(folder, overwrite=args.overwrite):  # checked and locked before the work, not after
        result = prune(model, spec, request, calibration=_calibration(args), criterion=args.criterion, evaluate_on=not args.no_eval,
                       recalibrate_bn=not args.no_bn_recalibration, device=device, progress=not args.quiet)
        result.record["original_weights"] = weights_reference(args.weights)  # the teacher, if a fine-tune distils
        save_pruned(result, folder, overwrite=args.overwrite)
    print(prune_summary(result.report, result.record, str(folder), args.verbose))


def cmd_eval(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    model, record, spec = open_pruned(args.folder, device, model=args.model)
    params, macs = count_params(model), count_macs(model, spec.example_input())
    print(f"{record['model']} (pruned, {args.folder}): params {params:,}, MACs {macs:,}")
    if not args.no_accuracy and spec.task != "classification":
        print(f"accuracy: not measured (a {spec.task} model: chipprune measures accuracy for classifiers only; "
              "measure it with your own metric on chipprune.load_pruned's model)")
    elif not args.no_accuracy:
        source = open_data(_folder_data(args.folder, args.data))
        acc = evaluate(model, source.test_loader(spec), device, progress=not args.quiet)
        print(f"top-1 {acc['top1']:.2f}%, top-5 {acc['top5']:.2f}% on {acc['images']} test images of {source.description}")
    if args.latency:
        _print_latency(args, model, spec, record, device)


def _print_latency(args: argparse.Namespace, model: torch.nn.Module, spec, record: dict, device: torch.device) -> None:
    """The original (same architecture, random weights: speed does not depend on them) against the
    pruned model, in eager PyTorch and, once exported, in ONNX Runtime."""
    original = spec.build(record.get("num_classes"))
    mac_ratio = count_macs(original, spec.example_input()) / count_macs(model, spec.example_input())
    onnx_file = Path(args.folder) / "model.onnx"
    use_onnx = onnx_file.is_file()
    if use_onnx and onnx_metadata(onnx_file).get("chipprune_weights_sha256") != str(record.get("weights_sha256")):
        print(f"note: {onnx_file} was not exported from this folder's weights (an earlier prune, or an older chipprune); "
              f"it is not timed. Run 'chipprune export {args.folder}' again")
        use_onnx = False
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runtimes = [("pytorch eager", lambda m, b: model_runner(m, spec, b, device), original, model)]
        if use_onnx:  # the deployment path of an exported model: ONNX Runtime, the original exported alike
            export_onnx(original, spec, Path(tmp) / "original.onnx")
            runtimes.append(("onnxruntime", lambda f, b: onnx_runner(f, spec, b, device), Path(tmp) / "original.onnx", onnx_file))
        for runtime, runner, before, after in runtimes:
            for batch in args.batch_sizes:
                c = compare_latency(runner(before, batch), runner(after, batch), batch, device=device, progress=not args.quiet,
                                    desc=f"timing {runtime}, batch {batch}")
                rows.append((runtime, batch, c))
    print(f"\nlatency on {device} ({torch.get_num_threads()} threads), {spec.image_size}x{spec.image_size} images:")
    print(f"{'runtime':14}{'batch':>6}{'original ms':>13}{'pruned ms':>11}{'speed-up':>10}{'95% interval':>15}{'rounds':>8}{'MAC reduction':>15}")
    for runtime, batch, c in rows:
        print(f"{runtime:14}{batch:>6}{c.before_ms:>13.2f}{c.after_ms:>11.2f}{c.speedup:>9.2f}x"
              f"{f'{c.speedup_low:.2f}-{c.speedup_high:.2f}x':>15}{c.rounds:>8}{mac_ratio:>14.2f}x")
    print("(medians of rounds that alternate the two models after warm-up, until the interval is within 5% or 30 s have passed"
          + ("" if use_onnx else f"; run 'chipprune export {args.folder}' to time ONNX Runtime too") + ")")
    for runtime, batch, c in rows:
        if not (c.faster and c.precise):
            print(f"note: {runtime} at batch {batch}: {speedup_text(c)}")


def cmd_export(args: argparse.Namespace) -> None:
    folder = Path(args.folder)
    model, record, spec = open_pruned(folder, model=args.model)
    out = Path(args.out) if args.out else folder / "model.onnx"
    check_writable(out, folder=False)
    diff = export_onnx(model, spec, out, metadata={"chipprune_weights_sha256": str(record.get("weights_sha256"))})
    print(f"wrote {out}; ONNX Runtime matches PyTorch (max abs difference {diff:.2e} on random inputs)")


def _train_config(args: argparse.Namespace, out: Path) -> TrainConfig:
    recipe = recipe_with(
        args.recipe, epochs=args.epochs, batch_size=args.train_batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
        distill_weight=args.distill_weight, distill_temperature=args.distill_temperature,
    )
    return TrainConfig(
        recipe, out, seed=args.seed, val_fraction=args.val_fraction, amp=not args.no_amp, amp_dtype=args.amp_dtype,
        checkpoint_every_steps=args.checkpoint_every, resume=args.resume, progress=not args.quiet,
        limit_train_images=args.limit_train_images, overwrite=args.overwrite, compile=args.compile,
    )


def _print_training(report: FinetuneReport | None, out: Path) -> None:
    if report is None:  # not the main process
        return
    f, epochs = report.finetune, report.finetune.recipe["epochs"]
    before = f"{report.top1_before:.2f}% -> " if report.top1_before is not None else ""
    print(
        f"{report.model}: test top-1 {before}{report.top1_after:.2f}% on {report.test_images} images "
        f"after {epochs} epoch{'s' * (epochs != 1)} (selected epoch {f.selected_epoch}); "
        f"params {report.params_after:,}, MACs {report.macs_after:,}"
    )
    for batch, c in report.latency_ms.items():
        print(f"latency at batch {batch} on {c.device}: {c.before_ms:.2f} -> {c.after_ms:.2f} ms, {speedup_text(c)}")
    print(f"saved: {out}/ (model.safetensors, pruning.json, report.json, report.md, metrics.csv, plots)")


def cmd_finetune(args: argparse.Namespace) -> None:
    out = Path(args.out) if args.out else Path(args.folder) / "finetuned"
    report = finetune(args.folder, _folder_data(args.folder, args.data), _train_config(args, out), resolve_device(args.device),
                      model=args.model, teacher_weights=args.teacher_weights)
    _print_training(report, out)


def cmd_train(args: argparse.Namespace) -> None:
    out = Path(args.out) if args.out else Path("chipprune-out") / f"{args.model.replace(':', '_')}-trained"
    report = train_from_scratch(
        args.model, args.data, _train_config(args, out), resolve_device(args.device), image_size=args.image_size,
        num_classes=args.num_classes, weights=args.weights,
    )
    _print_training(report, out)


def cmd_run(args: argparse.Namespace) -> None:
    get_model_spec(args.model).require_classifier("chipprune run")  # before anything is pruned
    root = Path(args.out) if args.out else Path("chipprune-out") / f"{args.model.replace(':', '_')}-run"
    args.out = str(root / "pruned")
    args.dry_run = False
    # Under torchrun, process 0 prunes alone, before the processes join up; the others wait for it.
    # A resumed run keeps the model it pruned (the checkpoint belongs to those weights).
    if int(os.environ.get("RANK", "0")) == 0 and not (args.resume and (root / "pruned" / "pruning.json").is_file()):
        cmd_prune(args)
    setup_distributed(resolve_device(args.device))
    barrier()
    report = finetune(root / "pruned", args.data, _train_config(args, root / "finetuned"), resolve_device(args.device), model=args.model,
                      teacher_weights=args.teacher_weights)
    _print_training(report, root / "finetuned")


def cmd_pilot(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    model, spec = load_model(args.model, args.weights, args.num_classes, args.image_size)
    out = Path(args.out) if args.out else Path("chipprune-out") / f"{spec.name.replace(':', '_')}-pilot"
    calibration = _calibration(args)
    with claim_folder(out, resumable=True):  # a rerun resumes the folder; two at once would mix it
        _pilot(args, model, spec, out, calibration, device)


def _pilot(args: argparse.Namespace, model: torch.nn.Module, spec: ModelSpec, out: Path, calibration: Calibration,
           device: torch.device) -> None:
    if args.sensitivity:
        result = sensitivity(model, spec, args.data, out, ratios=args.sensitivity_ratios, calibration=calibration,
                             max_drop=args.max_drop, criterion=args.criterion, device=device, progress=not args.quiet)
        print(f"\nsuggested plan ({len(result['suggested_plan'])} groups): {out}/suggested_plan.json "
              f"(use: chipprune prune --sparsity {out}/suggested_plan.json); chart: {out}/sensitivity.png")
        return
    settings = PilotSettings(tuple(args.levels), args.finetune_epochs, args.max_drop, args.confidence, args.round_to,
                             args.throughput_batch, args.criterion)
    report = run_pilot(model, spec, args.data, out, settings, calibration=calibration, device=device, progress=not args.quiet)
    print()
    print(pilot_markdown(report).split("![")[0].strip())
    rec = report.recommended
    print(f"\nrecommendation: {'prune to ' + format(rec.target, '.0%') + ' of the MACs' if rec else 'none of the levels is safe'}"
          f" (max drop {args.max_drop} point(s) at {args.confidence:.0%} confidence); report: {out}/pilot.md, plot: {out}/pilot.png")


def _add_prune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sparsity", default=None,
        help="paper string like '[0.]+[0.15]*2+[0.4]*27', one ratio for every layer like 0.3, "
        "or a .json/.yaml file mapping layer names or glob patterns to ratios",
    )
    p.add_argument("--target-macs", type=number(0, low_open=True), default=None, help="MAC budget: a fraction (0.5) or an absolute count")
    p.add_argument("--round-to", type=integer(1), default=1, help="keep channel counts at multiples of this (e.g. 8)")
    p.add_argument(
        "--target-latency", default=None, type=latency_target, metavar="BUDGET",
        help="latency budget on this device: a fraction of the original (0.5) or milliseconds (12ms); "
        "widths are chosen from a per-layer latency table timed on this machine (cached)",
    )
    p.add_argument("--latency-batch", type=integer(1), nargs="+", default=[1], metavar="N",
                   help="batch size(s) the latency budget is for (default 1; several: their mean fraction)")
    p.add_argument("--latency-table", default=None, metavar="FILE",
                   help="latency table JSON to use and extend (default: this machine's, in ~/.cache/chipprune/latency)")
    p.add_argument("--retime", action="store_true",
                   help="with --target-latency: time again every latency-table entry the search uses (done by itself "
                   "when the machine runs at another speed than when the table was timed)")
    p.add_argument("--max-shared-ratio", type=number(0, 1, low_open=True), default=0.3, metavar="R",
                   help="with --target-latency: the largest fraction of a residual stream's channels to remove (default 0.3)")
    p.add_argument("--ignore", nargs="+", default=[], metavar="LAYER", help="layers whose output channels stay")
    p.add_argument("--dry-run", action="store_true", help="print the plan (channels, params, MACs) and stop")
    p.add_argument("--out", default=None, help="output folder (default chipprune-out/MODEL)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder as a whole (default: refuse)")
    p.add_argument("--no-eval", action="store_true", help="skip test-set evaluation")
    p.add_argument("--no-bn-recalibration", action="store_true", help="keep the BatchNorm statistics as pruned")
    p.add_argument("--verbose", "-v", action="store_true", help="print channels kept per group")


def _add_train_args(p: argparse.ArgumentParser, standalone: bool = True, out_help: str = "",
                    data_help: str = "data root (default: bundled sample)") -> None:
    if standalone:  # 'run' gets these from the scoring options
        p.add_argument("--data", default=None, help=data_help)
        p.add_argument("--out", default=None, help=out_help)
        p.add_argument("--seed", type=integer(0), default=0)
        p.add_argument("--device", default="auto", help=_DEVICE_HELP)
        p.add_argument("--quiet", action="store_true")
    p.add_argument("--recipe", default="chip-cifar", choices=sorted(RECIPES), help="hyper-parameter preset (default chip-cifar)")
    p.add_argument("--epochs", type=integer(1), default=None, help="override the recipe's epochs (the paper: 400 CIFAR, 180 ImageNet)")
    p.add_argument("--train-batch-size", type=integer(1), default=None, help="global batch size (split across processes)")
    p.add_argument("--lr", type=number(0, low_open=True), default=None)
    p.add_argument("--momentum", type=number(0, 1), default=None)
    p.add_argument("--weight-decay", type=number(0), default=None)
    p.add_argument("--warmup-epochs", type=number(0), default=None)
    p.add_argument("--label-smoothing", type=number(0, 1), default=None)
    p.add_argument("--val-fraction", type=number(0, 1), default=0.1, help="training images held out to choose the epoch (0: none)")
    p.add_argument("--no-amp", action="store_true", help="no autocast on CUDA")
    p.add_argument("--amp-dtype", default="bf16", choices=["bf16", "fp16"], help="autocast type on CUDA (fp16 adds loss scaling)")
    p.add_argument("--compile", default="auto", choices=["auto", "off", "default", "reduce-overhead", "max-autotune"],
                   help="torch.compile the model for training: auto (default) compiles with CUDA graphs (reduce-overhead) on "
                   "CUDA for runs of 5,000 steps or more, where it pays (docs/FINETUNING.md); off; or a torch.compile mode")
    p.add_argument("--checkpoint-every", type=integer(0), default=0, metavar="STEPS", help="also checkpoint every N steps")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    if standalone:  # 'run' has it from the pruning options
        p.add_argument("--overwrite", action="store_true", help="start over in an output folder that holds an earlier run (default: refuse)")
    p.add_argument("--limit-train-images", type=integer(1), default=None,
                   help="train on at most this many images, and validate on as many in proportion (few-shot runs, pilots)")
    p.add_argument("--distill-weight", type=number(0, 1), default=None, metavar="W",
                   help="learn from the unpruned model too: loss = (1-W) cross-entropy + W T^2 KL(teacher || student) (default: the recipe's)")
    p.add_argument("--distill-temperature", type=number(0, low_open=True), default=None, metavar="T",
                   help="softening temperature of the distillation (default: the recipe's, 4)")
    p.add_argument("--teacher-weights", default=None, metavar="FILE",
                   help="the unpruned model's weights for distillation (default: those the folder was pruned from, as recorded)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="chipprune", description="CHIP channel pruning for PyTorch CNNs.")
    parser.add_argument("--version", action="version", version=f"chipprune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list the model names chipprune knows")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("score", help="score every channel (CHIP) and save the scores")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--out", default="scores.safetensors", help="scores file (a .json twin is written beside it)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("prune", help="score, prune and report (default: ResNet-56, paper setting, bundled data)")
    _add_model_args(p)
    _add_data_args(p)
    _add_prune_args(p)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("finetune", help="fine-tune a pruned folder (the paper's recipe; resumable; torchrun for DDP)")
    p.add_argument("folder", help="folder written by 'chipprune prune'")
    p.add_argument("--model", default=None, help=_TRUST_HELP)
    _add_train_args(p, out_help="output folder (default FOLDER/finetuned)", data_help=_FOLDER_DATA_HELP)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("train", help="train a model from scratch (a baseline for models without weights)")
    _add_model_args(p)
    _add_train_args(p, out_help="output folder (default chipprune-out/MODEL-trained)")
    p.set_defaults(func=cmd_train, weights="none")

    p = sub.add_parser("run", help="score, prune, fine-tune and report in one go")
    _add_model_args(p)
    _add_data_args(p)
    _add_prune_args(p)
    _add_train_args(p, standalone=False)
    p.set_defaults(func=cmd_run)

    _add_pilot_parser(sub)
    _add_eval_and_export_parsers(sub)
    return parser


def _add_pilot_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pilot", help="sweep compression levels on your data and recommend a safe one")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--levels", type=number(0, 1, low_open=True), nargs="+", default=[0.8, 0.65, 0.5, 0.35], help="MAC budgets as fractions")
    p.add_argument("--finetune-epochs", type=integer(0), default=0, help="short fine-tuning per level (default none)")
    p.add_argument("--max-drop", type=number(0), default=1.0, help="accuracy drop (points) you accept (default 1)")
    p.add_argument("--confidence", type=number(0, 1, low_open=True), default=0.95, help="confidence of the intervals (default 0.95)")
    p.add_argument("--round-to", type=integer(1), default=1)
    p.add_argument("--throughput-batch", type=integer(1), default=64, help="batch size of the throughput latency (default 64)")
    p.add_argument("--sensitivity", action="store_true", help="instead: prune one group at a time and chart the drops")
    p.add_argument("--sensitivity-ratios", type=number(0, 1, low_open=True), nargs="+", default=[0.3, 0.5, 0.7])
    p.add_argument("--out", default=None, help="output folder (default chipprune-out/MODEL-pilot); reruns resume")
    p.set_defaults(func=cmd_pilot)



def _add_eval_and_export_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a pruned folder: accuracy, and latency against the original")
    p.add_argument("folder", help="folder written by 'chipprune prune'")
    p.add_argument("--data", default=None, help=_FOLDER_DATA_HELP)
    p.add_argument("--no-accuracy", action="store_true", help="skip the test-set evaluation")
    p.add_argument("--latency", action="store_true", help="measure latency of the original and the pruned model")
    p.add_argument("--batch-sizes", type=integer(1), nargs="+", default=[1, 64], help="latency batch sizes (default 1 64)")
    p.add_argument("--model", default=None, help=_TRUST_HELP)
    p.add_argument("--device", default="auto", help=_DEVICE_HELP)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="export a pruned folder to ONNX, checked with ONNX Runtime")
    p.add_argument("folder", help="folder written by 'chipprune prune'")
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--out", default=None, help="output file (default FOLDER/model.onnx)")
    p.add_argument("--model", default=None, help=_TRUST_HELP)
    p.set_defaults(func=cmd_export)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    print(f"chipprune: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere, before or after the subcommand
    try:
        args = parser.parse_args([a for a in argv if a != "--debug"])
    except SystemExit as exc:  # --help, --version, or a bad option (its one line already printed)
        return int(exc.code or 0)
    args.debug = debug
    if args.command is None:
        parser.print_help()
        return 0
    saved_showwarning = warnings.showwarning
    if not args.debug:
        warnings.showwarning = _show_warning  # one plain line per warning, no source excerpt
    try:
        with decompositions_on(getattr(args, "decompose_on", "auto")):
            args.func(args)
    except ChipPruneError as exc:
        if args.debug:
            raise
        print(f"chipprune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("chipprune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Whoever read our output stopped (`chipprune models | head`): end quietly, with the status a
        # Unix tool killed by SIGPIPE has (not 0: the work may not be done).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # a full or read-only disk, a file that vanished: the system's words, one line
        if args.debug:
            raise
        where = f" {exc.filename}" if exc.filename else ""
        print(f"chipprune: error: cannot read or write{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a fault of chipprune's: one line, the traceback on request
        if args.debug:
            raise
        print(f"chipprune: error: unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
              "(a fault in chipprune: rerun with --debug for the traceback, and report it)", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = saved_showwarning
        teardown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
