"""Small pieces of run state: random-number-generator snapshots, per-sample seeds, atomic file writes.

Exact resume rests on two rules:

* every random choice of the data pipeline (order and augmentation) is a pure function of
  ``(seed, epoch, index)``: the sampler draws its permutation from a generator seeded by
  :func:`epoch_seed`, and :func:`seed_everything` reseeds torch, numpy and ``random`` before each sample
  is augmented, so neither the number of workers nor where a run stopped changes what a sample becomes;
* the remaining global states (torch CPU and CUDA, numpy, ``random``) are captured with
  :func:`capture_rng` into the checkpoint and put back by :func:`restore_rng`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from singleshot.files import write_bytes_atomic


def epoch_seed(seed: int, epoch: int, index: int = -1) -> int:
    """A 63-bit seed derived from ``(seed, epoch, index)`` (``index`` -1: the epoch's own seed)."""
    # SplitMix64-style mixing of the three integers: nearby inputs give unrelated seeds.
    x = seed * 0x9E3779B97F4A7C15 + (epoch + 1) * 0xBF58476D1CE4E5B9 + (index + 2) * 0x94D049BB133111EB
    x &= (1 << 64) - 1
    x ^= x >> 31
    x = (x * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    x ^= x >> 29
    return x & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and ``random`` from one integer."""
    torch.manual_seed(seed)
    seed_host(seed)


def seed_host(seed: int) -> None:
    """Seed the CPU generators only (torch's default CPU generator, numpy, ``random``): what data
    augmentation draws from. Cheap enough for every sample (``torch.manual_seed`` also seeds every CUDA
    device and costs about a millisecond)."""
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (1 << 32))


def capture_rng() -> dict:
    """The state of every global random-number generator, for a checkpoint.

    Plain types and tensors only (numpy's key array becomes a tensor), so that checkpoints load with
    ``torch.load(weights_only=True)``.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "random": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Put back what :func:`capture_rng` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    A reader (or a crash) sees either the old file or the new one, never half of it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj) -> None:
    """``obj`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv(path: str | os.PathLike, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """Rows (dicts) as CSV with a header, atomically; missing values are left empty."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    atomic_write_text(path, buf.getvalue())


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value
