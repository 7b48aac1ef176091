#!/usr/bin/env python
"""Benchmark a: training speed and memory of MultiRecTrainer against nnUNetTrainer.

Both trainers train on the same preprocessed bench dataset (Dataset502, 3d_fullres, fold 0) with the
plan's patch and batch size. They are built the way ``nnUNetv2_train`` builds them
(``get_trainer_from_args`` with ``nnUNet_extTrainer`` set), then ``on_train_start()`` and
``on_train_epoch_start()`` run, and ``train_step`` is timed in-process:

* **with the data loader**: ``train_step(next(trainer.dataloader_train))``, nnU-Net's single-threaded
  augmenter (``nnUNet_n_proc_DA=0``), so one iteration = loading + augmentation + step; the load and the
  step are also timed separately;
* **fixed batch**: ``train_step(batch)`` on one pre-fetched batch, the same for both trainers, which
  isolates network + losses + backward + optimiser step from data loading.

Both trainers live in one process and are timed in alternating blocks (A B, B A, A B, ...) after
warm-up iterations, so a change in the machine's load hits both alike; the numbers are medians of the
per-iteration times. Memory is measured in one fresh process per trainer: peak resident set size
(``ru_maxrss``) before the first step and after the timed steps (on CUDA: ``max_memory_allocated``).

MultiRecTrainer is the default variant (discrete-time survival head, pretreatment + postoperative
clinical groups). Target: MultiRec / nnU-Net <= 1.05 for time and memory.

Usage::

    python benchmarks/bench_training_speed.py [--out bench_run/training_speed.json] [--warmup 1]
        [--blocks 4] [--iters-per-block 1] [--memory-iters 2] [--device cpu]

The defaults fit about 6 minutes on 2 shared CPU cores (a step of the planned 16x80x80 patch, batch
2, takes 5-20 s there); on a GPU raise ``--blocks`` and ``--iters-per-block``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TRAINERS = ("nnUNetTrainer", "MultiRecTrainer")
TARGET_RATIO = 1.05


# ------------------------------------------------------------------------------------ worker side
def _build_trainer(name: str, device_name: str, size: str = "bench"):
    """A trainer as ``nnUNetv2_train`` builds it, started up to its first training step."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args
    device = torch.device(device_name)
    trainer = get_trainer_from_args(str(common.bench_dataset(size)["id"]), common.CONFIGURATION, 0, name,
                                    "nnUNetPlans", device=device)
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    return trainer


def _sync(device_name: str):
    if device_name == "cuda":
        import torch
        torch.cuda.synchronize()


def _timed_steps(trainer, n: int, device_name: str, batch=None):
    """Per-iteration (load wall s, step wall s, step CPU s) of ``n`` training iterations.

    The CPU time (all threads of this process) does not count time spent waiting for a core, so it
    is the steadier measure of the work a step does on a shared, overloaded machine.
    """
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        b = batch if batch is not None else next(trainer.dataloader_train)
        t1, c1 = time.perf_counter(), time.process_time()
        trainer.train_step(b)
        _sync(device_name)
        out.append((t1 - t0, time.perf_counter() - t1, time.process_time() - c1))
    return out


def worker_timing(args) -> dict:
    import torch
    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count())  # as nnUNetv2_train does for -device cpu
    trainers = {name: _build_trainer(name, args.device, args.size) for name in TRAINERS}
    n_params = {name: sum(p.numel() for p in t.network.parameters()) for name, t in trainers.items()}
    for t in trainers.values():
        _timed_steps(t, args.warmup, args.device)

    loader = {name: [] for name in TRAINERS}
    fixed = {name: [] for name in TRAINERS}
    # one batch for both trainers' fixed-batch steps (the MultiRec step also needs its 'keys')
    fixed_batch = next(trainers["nnUNetTrainer"].dataloader_train)
    for block in range(args.blocks):
        order = TRAINERS if block % 2 == 0 else TRAINERS[::-1]
        for name in order:
            loader[name] += _timed_steps(trainers[name], args.iters_per_block, args.device)
        for name in order:
            fixed[name] += _timed_steps(trainers[name], args.iters_per_block, args.device, batch=fixed_batch)
    any_trainer = trainers["nnUNetTrainer"]
    return {"n_parameters": n_params, "batch_size": any_trainer.batch_size,
            "patch_size": list(any_trainer.configuration_manager.patch_size),
            "torch_threads": torch.get_num_threads(),
            "loader_load_s": {k: [round(x[0], 4) for x in v] for k, v in loader.items()},
            "loader_step_s": {k: [round(x[1], 4) for x in v] for k, v in loader.items()},
            "loader_step_cpu_s": {k: [round(x[2], 4) for x in v] for k, v in loader.items()},
            "fixed_step_s": {k: [round(x[1], 4) for x in v] for k, v in fixed.items()},
            "fixed_step_cpu_s": {k: [round(x[2], 4) for x in v] for k, v in fixed.items()}}


#: the epoch phases of nnU-Net's ``run_training`` loop, timed separately by :func:`worker_epochs`
PHASES = ("epoch_start", "train_load", "train_step", "train_epoch_end", "val_epoch_start", "val_load", "val_step",
          "val_epoch_end", "epoch_end")


