"""A latency model of this machine: every layer a plan reshapes, timed alone at the widths the plan
gives it, cached per machine, summed into a prediction of the whole model's latency.

Why per layer: a model's latency is mostly its convolutions (85% on the CPU we measured), and their
speed is not proportional to their channels: kernels run in blocks (for example of 16 channels), so
49 channels can cost what 64 do while 48 costs a third less. Timing each reshaped layer on the real
device at the real batch size captures that; the rest (activations, additions, pooling) is the
measured whole model minus its timed layers, scaled with the timed layers' output size. Every
timing is expressed at the table's reference speed (see LatencyTable.slowdown), because a shared
machine's speed drifts by several times between timings a minute apart; each layer is therefore
timed against a reference convolution in alternating rounds (the one timing method of
``evaluation.latency``), and its entry is that ratio times the reference's recorded time.

Tables live in ``~/.cache/chipprune/latency/`` (or ``$CHIPPRUNE_CACHE_DIR``), one JSON file per
machine (CPU model, threads, torch version; or GPU name), and are written atomically as they grow.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..errors import ChipPruneError
from ..evaluation import latency as timing
from ..io.atomic import read_json, write_json
from ..models.spec import ModelSpec
from ..runtime import device_of, machine_cache_file, machine_fingerprint
from ..surgery.groups import ChannelGroup
from .plan import pruned_copy

__all__ = ["LayerShape", "LatencyTable", "LatencyModel", "machine_fingerprint", "default_table_path"]

TABLE_FORMAT = "chipprune-latency-table/1"
_TIMED = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)


@dataclass(frozen=True)
class LayerShape:
    """Everything that decides how long one layer takes: its type, widths, options and input size."""

    kind: str  # "conv2d", "linear" or "batchnorm2d"
    in_channels: int
    out_channels: int
    spatial: tuple[int, ...]  # input size without batch and channels: (H, W), or a Linear's leading dims
    options: tuple[int, ...] = ()  # conv2d: kernel h, w, stride h, w, padding h, w, dilation h, w, groups, bias; linear: bias

    def key(self, batch_size: int) -> str:
        spatial = "x".join(map(str, self.spatial)) or "-"
        options = ",".join(map(str, self.options)) or "-"
        return f"{self.kind} {self.in_channels}->{self.out_channels} in={spatial} opt={options} b={batch_size}"

    def build(self, batch_size: int, device: torch.device | str) -> tuple[nn.Module, torch.Tensor]:
        """A fresh layer of this shape and a random input batch for it."""
        if self.kind == "conv2d":
            kh, kw, sh, sw, ph, pw, dh, dw, groups, bias = self.options
            layer = nn.Conv2d(self.in_channels, self.out_channels, (kh, kw), (sh, sw), (ph, pw), (dh, dw), groups, bool(bias))
            x = torch.randn(batch_size, self.in_channels, *self.spatial)
        elif self.kind == "linear":
            layer = nn.Linear(self.in_channels, self.out_channels, bool(self.options[0]))
            x = torch.randn(batch_size, *self.spatial, self.in_channels)
        elif self.kind == "batchnorm2d":
            layer = nn.BatchNorm2d(self.in_channels)
            x = torch.randn(batch_size, self.in_channels, *self.spatial)
        else:
            raise ChipPruneError(f"no timing for layers of kind '{self.kind}'")
        return layer.eval().to(device), x.to(device)

    def output_elements(self) -> int:
        """Output values per image (the work of what follows the layer: activation, addition)."""
        if self.kind == "conv2d":
            kh, kw, sh, sw, ph, pw, dh, dw = self.options[:8]
            h = (self.spatial[0] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
            w = (self.spatial[1] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
            return self.out_channels * h * w
        size = self.out_channels
        for s in self.spatial:
            size *= s
        return size


# The layer whose speed tracks the machine's (see LatencyTable.slowdown): a mid-sized convolution.
_REFERENCE = LayerShape("conv2d", 32, 32, (16, 16), (3, 3, 1, 1, 1, 1, 1, 1, 1, 0))


def layer_runner(shape: LayerShape, batch_size: int, device: torch.device | str) -> Callable[[], None]:
    """One call of a fresh layer of ``shape`` on ``batch_size`` inputs, ready to time. Inputs rotate
    through several buffers (up to 64 MiB) so that, as inside a network, a layer does not find its
    input in the cache."""
    layer, x = shape.build(batch_size, device)
    copies = max(1, min(16, (64 * 2**20) // max(1, x.numel() * x.element_size())))
    inputs = itertools.cycle([x] + [torch.randn_like(x) for _ in range(copies - 1)])

    def run() -> None:
        with torch.inference_mode():
            layer(next(inputs))

    return run


def time_layer(shape: LayerShape, batch_size: int, device: torch.device | str, min_run_time: float) -> float:
    """Milliseconds of one call of a layer of ``shape`` (the fastest block of runs: on a shared machine
    the slow blocks measure the neighbours)."""
    run = layer_runner(shape, batch_size, device)
    return timing.time_call(run, batch_size, str(device), min_run_time=min_run_time, warmup=2).min_ms


def default_table_path(device: torch.device | str = "cpu") -> Path:
    """Where this machine's table is cached (``$CHIPPRUNE_CACHE_DIR`` or ``~/.cache/chipprune``)."""
    return machine_cache_file("latency", device)


