"""Checkpoints: one file that rebuilds a model alone.

A checkpoint is a plain dict saved with ``torch.save`` (loadable with ``weights_only=True``)::

    format            "singleshot.checkpoint"
    version           2
    arch, arch_args   the zoo name and every keyword argument of its builder, as resolved (image_size,
                      default boxes and defaults included)
    priors            Tensor[P, 4] float32: the default boxes the model was trained with, checked on loading
    num_classes       C, background included
    class_names       C - 1 names
    preprocessing     {"image_size": [h, w], "mean": [3], "std": [3], "antialias": bool}
    postprocessing    {"score_threshold", "nms_threshold", "candidates_per_class", "max_detections", "variances"}
    state_dict        the weights
    ...               any extra training state given to save_checkpoint (optimizer, scheduler, epoch, ...),
                      in plain types and tensors so that weights_only loading accepts it

    save_checkpoint("runs/a/last.pt", model, optimizer=opt.state_dict(), epoch=3)   # atomic
    model = load_checkpoint("runs/a/last.pt")
    state = read_checkpoint("runs/a/last.pt")["optimizer"]

Version 1 (singleshot before the arch_args were resolved) stored only the builder arguments given by the
user and no priors; such files still load, with this version's builder defaults and without the check.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch
from torch import Tensor, nn

from singleshot import __version__
from singleshot.errors import UserError
from singleshot.files import atomic_write
from singleshot.models.ssd import SSD
from singleshot.models.zoo import build_model

FORMAT = "singleshot.checkpoint"
VERSION = 2
_FIELDS = {
    "arch": str,
    "arch_args": dict,
    "num_classes": int,
    "class_names": list,
    "preprocessing": dict,
    "postprocessing": dict,
    "state_dict": dict,
}
RESERVED_KEYS = frozenset({"format", "version", "singleshot_version", "priors", *_FIELDS})
# Rebuilt default boxes must equal the stored ones up to float32 rounding (they are relative coordinates).
PRIORS_ATOL = 1e-5
# torch.save's legacy (non-zip) format starts with this number, pickled (torch.serialization.MAGIC_NUMBER).
_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def unwrap_model(model: nn.Module) -> SSD:
    """The SSD inside a DistributedDataParallel / DataParallel wrapper or a ``torch.compile`` module."""
    while True:
        if isinstance(model, SSD):
            return model
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            raise TypeError(f"expected a singleshot SSD model, got {type(model).__name__}")
        model = inner


def checkpoint_dict(model: nn.Module, **extra) -> dict:
    """The checkpoint of ``model`` (unwrapped from DDP / torch.compile) plus ``extra`` keys."""
    model = unwrap_model(model)
    if model.arch is None:
        raise ValueError("this SSD was not made by build_model, so a checkpoint could not rebuild it")
    clash = RESERVED_KEYS & set(extra)
    if clash:
        raise ValueError(f"extra checkpoint keys {sorted(clash)} are reserved")
    settings = model.postprocess_settings()
    settings["variances"] = list(settings["variances"])
    return {
        "format": FORMAT,
        "version": VERSION,
        "singleshot_version": __version__,
        "arch": model.arch,
        "arch_args": dict(model.arch_args),
        "num_classes": int(model.num_classes),
        "class_names": list(model.class_names),
        "preprocessing": {
            "image_size": list(model.image_size),
            "mean": list(model.mean),
            "std": list(model.std),
            "antialias": bool(model.antialias),
        },
        "postprocessing": settings,
        "priors": model.priors_for(model.image_size).float().cpu(),
        "state_dict": model.state_dict(),
        **extra,
    }


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **extra) -> Path:
    """Write ``model``'s checkpoint (plus ``extra`` training state) to ``path`` atomically.

    The file is written next to ``path`` under a temporary name, synced, then renamed over ``path``
    (:func:`singleshot.files.atomic_write`), so that a crash never leaves a half-written checkpoint.
    Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = checkpoint_dict(model, **extra)
    return atomic_write(path, lambda f: torch.save(data, f))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_torch_file(path: str) -> bool:
    """Whether ``path`` starts as ``torch.save`` writes: a zip archive with a ``data.pkl`` record (a damaged
    archive counts), or the legacy format's magic number."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                return any(name.rsplit("/", 1)[-1] == "data.pkl" for name in archive.namelist())
        except (zipfile.BadZipFile, OSError, EOFError):
            return True  # a truncated archive; a checkpoint is the likely thing to have been cut short
    return head.startswith(b"\x80") and _LEGACY_MAGIC in head


def _damaged(path: str) -> UserError:
    return UserError(
        f"checkpoint {path} cannot be read: it is truncated or damaged; copy it again or use another checkpoint"
    )


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """The raw checkpoint dict (with any extra keys), validated.

    Raises UserError when the file is missing, truncated, not a PyTorch file, or not a singleshot checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(
            f"checkpoint {path} does not exist; check the path (training writes last.pt and best.pt)"
        )
    try:
        torch_file = _is_torch_file(path)
    except PermissionError:
        raise UserError(f"checkpoint {path} cannot be read: permission denied") from None
    except OSError as exc:
        raise UserError(f"checkpoint {path} cannot be read ({exc.strerror or exc})") from None
    if not torch_file:  # refused before torch.load, whose errors and warnings on such bytes are long
        raise UserError(
            f"{path} is not a PyTorch checkpoint: pass a .pt file written by 'singleshot train' or save_checkpoint"
        )
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights" in str(exc).lower():
            raise UserError(
                f"checkpoint {path} holds Python objects besides plain data and tensors, which singleshot "
                "does not unpickle (they could run code); save training state as plain values"
            ) from None
        raise _damaged(path) from None
    except Exception:  # damaged bytes raise many kinds (RuntimeError, KeyError, EOFError, OSError)
        raise _damaged(path) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        hint = ""
        if isinstance(data, dict) and any(str(k).startswith("head.classification_head") for k in data):
            hint = " (it looks like a torchvision SSD state dict: convert it with singleshot.models.from_torchvision)"
        raise UserError(
            f"{path} is not a singleshot checkpoint{hint}; give a file written by 'singleshot train'"
        )
    if not isinstance(data.get("version"), int) or data["version"] > VERSION:
        raise UserError(
            f"checkpoint {path} has format version {data.get('version')!r}, newer than this singleshot "
            f"({__version__}) reads; upgrade singleshot"
        )
    for key, kind in _FIELDS.items():
        if not isinstance(data.get(key), kind):
            raise UserError(
                f"checkpoint {path} is damaged: its {key!r} entry is missing or not a {kind.__name__}"
            )
    priors = data.get("priors")
    if data["version"] >= 2 and not (
        isinstance(priors, Tensor) and priors.ndim == 2 and priors.shape[1] == 4
    ):
        raise UserError(f"checkpoint {path} is damaged: its 'priors' entry is missing or not a Tensor[P, 4]")
    if not all(isinstance(v, Tensor) for v in data["state_dict"].values()):
        raise UserError(f"checkpoint {path} is damaged: its weights are not all tensors")
    return data