def _timed_epoch(trainer, device_name: str) -> dict:
    """One epoch of nnU-Net's ``run_training`` loop (same calls, same order) with each phase timed."""
    import torch
    t = dict.fromkeys(PHASES, 0.0)

    def clock(phase, fn, *a):
        _sync(device_name)
        t0 = time.perf_counter()
        out = fn(*a)
        _sync(device_name)
        t[phase] += time.perf_counter() - t0
        return out

    clock("epoch_start", lambda: (trainer.on_epoch_start(), trainer.on_train_epoch_start()))
    outs = []
    for _ in range(trainer.num_iterations_per_epoch):
        batch = clock("train_load", next, trainer.dataloader_train)
        outs.append(clock("train_step", trainer.train_step, batch))
    clock("train_epoch_end", trainer.on_train_epoch_end, outs)
    with torch.no_grad():
        clock("val_epoch_start", trainer.on_validation_epoch_start)
        vals = []
        for _ in range(trainer.num_val_iterations_per_epoch):
            batch = clock("val_load", next, trainer.dataloader_val)
            vals.append(clock("val_step", trainer.validation_step, batch))
        clock("val_epoch_end", trainer.on_validation_epoch_end, vals)
    clock("epoch_end", trainer.on_epoch_end)
    t["epoch"] = sum(t[p] for p in PHASES)
    return t


def worker_epochs(args) -> dict:
    """Whole epochs of both trainers, alternating (A B, B A, ...), each phase timed: where an epoch's
    time goes beyond the training step (validation, the epoch-end bookkeeping, checkpoints, plots)."""
    import torch
    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count())
    trainers = {name: _build_trainer(name, args.device, args.size) for name in TRAINERS}
    for tr in trainers.values():
        tr.num_iterations_per_epoch = args.epoch_iterations
        tr.num_val_iterations_per_epoch = args.epoch_val_iterations
        _timed_epoch(tr, args.device)  # warm-up epoch
    out = {name: [] for name in TRAINERS}
    for e in range(args.epochs):
        for name in (TRAINERS if e % 2 == 0 else TRAINERS[::-1]):
            out[name].append({k: round(v, 4) for k, v in _timed_epoch(trainers[name], args.device).items()})
    return out


def worker_memory(args) -> dict:
    import torch
    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count())
    trainer = _build_trainer(args.trainer, args.device, args.size)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    _timed_steps(trainer, args.memory_iters, args.device)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"trainer": args.trainer, "iterations": args.memory_iters,
           "peak_rss_before_steps_mib": base_kib / 1024, "peak_rss_mib": peak_kib / 1024,
           "peak_rss_delta_mib": (peak_kib - base_kib) / 1024}
    if args.device == "cuda":
        out.update({"cuda_allocated_before_steps_mib": base_cuda / 2 ** 20,
                    "cuda_max_allocated_mib": torch.cuda.max_memory_allocated() / 2 ** 20})
    return out


# ------------------------------------------------------------------------------------ driver side
def _run_worker(kind: str, args, env, extra=()):
    out = common.BENCH_RUN / "training_speed" / f"worker_{args.size}_{kind}{'_' + extra[1] if extra else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--worker-out", str(out),
           "--device", args.device, "--size", args.size, "--warmup", str(args.warmup), "--blocks", str(args.blocks),
           "--iters-per-block", str(args.iters_per_block), "--memory-iters", str(args.memory_iters),
           "--epochs", str(args.epochs), "--epoch-iterations", str(args.epoch_iterations),
           "--epoch-val-iterations", str(args.epoch_val_iterations), *extra]
    common.run_command(cmd, env, timeout=3600)
    return json.loads(out.read_text())