# A table whose reference convolution now takes more than this factor longer or shorter than when the
# table began was timed under other conditions (another load, clock or power state): its entries are
# timed again before this run uses them.
OTHER_CONDITIONS = 1.3


class LatencyTable:
    """Measured milliseconds per layer shape and batch size, on one machine, saved as JSON.

    ``retime``: time again every entry this run uses (also done by itself when the machine's speed
    differs from the table's, see ``check_conditions``).
    """

    def __init__(self, path: str | Path | None = None, device: torch.device | str = "cpu", *, min_run_time: float = 0.05,
                 timer: Callable[[LayerShape, int], float] | None = None, retime: bool = False) -> None:
        self.device = torch.device(device)
        self.stale = retime  # entries from earlier runs are not to be trusted: time again what is used
        self.fresh: set[str] = set()  # entries timed by this run
        self.notes: list[str] = []
        self.noise: list[float] = []  # relative half-width of each layer timing's interval, this run
        self.machine = machine_fingerprint(self.device)
        self.path = Path(path) if path is not None else default_table_path(self.device)
        self.min_run_time = min_run_time
        # An injected timer gives milliseconds at the machine's present speed (normalised by timings of
        # the reference convolution, see slowdown); the real one times each layer against the reference.
        self._timer = timer
        self.entries: dict[str, float] = {}
        self.measured = 0  # entries measured by this process (the rest came from the cache)
        self._unsaved = 0
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = read_json(self.path)
        if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT or not isinstance(data.get("entries"), dict):
            raise ChipPruneError(f"{self.path} is not a chipprune latency table ({TABLE_FORMAT}); delete it or give another path")
        if data.get("machine") != self.machine:
            raise ChipPruneError(
                f"the latency table {self.path} was measured on '{data.get('machine')}', this is '{self.machine}': "
                "latencies do not carry over between machines; give another path (or none, for this machine's default)"
            )
        self.entries = {str(k): float(v) for k, v in data["entries"].items()}

    def save(self) -> None:
        write_json(self.path, {"format": TABLE_FORMAT, "machine": self.machine, "entries": dict(sorted(self.entries.items()))})
        self._unsaved = 0

    def _absolute_ms(self, shape: LayerShape, batch_size: int) -> float:
        return float(self._timer(shape, batch_size)) if self._timer else time_layer(shape, batch_size, self.device, self.min_run_time)

    def _timed_ms(self, shape: LayerShape, batch_size: int) -> float:
        """Milliseconds of ``shape`` at the table's reference speed. Single timings of one small layer
        swing between repeats (several times on a busy machine); the layer and the reference
        convolution timed in alternating short rounds give a ratio that swings far less
        (bench/layer_timing_noise.py: 1.09-1.10x against 1.19-1.72x for the fastest block, idle)."""
        if self._timer:
            return float(self._timer(shape, batch_size)) / self.slowdown(batch_size)
        ratio = timing.compare_latency(layer_runner(shape, batch_size, self.device), layer_runner(_REFERENCE, batch_size, self.device),
                                       batch_size, device=self.device, block_seconds=0.005, min_rounds=5, max_seconds=0.0)
        self.noise.append((ratio.speedup_high - ratio.speedup_low) / (2 * ratio.speedup))
        return ratio.speedup * self.reference_ms(batch_size)

    def timing_noise(self) -> float | None:
        """The median relative half-width of the 95% intervals of the layer timings this run took
        (0.02: a layer's time is known to about +-2%), or None when it timed none."""
        return statistics.median(self.noise) if self.noise else None

    def check_conditions(self, batch_size: int) -> None:
        """Compare the machine's speed now with the table's (three timings of the reference
        convolution, the median); entries timed at another speed are timed again when used."""
        key = f"{_REFERENCE.key(batch_size)} reference"
        now = statistics.median(self._absolute_ms(_REFERENCE, batch_size) for _ in range(3))
        recorded = self.entries.get(key)
        if recorded is None:
            self.entries[key] = now
        elif not 1 / OTHER_CONDITIONS <= now / recorded <= OTHER_CONDITIONS and not self.stale:
            self.stale = True
            self.notes.append(
                f"the latency table {self.path} was timed at another speed of this machine (its reference convolution "
                f"takes {now / recorded:.2f}x its recorded time now): the layers this search uses were timed again"
            )

    def reference_ms(self, batch_size: int) -> float:
        """The table's time of its reference convolution at ``batch_size`` (the unit of its entries)."""
        key = f"{_REFERENCE.key(batch_size)} reference"
        if key not in self.entries:
            self.entries[key] = statistics.median(self._absolute_ms(_REFERENCE, batch_size) for _ in range(3))
        return self.entries[key]

    def slowdown(self, batch_size: int) -> float:
        """How much slower the machine runs now than when the table began (1.0: as fast), from one
        timing of the reference convolution. Divides the timings of an injected timer; the real
        timing measures each layer against the reference directly (see _timed_ms)."""
        now = self._absolute_ms(_REFERENCE, batch_size)
        key = f"{_REFERENCE.key(batch_size)} reference"
        self.entries.setdefault(key, now)
        return now / self.entries[key]

    def get(self, shape: LayerShape, batch_size: int, *, remeasure: bool = False) -> float:
        """Milliseconds for ``shape`` at ``batch_size``: from the table, or measured now and recorded
        (at the table's reference speed). ``remeasure`` times it again; of two timings taken by this
        run the faster is kept, one from an earlier run is replaced."""
        key = shape.key(batch_size)
        if key not in self.entries or remeasure or (self.stale and key not in self.fresh):
            now = self._timed_ms(shape, batch_size)
            self.entries[key] = min(now, self.entries[key]) if key in self.fresh else now
            self.fresh.add(key)
            self.measured += 1
            self._unsaved += 1
            if self._unsaved >= 50:  # an interrupted run keeps what it measured
                self.save()
        return self.entries[key]



