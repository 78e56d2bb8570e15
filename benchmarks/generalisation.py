"""Train the default recipe on each set of a data-set family and report test mAP and training time.

    python benchmarks/datasets.py data/family --held-out
    python benchmarks/generalisation.py data/family --results runs/generalisation
    python benchmarks/generalisation.py data/family tiny-dense --results runs/g -- --epochs 1

For each set D (a sub-folder of the family; all of them, or the ones named) it runs, as a user would and with
this Python:

    python -m singleshot default-boxes --data D --fit --json R/boxes.json     ("n/a" when it fails)
    python -m singleshot train --data D --out R [options after --]
    python -m singleshot eval R/best.pt --data D --split test --metric voc07 --json R/test.json

with R = RESULTS/<set>, timing the training and reading R/metrics.csv for the epochs. It writes
RESULTS/generalisation.md (a table) and RESULTS/generalisation.json (the raw numbers). A set whose
R/test.json exists is not run again unless --force (its row is read back from R/).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], log: Path) -> tuple[int, float]:
    """Run ``cmd`` from the repository root, output to ``log``; returns (exit status, seconds)."""
    began = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    return rc, time.perf_counter() - began


def _coverage(boxes_json: Path) -> tuple[float | None, float | None]:
    """Default-box coverage of the training objects before and after fitting (default-boxes --fit --json)."""
    try:
        data = json.loads(boxes_json.read_text())
    except (OSError, ValueError):
        return None, None
    return data.get("coverage"), data.get("fitted_coverage")


def _epochs(metrics_csv: Path) -> int | None:
    if not metrics_csv.exists():
        return None
    with metrics_csv.open() as f:
        return sum(1 for _ in csv.DictReader(f))


def _images(data: Path, split: str) -> int | None:
    """Images in a split, read with singleshot (None when it cannot be read)."""
    sys.path.insert(0, str(ROOT))
    from singleshot.data import open_dataset
    from singleshot.errors import UserError

    try:
        return len(open_dataset(data, split))
    except (UserError, OSError, ValueError):
        return None


def run_set(data: Path, results: Path, extra: list[str], force: bool) -> dict:
    """Run one set, or only read its results back when R/test.json exists (and not ``force``)."""
    r = results / data.name
    timing = r / "timing.json"
    if force or not (r / "test.json").exists():
        r.mkdir(parents=True, exist_ok=True)
        py = [sys.executable, "-m", "singleshot"]
        boxes = [*py, "default-boxes", "--data", str(data), "--fit", "--json", str(r / "boxes.json")]
        rc_boxes, _ = _run(boxes, r / "boxes.log")
        for stale in ("test.json", "boxes.json") if rc_boxes != 0 else ("test.json",):
            (r / stale).unlink(missing_ok=True)
        rc_train, seconds = _run(
            [*py, "train", "--data", str(data), "--out", str(r), "--overwrite", *extra], r / "train.log"
        )
        rc_eval = None
        if rc_train == 0 and (r / "best.pt").exists():
            cmd = [
                *py,
                "eval",
                str(r / "best.pt"),
                "--data",
                str(data),
                "--split",
                "test",
                "--metric",
                "voc07",
            ]
            rc_eval, _ = _run([*cmd, "--json", str(r / "test.json")], r / "eval.log")
        run = {
            "train_seconds": round(seconds, 1),
            "train_exit": rc_train,
            "eval_exit": rc_eval,
            "extra": extra,
        }
        run["default_boxes"] = "ok" if rc_boxes == 0 else "n/a"
        timing.write_text(json.dumps(run, indent=2) + "\n")
    run = json.loads(timing.read_text()) if timing.exists() else {"default_boxes": "n/a"}
    test = json.loads((r / "test.json").read_text()) if (r / "test.json").exists() else {}
    before, after = _coverage(r / "boxes.json")
    return {
        "name": data.name,
        "train_images": _images(data, "train"),
        "test_images": _images(data, "test"),
        "coverage_before": before,
        "coverage_after": after,
        "test_map": test.get("map"),
        "epochs": _epochs(r / "metrics.csv"),
        "train_seconds": run.get("train_seconds"),
        "train_exit": run.get("train_exit"),
        "eval_exit": run.get("eval_exit"),
        "default_boxes": run.get("default_boxes"),
        "extra": run.get("extra"),
    }


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


def table(rows: list[dict], family: dict) -> str:
    lines = [
        "| data set | what makes it hard | layout | train / test images | default-box coverage (default -> fitted) "
        "| test mAP (VOC07) | training time |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        d = family.get(row["name"], {})
        seconds = row["train_seconds"]
        minutes = "n/a" if seconds is None else f"{seconds / 60:.1f} min"
        minutes += f" ({row['epochs']} epochs)" if row["epochs"] else ""
        if row["train_exit"] not in (0, None):
            minutes += f", train failed (exit {row['train_exit']})"
        lines.append(
            f"| {row['name']}{' (held out)' if d.get('held_out') else ''} | {d.get('hard', '')} "
            f"| {d.get('layout', '').upper()} | {row['train_images']} / {row['test_images']} "
            f"| {_pct(row['coverage_before'])} -> {_pct(row['coverage_after'])} | {_pct(row['test_map'])} | {minutes} |"
        )
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("family", help="folder written by benchmarks/datasets.py")
    parser.add_argument("sets", nargs="*", help="the sets to run (default: every sub-folder with data)")
    parser.add_argument("--results", default="runs/generalisation", help="where runs and tables go")
    parser.add_argument("--force", action="store_true", help="run sets again whose results exist")
    args = parser.parse_args(argv)
    family_dir = Path(args.family).resolve()
    listing = family_dir / "family.json"
    family = json.loads(listing.read_text()) if listing.exists() else {}
    names = args.sets or sorted(p.name for p in family_dir.iterdir() if p.is_dir())
    missing = [n for n in names if not (family_dir / n).is_dir()]
    if missing:
        print(
            f"error: {family_dir / missing[0]} does not exist; write it with benchmarks/datasets.py.",
            file=sys.stderr,
        )
        return 2
    results = Path(args.results).resolve()
    results.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        row = run_set(family_dir / name, results, extra, args.force)
        rows.append(row)
        print(
            f"{name}: test mAP {_pct(row['test_map'])}, {row['train_seconds']} s training, "
            f"{row['epochs']} epochs, default-boxes {row['default_boxes']}",
            flush=True,
        )
    _write(results / "generalisation.md", table(rows, family))
    _write(
        results / "generalisation.json",
        json.dumps({"family": str(family_dir), "rows": rows}, indent=2) + "\n",
    )
    print(f"wrote {results / 'generalisation.md'} and {results / 'generalisation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
