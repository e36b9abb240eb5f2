"""The tests' steady clock, shared by the in-process tests (conftest's ``steady_clock`` fixture) and
the CLI runs the tests start as processes of their own (``python -m steadyclock ARGS`` runs
``chipprune ARGS`` on it, with tests/ on PYTHONPATH).

Every timing chipprune takes goes through ``evaluation.latency.time_call``; ``charge_by_work`` runs
the timed call once (a runner timed again is charged the same) and charges 0.05 ms plus 1 ms per
million multiply-accumulates it performed: a noise-free machine, so no verdict or duration depends
on the neighbours. (Timed for real, the latency a fine-tuning report ends with goes on in rounds
until its interval is tight, up to 30 s, however small the model.)
"""

from __future__ import annotations

import weakref

# What each runner was charged. A runner times one fixed model (or ONNX session) on one fixed batch
# and is made afresh for each comparison, so timing it again costs the same: it runs (under the
# counter) only the first time. compare_latency times each runner 14 times or more.
_charged: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def charge_by_work(run, batch_size, device, *, min_run_time, warmup=3):
    from chipprune.evaluation import latency

    ms = _charged.get(run)
    if ms is None:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            run()
        ms = 0.05 + counter.get_total_flops() / 2 * 1e-6
        try:
            _charged[run] = ms
        except TypeError:  # not weakly referable: counted every time
            pass
    return latency.Latency(batch_size, ms, 0.0, 1, device, ms)


def install() -> None:
    """Put the steady clock in place for the rest of this process."""
    from chipprune.evaluation import latency

    latency.time_call = charge_by_work


if __name__ == "__main__":
    import sys

    install()
    from chipprune.cli import main

    sys.exit(main(sys.argv[1:]))
