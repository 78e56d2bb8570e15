"""``singleshot bench``: speed side by side with torchvision, written to docs/benchmarks.md."""

from __future__ import annotations

import argparse

from singleshot.errors import UserError

HELP = "Measure singleshot against torchvision's SSD side by side (median of several runs)."
EXAMPLES = """\
examples:
  singleshot bench                          # every row on the CPU, table written to docs/benchmarks.md
  singleshot bench --rows loss,post         # only the loss and post-processing rows
  singleshot bench --device cuda --no-write # GPU rows, printed only
  singleshot bench --threads 1              # one CPU thread: steadier when other work shares the machine
  singleshot bench --keep-freed-memory --no-write  # both sides with the commands' malloc setting
  singleshot bench --rows runtimes,int8 --threads 2  # zoo models: predict vs onnxruntime / OpenVINO; int8
"""

ROWS = ("loss", "post", "predict", "train", "data", "coco", "runtimes", "int8")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rows", default=",".join(ROWS), help=f"comma-separated subset of {', '.join(ROWS)} (default: all)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed runs per row (default: per row, 2 to 11)"
    )
    parser.add_argument(
        "--out", default="docs/benchmarks.md", help="markdown file to update (default: docs/benchmarks.md)"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print the table without writing the markdown file"
    )
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="time both sides with the malloc setting the other singleshot commands use "
        "(freed memory kept for reuse); default: a default process, as a script calling "
        "either library",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's, one per core); 1 is steadier on a busy machine",
    )


def _train_seconds_per_image(rows) -> float | None:
    """Seconds per image of our SSD300 training step, when the train row ran before."""
    for row in rows:
        if row.name.startswith("SSD300 train step") and row.ours:
            return row.ours / row.images
    return None


def run(args: argparse.Namespace) -> int:
    import torch

    from singleshot import bench

    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise UserError(f"--rows: unknown row {unknown[0]!r}; choose from {', '.join(ROWS)}")
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise UserError(f"--device {args.device!r} is not a device name; use cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: no CUDA device is available here; use --device cpu")
    if args.repeats is not None and args.repeats < 1:
        raise UserError(f"--repeats {args.repeats}: give at least 1 timed run per row")
    kw = {} if args.repeats is None else {"repeats": args.repeats}
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads {args.threads}: give a positive number of threads")
        torch.set_num_threads(args.threads)

    results = []
    steps = {
        "loss": lambda: [bench.bench_loss(device, **kw)],
        "post": lambda: [bench.bench_postprocess(device, **kw)],
        "predict": lambda: bench.bench_predict(device, **kw),
        "train": lambda: [bench.bench_train_step(device, **kw)],
        "data": lambda: bench.bench_data(train_seconds_per_image=_train_seconds_per_image(results), **kw),
        "coco": lambda: [bench.bench_coco(**kw)],
        "runtimes": lambda: bench.bench_runtimes(device, threads=args.threads or 2, **kw),
        "int8": lambda: [bench.bench_int8(threads=args.threads or 2, **kw)],
    }
    for name in rows:
        print(f"measuring {name} ...", flush=True)
        results.extend(steps[name]())
    table = bench.format_table(results, device, kept_freed_memory=args.keep_freed_memory)
    print()
    print(table)
    if not args.no_write:
        bench.write_markdown(table, args.out)
        print(f"\nwrote {args.out}")
    return 0