def _summary(values) -> dict:
    import statistics
    return {"median": round(common.median(values), 4), "mean": round(statistics.fmean(values), 4),
            "min": round(min(values), 4), "n": len(values)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="result JSON (default bench_run/training_speed.json)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", default="bench", choices=sorted(common.BENCH_SIZES),
                        help="bench: 80x80x16 images (patch 16x80x80); demo: make demo's 48x48x12 images")
    parser.add_argument("--compile", action="store_true",
                        help="nnUNet_compile=t (torch.compile; nnU-Net only compiles on CUDA); raise --warmup")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations per trainer first")
    parser.add_argument("--blocks", type=int, default=4, help="alternating timing blocks")
    parser.add_argument("--iters-per-block", type=int, default=1)
    parser.add_argument("--memory-iters", type=int, default=2, help="steps in each memory process")
    parser.add_argument("--epochs", type=int, default=0,
                        help="also time this many whole epochs per trainer, phase by phase (0: skip)")
    parser.add_argument("--epoch-iterations", type=int, default=12, help="training iterations per timed epoch "
                        "(make demo's 12)")
    parser.add_argument("--epoch-val-iterations", type=int, default=4, help="validation iterations per timed "
                        "epoch (make demo's 4)")
    parser.add_argument("--worker", choices=["timing", "memory", "epochs"], help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--trainer", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        result = {"timing": worker_timing, "memory": worker_memory, "epochs": worker_epochs}[args.worker](args)
        Path(args.worker_out).write_text(json.dumps(result, indent=2))
        return 0

    started = time.perf_counter()
    load_start = common.load_average()
    data = common.prepare_bench_dataset(size=args.size)
    # own results root: the trainers' output folders must not mix with the inference benchmark's models
    env = common.training_env(common.nnunet_env(data["root"], results=common.BENCH_RUN / "training_speed" /
                                                f"nnUNet_results_{args.size}"), n_proc_da=0)
    env["nnUNet_compile"] = "t" if args.compile else "f"
    timing = _run_worker("timing", args, env)
    memory = {name: _run_worker("memory", args, env, extra=("--trainer", name)) for name in TRAINERS}
    epochs = _run_worker("epochs", args, env) if args.epochs > 0 else None
    load_end = common.load_average()

    iteration = {n: [a + b for a, b in zip(timing["loader_load_s"][n], timing["loader_step_s"][n])] for n in TRAINERS}
    stats = {"iteration_with_loader_s": {n: _summary(iteration[n]) for n in TRAINERS},
             "loader_load_s": {n: _summary(timing["loader_load_s"][n]) for n in TRAINERS},
             "loader_step_s": {n: _summary(timing["loader_step_s"][n]) for n in TRAINERS},
             "loader_step_cpu_s": {n: _summary(timing["loader_step_cpu_s"][n]) for n in TRAINERS},
             "fixed_batch_step_s": {n: _summary(timing["fixed_step_s"][n]) for n in TRAINERS},
             "fixed_batch_step_cpu_s": {n: _summary(timing["fixed_step_cpu_s"][n]) for n in TRAINERS}}
    mr, nn = "MultiRecTrainer", "nnUNetTrainer"
    ratios = {k: round(common.ratio(v[mr]["median"], v[nn]["median"]), 4) for k, v in stats.items()}
    mem_key = "cuda_max_allocated_mib" if args.device == "cuda" else "peak_rss_mib"
    if epochs is not None:
        ratios["epoch_s"] = round(common.ratio(common.median([e["epoch"] for e in epochs[mr]]),
                                               common.median([e["epoch"] for e in epochs[nn]])), 4)
    ratios["peak_memory"] = round(common.ratio(memory[mr][mem_key], memory[nn][mem_key]), 4)
    if args.device == "cpu":
        ratios["peak_rss_delta"] = round(common.ratio(memory[mr]["peak_rss_delta_mib"],
                                                      memory[nn]["peak_rss_delta_mib"]), 4)
    checked = ["iteration_with_loader_s", "fixed_batch_step_s", "fixed_batch_step_cpu_s", "peak_memory"]
    result = {
        "benchmark": "a. training speed and memory, MultiRecTrainer vs nnUNetTrainer",
        "command": common.command_line(),
        "machine": common.machine_info(args.device),
        "load_average_start": load_start, "load_average_end": load_end,
        "dataset": {"name": data["dataset_name"], "size": args.size, "patients": data["patients"], "seed": data["seed"],
                    "fold": 0, **common.plan_summary(data["preprocessed"])},
        "settings": {"compile": args.compile, "amp": args.device == "cuda", "warmup": args.warmup,
                     "blocks": args.blocks, "iters_per_block": args.iters_per_block,
                     "memory_iters": args.memory_iters, "nnUNet_n_proc_DA": 0,
                     "torch_threads": timing["torch_threads"]},
        "n_parameters": timing["n_parameters"],
        "timing": stats,
        "timing_raw": {k: timing[k] for k in ("loader_load_s", "loader_step_s", "loader_step_cpu_s", "fixed_step_s",
                                              "fixed_step_cpu_s")},
        "memory": memory,
        "epoch_phases_s": None if epochs is None else {
            n: {k: _summary([e[k] for e in epochs[n]]) for k in (*PHASES, "epoch")} for n in TRAINERS},
        "epoch_phases_raw": epochs,
        "ratios_multirec_over_nnunet": ratios,
        "target_ratio": TARGET_RATIO,
        "target_met": {k: ratios[k] <= TARGET_RATIO for k in checked},
        "bench_seconds": round(time.perf_counter() - started, 1),
    }
    path = common.write_result(args.out, result, "training_speed" + ("" if args.size == "bench" else f"_{args.size}")
                               + ("_compile" if args.compile else ""))
    it = stats["iteration_with_loader_s"]
    print(f"[a] training s/iter (median, with loader): nnU-Net {it[nn]['median']:.3f}, MultiRec {it[mr]['median']:.3f} "
          f"(x{ratios['iteration_with_loader_s']:.3f}); fixed batch x{ratios['fixed_batch_step_s']:.3f} wall, "
          f"x{ratios['fixed_batch_step_cpu_s']:.3f} CPU; "
          f"peak memory x{ratios['peak_memory']:.3f}; "
          + (f"epoch x{ratios['epoch_s']:.3f}; " if "epoch_s" in ratios else "") + f"target <= {TARGET_RATIO}: "
          f"{'met' if all(result['target_met'].values()) else 'MISSED'}; load {load_start[0]}->{load_end[0]}; {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
