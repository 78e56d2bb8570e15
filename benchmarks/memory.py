"""Memory of a long run: the trainer's RSS and PSS (main process and loader workers) after each epoch.

    nice -n 10 python benchmarks/memory.py            # 20 epochs, a temporary folder
    nice -n 10 python benchmarks/memory.py --epochs 5 --keep runs/memory

A tiny generated data set (``singleshot synth``: 60 images of 96 px, 3 classes, 42 for training) is
trained with ``singleshot train`` as a user would run it (``ssd_small``, batch 8, 2 workers, no
validation); when the log says an epoch is done, the script reads ``/proc/PID/status`` (RSS) and
``/proc/PID/smaps_rollup`` (PSS) of the trainer and of its children (the loader workers). Prints a Markdown
table, one row per epoch, and the growth from the first epoch to the last.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_EPOCH_DONE = re.compile(r"epoch (\d+)/(\d+) done")


def _kb(path: str, field: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(c) for c in task.read_text().split()]
        except OSError:
            pass
    return found


def memory(pid: int) -> dict:
    """RSS and PSS in MB of ``pid`` and of each of its children."""
    workers = _children(pid)

    def one(p):
        return {
            "rss_mb": _kb(f"/proc/{p}/status", "VmRSS") / 1024,
            "pss_mb": _kb(f"/proc/{p}/smaps_rollup", "Pss") / 1024,
        }

    return {"main": one(pid), "workers": [one(w) for w in workers]}


def run(folder: Path, epochs: int) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    data = folder / "data"
    if not (data / "ImageSets").exists():
        subprocess.run(
            [sys.executable, "-m", "singleshot", "synth", str(data), "--images", "60", "--image-size", "96"]
            + ["--classes", "3", "--overwrite"],
            check=True,
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
    out = folder / "run"
    shutil.rmtree(out, ignore_errors=True)
    argv = [sys.executable, "-m", "singleshot", "train", "--data", str(data), "--out", str(out)]
    argv += ["--model", "ssd_small", "--image-size", "96", "--batch-size", "8", "--workers", "2"]
    argv += ["--epochs", str(epochs), "--val-split", "none", "--train-split", "train", "--no-progress"]
    rows = []
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, cwd=ROOT
    )
    for line in proc.stderr:
        done = _EPOCH_DONE.search(line)
        if done:
            rows.append(
                {"epoch": int(done.group(1)), "seconds": time.perf_counter() - start, **memory(proc.pid)}
            )
            print(line.rstrip(), file=sys.stderr)
    if proc.wait() != 0:
        raise SystemExit(f"training failed (exit {proc.returncode})")
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| epoch | time | main RSS | main PSS | workers RSS (each) | workers PSS (sum) |",
        "|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        each = ", ".join(f"{w['rss_mb']:.0f}" for w in r["workers"])
        pss = sum(w["pss_mb"] for w in r["workers"])
        lines.append(
            f"| {r['epoch']} | {r['seconds']:.0f} s | {r['main']['rss_mb']:.0f} MB | {r['main']['pss_mb']:.0f} MB "
            f"| {each} MB | {pss:.0f} MB |"
        )
    if len(rows) > 1:
        first, last = rows[0], rows[-1]

        def total(r, key):
            return r["main"][key] + sum(w[key] for w in r["workers"])

        lines.append(
            f"\nfrom epoch {first['epoch']} to {last['epoch']}: main RSS "
            f"{last['main']['rss_mb'] - first['main']['rss_mb']:+.1f} MB, main + workers PSS "
            f"{total(last, 'pss_mb') - total(first, 'pss_mb'):+.1f} MB"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument(
        "--keep", type=Path, help="work here (data kept for the next run) instead of a temp folder"
    )
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON too")
    args = parser.parse_args(argv)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="singleshot-memory-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        rows = run(folder, args.epochs)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(table(rows))
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
