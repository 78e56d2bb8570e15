"""The data index at COCO scale: singleshot's COCO reading beside pycocotools', on a generated file the size
of COCO train2017's instances (118 287 images, about 735 000 boxes, 80 categories with COCO's gaps).

    python benchmarks/index.py                    # a temporary folder, removed afterwards
    python benchmarks/index.py --keep data/index  # written once there, reused by later runs

Nothing is downloaded: the JSON is generated (fixed seed) with COCO's fields (``segmentation`` a 4-point
polygon, or an RLE for crowds; ``area``; ``iscrowd``), and every image file is a hard link to one of a few
small JPEGs of the annotated size, so that ``check-data --no-decode`` reads real headers. Each figure comes
from a fresh subprocess:

- ``pycocotools.coco.COCO(file)`` and ``singleshot.data.open_dataset(file)``: wall time and peak RSS
  (``ru_maxrss``), and the RSS before loading (the interpreter and its imports; singleshot imports torch
  only once the file is read, so its peak and the loaded torch do not add up);
- ``python -m singleshot check-data --data FILE --no-decode``: wall time;
- loader workers: a ``DataLoader`` with 2 workers reads every image's annotation once (an epoch without
  pixels); each worker reports its own PSS and private memory (``/proc/self/smaps_rollup``) after its first
  batch and after its last, for singleshot's index and, beside it, for pycocotools' (``loadAnns`` of
  ``getAnnIds``), whose Python objects workers copy page by page as they touch them.

Prints a Markdown table (``--json`` for the raw figures).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUM_IMAGES = 118_287
BOXES_PER_IMAGE = 735_000 / NUM_IMAGES
# COCO's 80 category ids (1..90 with gaps)
CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
SIZES = [(640, 480), (480, 640), (640, 427), (427, 640), (500, 375), (640, 360)]


def generate(folder: Path, num_images: int = NUM_IMAGES, seed: int = 0) -> Path:
    """Write ``folder/annotations/instances_train2017.json`` and ``folder/train2017/*.jpg``; returns the JSON."""
    import numpy as np
    from PIL import Image

    json_path = folder / "annotations" / "instances_train2017.json"
    if json_path.is_file():
        return json_path
    rng = np.random.default_rng(seed)
    images_dir = folder / "train2017"
    images_dir.mkdir(parents=True, exist_ok=True)
    (folder / "annotations").mkdir(exist_ok=True)
    originals = folder / "originals"
    originals.mkdir(exist_ok=True)
    for w, h in SIZES:
        Image.new("RGB", (w, h), (120, 110, 100)).save(originals / f"{w}x{h}.jpg", quality=50)
    ids = np.sort(rng.choice(600_000, num_images, replace=False)) + 1
    size_of = rng.integers(0, len(SIZES), num_images)
    counts = rng.poisson(BOXES_PER_IMAGE, num_images)
    images, annotations = [], []
    for iid, s, n in zip(ids.tolist(), size_of.tolist(), counts.tolist()):
        w, h = SIZES[s]
        name = f"{iid:012d}.jpg"
        images.append({"license": 1, "file_name": name, "height": h, "width": w, "id": iid})
        os.link(originals / f"{w}x{h}.jpg", images_dir / name)
        if not n:
            continue
        x = rng.uniform(0, w - 4, n)
        y = rng.uniform(0, h - 4, n)
        bw = np.minimum(rng.uniform(2, w / 2, n), w - x)
        bh = np.minimum(rng.uniform(2, h / 2, n), h - y)
        crowd = rng.random(n) < 0.01
        cats = rng.choice(CATEGORY_IDS, n)
        for k in range(n):
            box = [round(float(v), 2) for v in (x[k], y[k], bw[k], bh[k])]
            x1, y1, x2, y2 = box[0], box[1], box[0] + box[2], box[1] + box[3]
            segmentation = (
                {"counts": [int(v) for v in rng.integers(1, 500, 6)], "size": [h, w]}
                if crowd[k]
                else [[round(v, 2) for v in (x1, y1, x2, y1, x2, y2, x1, y2)]]
            )
            annotations.append(
                {
                    "segmentation": segmentation,
                    "area": round(box[2] * box[3], 2),
                    "iscrowd": int(crowd[k]),
                    "image_id": iid,
                    "bbox": box,
                    "category_id": int(cats[k]),
                    "id": len(annotations) + 1,
                }
            )
    categories = [{"supercategory": "thing", "id": c, "name": f"class{c}"} for c in CATEGORY_IDS]
    data = {"info": {"description": "generated"}, "images": images, "annotations": annotations}
    data["categories"] = categories
    tmp = json_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, json_path)
    return json_path


_MEMORY = """
import resource
def rss_mb():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""

_LOAD = {
    "pycocotools": "from pycocotools.coco import COCO\nload = lambda f: COCO(f)\n",
    "singleshot": "from singleshot.data import open_dataset\nload = lambda f: open_dataset(f)\n",
}

_TIMED_LOAD = """
import contextlib, io, json, sys, time
before = rss_mb()
start, cpu = time.perf_counter(), time.process_time()
with contextlib.redirect_stdout(io.StringIO()):
    index = load(sys.argv[1])
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
print(json.dumps({"seconds": seconds, "cpu_s": cpu, "peak_mb": peak_mb(), "before_mb": before, "after_mb": rss_mb()}))
"""

# A data set that returns each image's annotation, and the worker's own memory with its first and last one.
_WORKERS = """
import contextlib, io, json, sys, time
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

def smaps():
    fields = {}
    for line in open('/proc/self/smaps_rollup'):
        parts = line.split()
        if len(parts) == 3 and parts[2] == 'kB':
            fields[parts[0].rstrip(':')] = int(parts[1]) / 1024
    return {'pss_mb': fields['Pss'], 'rss_mb': fields['Rss'],
            'private_mb': fields['Private_Clean'] + fields['Private_Dirty']}

class Annotations(Dataset):
    def __init__(self, index, n):
        self.index, self.n = index, n
    def __len__(self):
        return self.n
    def __getitem__(self, i):
        got = annotation(self.index, i)
        return got, (get_worker_info().id, smaps()) if i % BATCH == 0 else None

BATCH = 256
with contextlib.redirect_stdout(io.StringIO()):
    index = load(sys.argv[1])
n = count(index)
loader = DataLoader(Annotations(index, n), batch_size=BATCH, num_workers=2, collate_fn=list)
first, last, objects = {}, {}, 0
start = time.perf_counter()
for batch in loader:
    for got, seen in batch:
        objects += got
        if seen is not None:
            first.setdefault(seen[0], seen[1])
            last[seen[0]] = seen[1]
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "objects": objects, "first": first, "last": last, "parent": smaps()}))
"""

_ACCESS = {
    "pycocotools": (
        "ids = None\n"
        "def count(coco):\n"
        "    global ids\n"
        "    ids = sorted(coco.imgs)\n"
        "    return len(ids)\n"
        "def annotation(coco, i):\n"
        "    anns = coco.loadAnns(coco.getAnnIds(imgIds=ids[i]))\n"
        "    return len([a['bbox'] for a in anns if not a['iscrowd']])\n"
    ),
    "singleshot": (
        "count = len\n"
        "def annotation(dataset, i):\n"
        "    t = dataset.annotation(i)\n"
        "    return int((~t['iscrowd']).sum())\n"
    ),
}


def _python(code: str, *args: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=ROOT, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"measurement failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(json_path: Path) -> dict:
    results = {}
    for name in ("pycocotools", "singleshot"):
        results[f"load {name}"] = _python(_MEMORY + _LOAD[name] + _TIMED_LOAD, str(json_path))
        print(f"load {name}: {results[f'load {name}']}", file=sys.stderr)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    start, children = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    check = subprocess.run(
        [sys.executable, "-m", "singleshot", "check-data", "--data", str(json_path), "--no-decode"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    results["check-data --no-decode"] = {
        "seconds": time.perf_counter() - start,
        "cpu_s": after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime,
        "exit": check.returncode,
        "last_line": (check.stdout.strip().splitlines() or [""])[-1],
    }
    print(f"check-data: {results['check-data --no-decode']}", file=sys.stderr)
    for name in ("singleshot", "pycocotools"):
        results[f"workers {name}"] = _python(_MEMORY + _LOAD[name] + _ACCESS[name] + _WORKERS, str(json_path))
        print(f"workers {name}: {results[f'workers {name}']}", file=sys.stderr)
    return results


def table(results: dict) -> str:
    py, ss = results["load pycocotools"], results["load singleshot"]
    lines = [
        "| | pycocotools `COCO(file)` | singleshot `open_dataset(file)` | singleshot / pycocotools |",
        "|---|---:|---:|---:|",
        f"| load time | {py['seconds']:.1f} s | {ss['seconds']:.1f} s | {ss['seconds'] / py['seconds']:.2f} |",
        f"| load CPU time | {py['cpu_s']:.1f} s | {ss['cpu_s']:.1f} s | {ss['cpu_s'] / py['cpu_s']:.2f} |",
        f"| peak RSS | {py['peak_mb']:.0f} MB | {ss['peak_mb']:.0f} MB | {ss['peak_mb'] / py['peak_mb']:.2f} |",
        f"| RSS before loading (imports) | {py['before_mb']:.0f} MB | {ss['before_mb']:.0f} MB | |",
        f"| peak RSS above the imports | {py['peak_mb'] - py['before_mb']:.0f} MB | "
        f"{ss['peak_mb'] - ss['before_mb']:.0f} MB | "
        f"{(ss['peak_mb'] - ss['before_mb']) / (py['peak_mb'] - py['before_mb']):.2f} |",
        f"| RSS after loading, index held | {py['after_mb']:.0f} MB | {ss['after_mb']:.0f} MB | |",
    ]
    check = results["check-data --no-decode"]
    lines.append(
        f"\n`singleshot check-data --no-decode`: {check['seconds']:.1f} s, {check['cpu_s']:.1f} CPU s "
        f"(exit {check['exit']}: {check['last_line']})\n"
    )
    lines += [
        "| 2 loader workers, one pass over every annotation | worker | PSS first batch | PSS last batch "
        "| private first | private last |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("singleshot", "pycocotools"):
        w = results[f"workers {name}"]
        for wid in sorted(w["first"]):
            a, b = w["first"][wid], w["last"][wid]
            lines.append(
                f"| {name} ({w['seconds']:.0f} s, {w['objects']} boxes) | {wid} | {a['pss_mb']:.0f} MB | "
                f"{b['pss_mb']:.0f} MB | {a['private_mb']:.0f} MB | {b['private_mb']:.0f} MB |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--keep", type=Path, help="write the data set here once and reuse it (else a temp folder)"
    )
    parser.add_argument("--images", type=int, default=NUM_IMAGES)
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON too")
    args = parser.parse_args(argv)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="singleshot-index-"))
    try:
        start = time.perf_counter()
        json_path = generate(folder, args.images)
        print(f"data: {json_path} ({time.perf_counter() - start:.0f} s to make or find)", file=sys.stderr)
        results = measure(json_path)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(table(results))
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