@dataclass
class _Coupling:
    group: str
    side: str  # "in" or "out"
    count: int  # the layer's channels that belong to the group
    group_channels: int


# The timed layers may take this much longer than the whole model they belong to before their
# timings are called disturbed (timed again, then scaled to agree).
LAYERS_OVER_MODEL = 1.1
# A copy with half the channels in every group (a quarter of most MACs) that runs at more than this
# fraction of the model's time: the timings say nothing about widths (load, or per-call costs only).
HALF_WIDTH_NO_FASTER = 0.95


class LatencyModel:
    """Predicts the latency of ``model`` with ``keep[g]`` channels in each group, on one device and batch size.

    prediction = sum of the timed layers at their planned shapes + the rest. The rest (activations,
    additions, pooling, the framework's per-call costs) is the measured whole model minus its timed
    layers. Part of it shrinks with the layers' output and part does not: both parts are fitted from
    two whole-model timings, the unpruned model and a copy with every group at half width (on
    ResNet-56 at batch 1 the rest is over 40% of the time, so treating it all as shrinking made
    plans that promised more than they gave). The prediction for the unpruned model equals the measured one: when the layers alone take
    longer (timings from other moments of a busy machine), they are timed again and, if they still
    disagree, scaled down to agree, with a note.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        groups: list[ChannelGroup],
        table: LatencyTable,
        *,
        batch_size: int = 1,
        progress: bool = True,
        original_ms: float | None = None,
    ) -> None:
        """``original_ms``: the unpruned model's latency if already known (None: measured now)."""
        self.spec, self.table, self.batch_size, self.progress = spec, table, batch_size, progress
        self._base: dict[str, LayerShape] = {}
        self._couplings: dict[str, list[_Coupling]] = {}
        self._layers_of_group: dict[str, list[str]] = {g.name: [] for g in groups}
        modules = dict(model.named_modules())
        for name, shape in _layer_shapes(model, spec).items():
            self._base[name] = shape
            self._couplings[name] = []
        for g in groups:
            for module, side, count in g.couplings:
                if module in self._base:
                    self._couplings[module].append(_Coupling(g.name, side, count, g.channels))
                    if module not in self._layers_of_group[g.name]:
                        self._layers_of_group[g.name].append(module)
        self._depthwise = {n for n in self._base if isinstance(modules[n], nn.Conv2d) and modules[n].groups > 1
                           and modules[n].groups == modules[n].in_channels == modules[n].out_channels}
        self.scale = 1.0  # applied to every layer timing, see _agree_with_the_model
        if original_ms is None:
            table.check_conditions(batch_size)
        self._original_ms = original_ms if original_ms is not None else self._measure_original(model)
        full = {name: self.table.get(shape, batch_size) for name, shape in self._progress(self._base.items())}
        if sum(full.values()) > LAYERS_OVER_MODEL * self._original_ms and original_ms is None:
            full = self._agree_with_the_model(model)
        self._outputs = sum(s.output_elements() for s in self._base.values())
        rest = max(0.0, self._original_ms - self.scale * sum(full.values()))
        self._rest_fixed, self._rest_per_output = 0.0, rest / max(1, self._outputs)
        if original_ms is None:
            self._fit_rest(model, groups, rest)
        self.table.save()

    def _fit_rest(self, model: nn.Module, groups: list[ChannelGroup], rest: float) -> None:
        """Fit rest = fixed + per_output * output elements through the unpruned model and a copy with
        every group at (about) half width, both timed against the reference."""
        half = {g.name: max(1, g.channels // g.channel_groups // 2) * g.channel_groups if g.channels % g.channel_groups == 0
                else max(1, g.channels // 2) for g in groups}
        probe = pruned_copy(model, self.spec, groups, half)
        layers = self.scale * sum(self.table.get(self.shape(n, half), self.batch_size) for n in self._progress(self._base))
        half_ms = self._measure_original(probe, "a half-width copy")
        if half_ms >= HALF_WIDTH_NO_FASTER * self._original_ms:
            raise ChipPruneError(
                f"latency timings: a copy of the model with every group at half width ran no faster than the model "
                f"({half_ms:.2f} against {self._original_ms:.2f} ms at batch {self.batch_size}), so no pruning can be timed to a budget. "
                "Either other work on this machine swamps the timings (rerun on a quieter machine) or at this batch size the "
                "time does not depend on the widths (per-call costs); give --target-macs instead"
            )
        rest_half = max(0.0, half_ms - layers)
        outputs_half = sum(self.shape(n, half).output_elements() for n in self._base)
        if outputs_half < self._outputs:
            per_output = max(0.0, (rest - rest_half) / (self._outputs - outputs_half))
            self._rest_per_output = min(per_output, rest / self._outputs)
            self._rest_fixed = rest - self._rest_per_output * self._outputs

    def _agree_with_the_model(self, model: nn.Module) -> dict[str, float]:
        """The layers cannot take longer than the model they are part of: some timings were disturbed
        (a busy machine). Time the model and its layers once more; if they still disagree, scale the
        layers so that the prediction for the unpruned model is the measured one."""
        self._original_ms = self._measure_original(model)
        full = {name: self.table.get(shape, self.batch_size, remeasure=True) for name, shape in self._progress(self._base.items())}
        layers = sum(full.values())
        if layers > LAYERS_OVER_MODEL * self._original_ms:
            self.scale = self._original_ms / layers
            self.table.notes.append(
                f"batch {self.batch_size}: the layers timed alone took {layers / self._original_ms:.2f}x the whole model timed "
                "against the same reference; their timings were scaled to agree (the machine's load moved while timing: "
                "predictions are rough; --retime on a quieter machine gives firmer ones)"
            )
        return full

    def _progress(self, items):
        return tqdm(list(items), desc=f"timing layers (batch {self.batch_size})", disable=not self.progress, leave=False, unit="layer")

    def _measure_original(self, model: nn.Module, what: str = "the model") -> float:
        """A whole model at the table's reference speed: timed against the reference convolution in
        alternating rounds (the way every latency is measured), as a multiple of the reference's time."""
        device, b = self.table.device, self.batch_size
        c = timing.compare_latency(timing.model_runner(model, self.spec, b, device), layer_runner(_REFERENCE, b, device), b,
                                   device=device, progress=self.progress, desc=f"timing {what} (batch {b})")
        return c.speedup * self.table.reference_ms(b)

    @property
    def original(self) -> float:
        """Measured latency of the unpruned model (ms)."""
        return self._original_ms

    def layers_of(self, group: str) -> list[str]:
        """The timed layers whose shape depends on ``group``."""
        return self._layers_of_group[group]

    def shape(self, layer: str, keep: Mapping[str, int]) -> LayerShape:
        """The shape of ``layer`` when each group g keeps ``keep[g]`` channels (missing groups: all)."""
        base = self._base[layer]
        removed = {"in": 0, "out": 0}
        for c in self._couplings[layer]:
            kept = keep.get(c.group, c.group_channels)
            removed[c.side] += c.count * (c.group_channels - kept) // c.group_channels
        if base.kind == "batchnorm2d":
            removed["in"] = removed["out"] = max(removed["in"], removed["out"])
        in_channels, out_channels = base.in_channels - removed["in"], base.out_channels - removed["out"]
        options = base.options
        if layer in self._depthwise:
            in_channels = out_channels = min(in_channels, out_channels)
            options = (*options[:8], out_channels, options[9])
        return LayerShape(base.kind, in_channels, out_channels, base.spatial, options)

    def layer_cost(self, layer: str, keep: Mapping[str, int]) -> float:
        """Milliseconds of one layer at the shape ``keep`` gives it."""
        return self.scale * self.table.get(self.shape(layer, keep), self.batch_size)

    def refresh(self, keep: Mapping[str, int]) -> None:
        """Time every layer of the plan ``keep`` once more, keeping the faster value of each: the
        search may have used timings taken while the machine was disturbed."""
        for name in self._progress(self._base):
            self.table.get(self.shape(name, keep), self.batch_size, remeasure=True)
        self.table.save()

    def timing_noise(self) -> float | None:
        """How uncertain this run's layer timings are (relative), see LatencyTable.timing_noise."""
        return self.table.timing_noise()

    def predict(self, keep: Mapping[str, int]) -> float:
        """Predicted latency (ms) of the model pruned to ``keep``."""
        shapes = [self.shape(name, keep) for name in self._base]
        timed = self.scale * sum(self.table.get(s, self.batch_size) for s in shapes)
        outputs = sum(s.output_elements() for s in shapes)
        return timed + self._rest_fixed + self._rest_per_output * outputs


def _layer_shapes(model: nn.Module, spec: ModelSpec) -> dict[str, LayerShape]:
    """The shape of every timed layer of ``model`` (convolutions, linear layers, batch norms), from one
    forward pass on the spec's example input; a layer run twice keeps its first input."""
    inputs: dict[str, tuple[int, ...]] = {}
    modules = {n: m for n, m in model.named_modules() if isinstance(m, _TIMED)}

    def remember(name: str, args: tuple) -> None:  # returns None: a pre-hook's return value would replace the input
        inputs.setdefault(name, tuple(args[0].shape))

    hooks = [m.register_forward_pre_hook(lambda _m, a, n=n: remember(n, a)) for n, m in modules.items()]
    device = device_of(model)
    try:
        with torch.inference_mode():
            model.eval()(spec.example_input(device))
    finally:
        for h in hooks:
            h.remove()
    shapes = {}
    for name, m in modules.items():
        if name not in inputs:
            continue  # never run
        size = inputs[name]
        if isinstance(m, nn.Conv2d):
            opts = (*m.kernel_size, *m.stride, *_pair(m.padding), *m.dilation, m.groups, int(m.bias is not None))
            shapes[name] = LayerShape("conv2d", m.in_channels, m.out_channels, tuple(size[2:]), opts)
        elif isinstance(m, nn.Linear):
            shapes[name] = LayerShape("linear", m.in_features, m.out_features, tuple(size[1:-1]), (int(m.bias is not None),))
        else:
            shapes[name] = LayerShape("batchnorm2d", m.num_features, m.num_features, tuple(size[2:]))
    return shapes


def _pair(padding) -> tuple[int, int]:
    if isinstance(padding, str):
        raise ChipPruneError(f"cannot time a convolution with padding='{padding}'")
    return tuple(padding)  # type: ignore[return-value]

