"""Run the shipped experiments of the Experiments page (`vit_core.experiments.sweep_plan`) and
write one small JSON result per run to assets/experiments/.

Resumable: a run whose result file exists is skipped; an unfinished run continues exactly from
its `runs/sweep/<key>/last.pt` (saved every `--save-every` steps). Run it in the background on
a shared CPU:

    nice -n 10 python scripts/sweep.py --data ../shared/data/cifar10_jpeg.tar.gz --threads 1
    python scripts/sweep.py --list                       # the plan and what is finished
    python scripts/sweep.py --only resnet_n1000 vit_n1000 ...   # some runs only
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vit_core.batches import normalize_batch  # noqa: E402
from vit_core.checkpoints import load_checkpoint  # noqa: E402
from vit_core.experiments import (  # noqa: E402
    ABLATION_SIZE,
    MEASURE_IMAGES,
    RESULTS_DIR,
    TEST_IMAGES,
    baseline_key,
    load_results,
    machine_info,
    model_measures,
    result_path,
    sweep_plan,
    write_result,
)
from vit_core.export import _extra_metadata, save_float16  # noqa: E402
from vit_core.sources import load_split  # noqa: E402
from vit_core.subsets import balanced_subset  # noqa: E402
from vit_core.train import StepMetrics, Trainer  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10_jpeg.tar.gz"))
    p.add_argument("--runs", default=str(ROOT / "runs" / "sweep"), help="run folders (last.pt, metrics.json)")
    p.add_argument("--results", default=str(RESULTS_DIR), help="where the result JSON files go")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--save-every", type=int, default=50, help="steps between training-state saves")
    p.add_argument("--only", nargs="*", default=None, help="run keys to run (default: all)")
    p.add_argument("--list", action="store_true", help="print the plan and what is finished, then exit")
    p.add_argument("--table", action="store_true", help="print the finished runs as a markdown table, then exit")
    args = p.parse_args(argv)
    plan = [r for r in sweep_plan() if args.only is None or r.key in args.only]
    if args.table:
        print_table(args.results)
        return 0
    if args.list:
        for r in plan:
            done = result_path(r.key, args.results).is_file()
            print(f"{'done' if done else 'todo'}  {r.key:28s} {r.arch:6s} n={r.train_size:<6d} {r.variant}")
        return 0
    torch.set_num_threads(args.threads)
    todo = [r for r in plan if not result_path(r.key, args.results).is_file()]
    if not todo:
        print("every run is finished")
        export_cnn(Path(args.runs), Path(args.results))
        return 0
    t0 = time.perf_counter()
    train = load_split(args.data, "train")
    test = load_split(args.data, "test")
    probe_idx = balanced_subset(test.labels, MEASURE_IMAGES, seed=0, num_classes=test.num_classes)
    probe = (test.images[probe_idx], test.labels[probe_idx])  # the measures' images, from the whole test set
    test = test.subset(balanced_subset(test.labels, min(TEST_IMAGES, len(test)), seed=0, num_classes=test.num_classes))
    print(f"data loaded in {time.perf_counter() - t0:.0f}s; {len(todo)} of {len(plan)} runs to do", flush=True)
    for r in todo:
        if result_path(r.key, args.results).is_file():  # finished meanwhile by another sweep process
            continue
        run_one(r, train, test, probe, Path(args.runs), args.results, args.save_every, " ".join(sys.argv))
    export_cnn(Path(args.runs), Path(args.results))
    return 0


def print_table(results: str) -> None:
    """The finished runs as the markdown table of assets/README.md."""
    print(
        "| run | params | test acc | train s | wall s | load avg (start, 1 min) | MAD block 1 / last (px) | pos. structure |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for key, d in sorted(load_results(results).items()):
        m = d["measures"]
        mad = m.get("mean_attention_distance") or m.get("receptive_field_distance") or []
        score = m.get("position_structure_score")
        print(
            f"| {key} | {d['params']:,} | {100 * d['test_acc']:.1f}% | {d['train_seconds']:.0f} | "
            f"{d['wall_seconds_this_session']:.0f} | {d['machine_start']['load_average'][0]} | "
            f"{mad[0]:.1f} / {mad[-1]:.1f} | {'' if score is None else f'{score:.3f}'} |"
        )


def export_cnn(runs: Path, results: Path) -> None:
    """Ship the 10,000-image demo ResNet's weights (float16, ~0.3 MB) for the page's filters and
    receptive field, once its run has finished."""
    src = runs / f"resnet_n{ABLATION_SIZE}" / "model.safetensors"
    dest = results / f"resnet_demo_n{ABLATION_SIZE}.safetensors"
    if src.is_file() and not dest.is_file():
        save_float16(load_checkpoint(src), dest, _extra_metadata(src))
        print(f"wrote {dest}", flush=True)


def run_one(r, train, test, probe, runs: Path, results: str, save_every: int, command: str) -> None:
    out = runs / r.key
    started = time.time()
    machine_start = machine_info()

    def on_step(m: StepMetrics) -> None:
        if m.step % save_every == 0 and m.step < m.total_steps:
            trainer.save_state()
        if m.step % 25 == 0:
            print(f"  {r.key} step {m.step}/{m.total_steps} loss {m.loss:.3f} {m.images_per_s:.0f} img/s", flush=True)

    if (out / "last.pt").is_file():
        trainer = Trainer.resume(out / "last.pt", train, test, out_dir=out, on_step=on_step)
        print(f"{r.key}: resuming at step {trainer.step}", flush=True)
    else:
        trainer = Trainer(r.config, train, test, out_dir=out, on_step=on_step)
        print(f"{r.key}: {trainer.model.num_params():,} params, {trainer.total_steps} steps", flush=True)
    res = trainer.run()
    if res.status != "finished" or res.final is None:
        print(f"{r.key}: {res.status}: {res.message}", flush=True)
        return
    model = trainer.model.eval()
    x = normalize_batch(probe[0], r.config.mean, r.config.std)
    t_measure = time.perf_counter()
    measures = model_measures(model, x, probe[1])
    groups = [r.group] + (["ablation"] if r.key == baseline_key() else [])
    doc = {
        "key": r.key,
        "groups": groups,
        "arch": r.arch,
        "variant": r.variant,
        "train_size": r.train_size,
        "steps": trainer.step,
        "batch_size": r.config.batch_size,
        "epochs": round(trainer.step / trainer.steps_per_epoch, 3),
        "seed": r.config.seed,
        "params": trainer.model.num_params(),
        "test_acc": res.final.acc,
        "test_loss": res.final.loss,
        "test_images": len(test),
        "train_seconds": trainer.train_seconds,
        "wall_seconds_this_session": time.time() - started,
        "measure_seconds": time.perf_counter() - t_measure,
        "measure_images": int(x.shape[0]),
        "measures": measures,
        "train_config": r.config.to_dict(),
        "train_data": trainer.train_data.source,
        "machine_start": machine_start,
        "machine_end": machine_info(),
        "command": command,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = write_result(doc, results)
    print(f"{r.key}: test accuracy {res.final.acc:.2%}, {trainer.train_seconds:.0f}s training -> {path}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