def _args_from_weights(arch: str, arch_args: dict, state_dict: dict) -> dict:
    """Keywords that ``arch_args`` lacks because the builder gained them after the checkpoint was written,
    read from its weights: ``ssd_small``'s ``depth`` (0 before it existed; its default is 1 now), from the
    number of convolutions of the first stage (``4 + 2 * depth``)."""
    if arch != "ssd_small" or "depth" in arch_args:
        return {}
    prefix = "backbone.stages.0."
    convs = {
        k[len(prefix) :].split(".")[0] for k in state_dict if k.startswith(prefix) and k.endswith(".0.weight")
    }
    return {"depth": max(0, (len(convs) - 4) // 2)}


def model_from_checkpoint(data: dict, source: str = "checkpoint") -> SSD:
    """Rebuild the model of a checkpoint dict (as returned by :func:`read_checkpoint`)."""
    try:
        arch_args = {
            **_args_from_weights(data["arch"], data["arch_args"], data["state_dict"]),
            **data["arch_args"],
        }
        model = build_model(data["arch"], data["num_classes"], **arch_args)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None
    if "priors" in data:  # before the weights: other default boxes usually mean other head shapes too
        _check_priors(model, data, source)
    try:
        model.load_state_dict(data["state_dict"])
    except RuntimeError as exc:
        raise UserError(
            f"{source}: the weights do not fit a {data['arch']} model ({_first_line(exc)}); the file is damaged"
        ) from None
    model.class_names = data["class_names"]
    pre, post = data["preprocessing"], data["postprocessing"]
    try:
        model.mean, model.std = pre["mean"], pre["std"]
        model.antialias = bool(pre["antialias"])
        for key in ("score_threshold", "nms_threshold", "candidates_per_class", "max_detections"):
            setattr(model, key, post[key])
        model.variances = tuple(post["variances"])
    except KeyError as exc:
        raise UserError(f"{source} is damaged: its settings lack {exc}") from None
    return model


def _check_priors(model: SSD, data: dict, source: str) -> None:
    """UserError unless the rebuilt ``model``'s default boxes are those the checkpoint was trained with."""
    stored = data["priors"].float().cpu()
    rebuilt = model.priors_for(model.image_size).float().cpu()
    if stored.shape != rebuilt.shape or not torch.allclose(stored, rebuilt, rtol=0.0, atol=PRIORS_ATOL):
        raise UserError(
            f"{source}: the default boxes this singleshot ({__version__}) builds for {data['arch']} differ from "
            f"the ones it was trained with; load it with the singleshot version that wrote it "
            f"({data.get('singleshot_version', 'unknown')})"
        )


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> SSD:
    """The model saved in ``path``, rebuilt from the file alone, on ``map_location`` and in eval mode."""
    model = model_from_checkpoint(read_checkpoint(path, map_location), f"checkpoint {os.fspath(path)}")
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval()
