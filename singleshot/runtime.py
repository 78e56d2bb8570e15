"""Inference runtimes: PyTorch, or singleshot's exported graph (decoding and NMS inside) in onnxruntime or
OpenVINO, behind one ``predict``.

::

    engine = singleshot.runtime.load("runs/a/best.pt")                   # runtime="auto"
    engine = singleshot.runtime.load(model, runtime="onnxruntime")      # an SSD in memory
    engine = singleshot.runtime.load("model.onnx")                      # an exported graph
    detections = engine.predict(images)      # exactly as SSD.predict: one dict per image, pixels

``runtime`` is one of :data:`RUNTIMES`:

- ``"torch"``: the model's own ``predict`` (on CUDA under float16 autocast, as ``eval`` always ran);
- ``"onnxruntime"`` / ``"openvino"``: the graph of :func:`singleshot.export.export_onnx` with float32
  input in [0, 1]; images are resized in float exactly as ``SSD.predict`` resizes them, so detections equal
  PyTorch's up to float32 rounding (tested);
- ``"auto"``: on a GPU PyTorch. On the CPU the fastest here of PyTorch and the installed graph runtimes,
  measured once (:func:`fastest_engine`): no runtime is the fastest for every model and batch size
  (docs/benchmarks.md, "Runtimes and int8": PyTorch won on SSD300 at batch 8, OpenVINO on SSD512 at batch
  1, onnxruntime on SSDLite). The choice is kept in ``runtime-choices.json`` of the graph cache, keyed by
  the graph, the threads, the batch size and the CPU, so a later run loads it without measuring. For an
  ``.onnx`` file, the first installed of :data:`AUTO_ORDER` (onnxruntime, then OpenVINO).

The graph for a checkpoint is exported once and cached in :func:`cache_dir` (``$SINGLESHOT_CACHE``, else
``$XDG_CACHE_HOME/singleshot/graphs``, else ``~/.cache/singleshot/graphs``) under a name keyed by a hash of
the model's weights, architecture, class names, preprocessing and post-processing settings, the opset and
the singleshot, torch and runtime versions: a change of any of them exports afresh, and an unchanged model
loads the cached file (the file is written atomically). In one process, :func:`load` of the same unchanged
SSD object returns the same engine (no export, no hashing, no new session).

An ``.onnx`` file (from ``singleshot export``, uint8 or float input) runs in onnxruntime or OpenVINO; its
class names, input size and settings come from its ``metadata_props``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import itertools
import json
import os
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from singleshot import __version__
from singleshot.errors import UserError
from singleshot.files import write_bytes_atomic

RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
GRAPH_RUNTIMES = ("onnxruntime", "openvino")
# The graph runtime "auto" takes for an .onnx file, the first installed; a model's is measured (fastest_engine).
AUTO_ORDER = ("onnxruntime", "openvino")
CHOICES_FILE = "runtime-choices.json"
CACHE_ENV = "SINGLESHOT_CACHE"
_ENGINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # SSD -> {(runtime, ...): (key, engine)}


def is_graph_file(source) -> bool:
    """Whether ``source`` names an exported graph (an ``.onnx`` file) rather than a checkpoint."""
    return isinstance(source, (str, os.PathLike)) and str(source).lower().endswith(".onnx")


def installed_runtimes() -> list[str]:
    """The runtimes usable here: ``"torch"`` and those of :data:`GRAPH_RUNTIMES` that are installed (a graph
    runtime also needs onnx and onnxscript to export)."""
    exportable = all(importlib.util.find_spec(n) is not None for n in ("onnx", "onnxscript"))
    return ["torch"] + [r for r in GRAPH_RUNTIMES if exportable and importlib.util.find_spec(r) is not None]


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def choose_runtime(runtime: str, device: torch.device | str = "cpu", *, graph: bool = False) -> str:
    """The runtime ``runtime`` stands for on ``device``: ``"auto"`` is PyTorch on a GPU and the first
    installed of :data:`AUTO_ORDER` on the CPU (PyTorch when none is; :func:`load` then measures which of
    PyTorch and the graph runtimes is the fastest); an exported graph (``graph``) always needs a graph runtime
    and runs on the CPU whatever ``device``. Raises :class:`UserError` for an unknown or missing runtime."""
    if runtime not in RUNTIMES:
        raise UserError(f"--runtime {runtime!r} is unknown; choose one of {', '.join(RUNTIMES)}.")
    device = torch.device(device)
    installed = installed_runtimes()
    if runtime == "auto":
        if device.type != "cpu" and not graph:
            return "torch"
        found = [r for r in AUTO_ORDER if r in installed]
        if found:
            return found[0]
        if graph:
            raise UserError(
                "running an .onnx file needs onnxruntime or openvino; run: pip install onnxruntime"
            )
        return "torch"
    if runtime == "torch" and graph:
        raise UserError("an .onnx file cannot run in --runtime torch; use onnxruntime or openvino (or auto).")
    if runtime not in installed:
        raise UserError(
            f"--runtime {runtime} is not installed (or onnx/onnxscript are missing for the export); run: "
            f"pip install 'singleshot[{'openvino' if runtime == 'openvino' else 'export'}]'"
        )
    if runtime != "torch" and device.type != "cpu" and not graph:
        raise UserError(f"--runtime {runtime} runs on the CPU here; use --device cpu or --runtime torch.")
    return runtime


def cache_dir() -> Path:
    """Where exported graphs are cached: ``$SINGLESHOT_CACHE``, else ``$XDG_CACHE_HOME/singleshot/graphs``,
    else ``~/.cache/singleshot/graphs``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "singleshot" / "graphs"


def graph_key(model, *, opset: int) -> str:
    """The cache key of ``model``'s exported graph: a SHA-256 (hex) of its weights and buffers, its
    architecture, class names, preprocessing, post-processing settings, ``opset`` and the versions of what
    writes the graph (singleshot, torch, onnx, onnxscript). The runtimes read the same file, so their
    versions are not part of it (a new runtime version reads the graph as it is)."""
    about = {
        "arch": getattr(model, "arch", type(model).__name__),
        "arch_args": repr(sorted(getattr(model, "arch_args", {}).items())),
        "class_names": list(model.class_names),
        "image_size": list(model.image_size),
        "mean": list(model.mean),
        "std": list(model.std),
        "postprocess": model.postprocess_settings(),
        "opset": opset,
        "versions": [__version__, torch.__version__, *(_version(n) for n in ("onnx", "onnxscript"))],
    }
    digest = hashlib.sha256(json.dumps(about, sort_keys=True, default=str).encode())
    for name, tensor in itertools.chain(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode() + str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cached_graph(model, *, opset: int | None = None, cache: str | os.PathLike | None = None) -> Path:
    """The path of ``model``'s float-input detection graph in the cache, exported there first (atomically)
    unless a file of the same :func:`graph_key` is there already."""
    from singleshot.export import DEFAULT_OPSET, export_onnx

    opset = DEFAULT_OPSET if opset is None else opset
    folder = Path(cache) if cache is not None else cache_dir()
    path = folder / f"{getattr(model, 'arch', 'ssd')}-{graph_key(model, opset=opset)[:24]}.onnx"
    if not path.is_file():
        _make_cache(folder)
        export_onnx(model, path, opset=opset, input_dtype="float32")
    return path


def _make_cache(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create the graph cache {folder} ({exc.strerror or exc}); set {CACHE_ENV} to a "
            "writable folder."
        ) from None


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``) and its core count."""
    import platform

    name = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def fastest_engine(model, *, batch: int = 1, threads: int | None = None, cache=None, measure=None):
    """The fastest engine for ``model`` (an SSD on the CPU) here at ``batch`` images: PyTorch or a graph
    runtime, timed by :func:`interleaved_seconds` (or by ``measure(engine, batch)`` for each when given).
    The choice and the timings are kept in ``CHOICES_FILE`` of the graph cache under the graph's name,
    ``threads``, ``batch``, the CPU and the runtime versions, and read from there instead of measuring again. The engine's ``choice`` attribute
    holds ``{"runtime", "seconds": {runtime: s}, "batch", "measured": bool}``."""
    threads = torch.get_num_threads() if threads is None else threads
    candidates = [r for r in installed_runtimes() if r != "torch"]
    folder = Path(cache) if cache is not None else cache_dir()
    path = cached_graph(model, cache=folder)
    versions = ", ".join(f"{r} {_version(r)}" for r in candidates)
    key = f"{path.stem} | {threads} threads | batch {batch} | {cpu_name()} | torch {torch.__version__}, {versions}"
    choices = _read_choices(folder / CHOICES_FILE)
    stored = choices.get(key)
    if isinstance(stored, dict) and stored.get("runtime") in ("torch", *candidates):
        engine = _engine(model, stored["runtime"], path, threads)
        engine.choice = {**stored, "batch": batch, "measured": False}
        return engine
    engines = {r: _engine(model, r, path, threads) for r in ("torch", *candidates)}
    if measure is None:
        seconds = interleaved_seconds(engines, batch)
    else:
        seconds = {r: float(measure(e, batch)) for r, e in engines.items()}
    best = min(seconds, key=seconds.get)
    choices[key] = {"runtime": best, "seconds": seconds}
    with contextlib.suppress(OSError):  # an unwritable cache costs a measurement next time, nothing else
        write_bytes_atomic(folder / CHOICES_FILE, json.dumps(choices, indent=1, sort_keys=True).encode())
    engine = engines[best]
    engine.choice = {"runtime": best, "seconds": seconds, "batch": batch, "measured": True}
    return engine


def _engine(model, runtime: str, path: Path, threads: int):
    return TorchEngine(model) if runtime == "torch" else GraphEngine(path, runtime, threads=threads)


def _read_choices(path: Path) -> dict:
    """The stored choices of :func:`fastest_engine` (``{}`` when the file is missing or damaged)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_choice(engine) -> str | None:
    """One sentence on how ``auto`` chose ``engine`` (None when it was not measured by auto)."""
    choice = getattr(engine, "choice", None)
    if not choice:
        return None
    times = ", ".join(
        f"{r} {1000 * t:.1f} ms" for r, t in sorted(choice["seconds"].items(), key=lambda x: x[1])
    )
    how = "measured now" if choice["measured"] else f"measured before, kept in {CHOICES_FILE}"
    return f"runtime auto: {choice['runtime']}, the fastest here at batch {choice['batch']} ({times}; {how})"


def _state_key(model) -> tuple:
    """Changes whenever a parameter or buffer of ``model`` is replaced or changed in place, or a setting."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    return (
        tuple(model.postprocess_settings().items()),
        tuple(model.class_names),
        *((t.data_ptr(), t._version, t.device.type) for t in tensors),
    )


def load(
    source,
    *,
    runtime: str = "auto",
    device: torch.device | str = "cpu",
    threads: int | None = None,
    score_threshold: float | None = None,
    cache: str | os.PathLike | None = None,
    batch: int = 1,
):
    """An engine with ``predict(images)`` (as :meth:`singleshot.models.SSD.predict`) and ``detect`` for
    ``source`` in ``runtime``.

    Args:
        source: an SSD, a checkpoint path or ``torchvision:NAME`` (see ``load_source``), or an ``.onnx``
            file written by ``singleshot export``.
        runtime: one of :data:`RUNTIMES` (see :func:`choose_runtime`).
        device: where PyTorch runs (a graph runtime runs on the CPU).
        threads: CPU threads of a graph runtime (default: ``torch.get_num_threads()``).
        score_threshold: keep only scores above the larger of this and the model's (or graph's) own.
        cache: the graph cache folder (default: :func:`cache_dir`).
        batch: the images per call the caller will run; ``"auto"`` on the CPU measures the runtimes at it
            (:func:`fastest_engine`).

    Returns:
        a :class:`TorchEngine` or a :class:`GraphEngine`.
    """
    device = torch.device(device)
    if is_graph_file(source):
        chosen = choose_runtime(runtime, device, graph=True)
        engine = GraphEngine(source, chosen, threads=threads)
        if score_threshold is not None:
            engine.score_threshold = max(engine.score_threshold, float(score_threshold))
        return engine
    if isinstance(source, (str, os.PathLike)):
        from singleshot.models.sources import load_source

        source = load_source(source, map_location="cpu")
    model = source
    if score_threshold is not None:
        model.score_threshold = max(float(model.score_threshold), float(score_threshold))
    chosen = choose_runtime(runtime, device)
    if chosen == "torch":
        return TorchEngine(model.to(device))
    threads = torch.get_num_threads() if threads is None else threads
    if runtime == "auto":
        model = model.to(device)  # auto may choose PyTorch, which runs the model where it is
    engines = _ENGINES.setdefault(model, {})
    key = _state_key(model)
    slot = ("auto", threads, cache, batch) if runtime == "auto" else (chosen, threads, cache)
    cached = engines.get(slot)
    if cached is None or cached[0] != key:
        if runtime == "auto":
            engine = fastest_engine(model, batch=batch, threads=threads, cache=cache)
        else:
            engine = GraphEngine(cached_graph(model, cache=cache), chosen, threads=threads)
        cached = engines[slot] = (key, engine)
    return cached[1]


class TorchEngine:
    """``model.predict`` (and ``detect`` of images at the input size) in PyTorch, under float16 autocast on
    CUDA (``amp``, default: on CUDA)."""

    runtime = "torch"
    choice: dict | None = None  # set by fastest_engine

    def __init__(self, model, *, amp: bool | None = None) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.amp = self.device.type == "cuda" if amp is None else amp

    @property
    def class_names(self) -> list[str]:
        return list(self.model.class_names)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.model.image_size)

    @property
    def score_threshold(self) -> float:
        return float(self.model.score_threshold)

    def predict(self, images: Sequence) -> list[dict[str, Tensor]]:
        """As :meth:`singleshot.models.SSD.predict`."""
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            return self.model.predict(images)

    @torch.inference_mode()
    def detect(self, images: Tensor, image_sizes) -> list[dict[str, Tensor]]:
        """Detections of uint8 images Tensor[B, 3, H, W] at the input size, boxes xyxy in the pixels of
        ``image_sizes`` (B pairs ``(h, w)``), as :func:`singleshot.engine.evaluation.detect_batch`."""
        from singleshot.engine.evaluation import detect_batch

        was_training = self.model.training
        self.model.eval()
        try:
            return detect_batch(self.model, images.to(self.device), image_sizes, amp=self.amp)
        finally:
            self.model.train(was_training)


class GraphEngine:
    """A detection graph of :func:`singleshot.export.export_onnx` in onnxruntime or OpenVINO (CPU).

    Attributes from the graph's metadata: ``class_names``, ``image_size`` ``(h, w)``, ``antialias``,
    ``input_dtype`` (uint8 or float32), ``settings`` (the post-processing settings baked in);
    ``score_threshold`` (the graph's, or higher to drop more) filters the graph's detections.
    """

    choice: dict | None = None  # set by fastest_engine

    def __init__(self, path: str | os.PathLike, runtime: str, *, threads: int | None = None) -> None:
        self.path, self.runtime = Path(path), runtime
        self.threads = torch.get_num_threads() if threads is None else int(threads)
        meta = read_metadata(self.path)
        self.class_names = json.loads(meta["class_names"])
        self.image_size = tuple(json.loads(meta["image_size"]))
        self.antialias = json.loads(meta.get("antialias", "true"))
        self.input_dtype = meta.get("input_dtype", "uint8")
        self.settings = json.loads(meta["postprocess"])
        self.score_threshold = float(self.settings["score_threshold"])
        self._run = _onnxruntime_runner if runtime == "onnxruntime" else _openvino_runner
        self._run = self._run(self.path, self.threads)

    def _inputs(self, images: Sequence[Tensor]) -> np.ndarray:
        """Images Tensor[3, h_i, w_i] (uint8 or float in [0, 1]) -> the graph's input at its size, resized
        as ``SSD.preprocess`` resizes (bilinear, half-pixel centres, the model's antialiasing)."""
        size = self.image_size
        if self.input_dtype == "uint8" and all(
            im.dtype == torch.uint8 and im.shape[-2:] == size for im in images
        ):
            return torch.stack(list(images)).numpy()
        groups = (
            [torch.stack(list(images))]
            if len({tuple(im.shape) for im in images}) == 1
            else [im[None] for im in images]
        )
        out = []
        for x in groups:
            x = x.float() / 255 if not x.is_floating_point() else x.float()
            if tuple(x.shape[-2:]) != size:
                x = F.interpolate(
                    x, size=size, mode="bilinear", align_corners=False, antialias=self.antialias
                )
            out.append(x)
        x = torch.cat(out)
        if self.input_dtype == "uint8":
            x = (x * 255).round().clamp(0, 255).to(torch.uint8)
        return x.contiguous().numpy()

    def predict(self, images: Sequence) -> list[dict[str, Tensor]]:
        """As :meth:`singleshot.models.SSD.predict`: images of any sizes (tensors, PIL images or arrays) ->
        one dict per image, ``"boxes"`` Tensor[K, 4] xyxy in that image's pixels, ``"scores"``,
        ``"labels"``."""
        from singleshot.data.images import as_image_tensor

        images = [as_image_tensor(im) for im in images]
        if not images:
            return []
        return self._split(self._run(self._inputs(images)), [tuple(im.shape[-2:]) for im in images])

    def detect(self, images: Tensor, image_sizes) -> list[dict[str, Tensor]]:
        """Detections of images Tensor[B, 3, H, W] (uint8 or float in [0, 1]) at the input size, boxes xyxy
        in the pixels of ``image_sizes`` (B pairs ``(h, w)``)."""
        return self._split(self._run(self._inputs(list(images.cpu()))), image_sizes)

    def _split(self, outputs, image_sizes) -> list[dict[str, Tensor]]:
        boxes, scores, labels, batch_index = (torch.from_numpy(np.asarray(o)) for o in outputs)
        keep = scores > self.score_threshold
        boxes, scores, labels, batch_index = boxes[keep], scores[keep], labels[keep], batch_index[keep]
        result = []
        for b, (h, w) in enumerate(image_sizes):
            mine = batch_index == b
            scale = torch.tensor([w, h, w, h], dtype=torch.float32)
            result.append(
                {
                    "boxes": boxes[mine].float() * scale,
                    "scores": scores[mine].float(),
                    "labels": labels[mine].long(),
                }
            )
        return result


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of the ONNX file ``path``; raises :class:`UserError` unless it is a detection
    graph of ``singleshot export`` (class names, input size and post-processing settings in it)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; give an .onnx file written by 'singleshot export'.")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # a damaged or foreign file: onnx raises DecodeError and others
        raise UserError(
            f"{path} is not a readable ONNX file ({type(exc).__name__}); export it again."
        ) from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if not {"class_names", "image_size"} <= meta.keys():
        raise UserError(f"{path} has no singleshot metadata; export the checkpoint with 'singleshot export'.")
    if "postprocess" not in meta:
        raise UserError(
            f"{path} was exported with --no-nms; export it again without --no-nms to run it here."
        )
    return meta


def _onnxruntime_runner(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle threads sleep instead of spinning: spinning ones took the cores from the work that shares the
    # process (image decoding, PyTorch), which then ran 1.3-1.9x slower (docs/benchmarks.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]

    def run(x: np.ndarray):
        return session.run(["boxes", "scores", "labels", "batch_index"], {name: x})

    return run


def _openvino_runner(path: Path, threads: int):
    import openvino as ov

    core = ov.Core()
    # f32: OpenVINO would otherwise run in bfloat16 on CPUs that have it, and differ from PyTorch.
    config = {
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
    }
    compiled = core.compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    names = [compiled.output(n) for n in ("boxes", "scores", "labels", "batch_index")]

    def run(x: np.ndarray):
        out = request.infer({0: x})
        return [np.array(out[n]) for n in names]

    return run


def predict_dataset(
    engine, dataset, *, batch_size: int = 16, workers: int = 0, progress: bool = True, desc="evaluate"
):
    """``(predictions, targets)`` for every image of ``dataset`` by ``engine`` (:func:`load`), in dataset
    order, as :func:`singleshot.engine.evaluation.predict_dataset` gives them for an SSD (one process)."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from singleshot.data import EvalTransform
    from singleshot.engine.evaluation import EvalSet, collate_eval

    loader = DataLoader(
        EvalSet(dataset, EvalTransform(engine.image_size)),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_eval,
    )
    predictions, targets = [], []
    for images, batch_targets, _ in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress):
        detections = engine.detect(images, [t["orig_size"] for t in batch_targets])
        predictions.extend({k: v.cpu() for k, v in d.items()} for d in detections)
        targets.extend(batch_targets)
    return predictions, targets


def evaluate(engine, data, *, split=None, format=None, metric=None, batch_size: int = 8, workers: int = 0):
    """Mean average precision of ``engine`` on the ``split`` (default: test, else val) of the data set at
    ``data``, as ``singleshot eval`` computes it (metric default: coco for COCO data, else voc07).

    Returns:
        ``(result, num_images, split, metric)``; ``result["map"]`` is the mAP.
    """
    from singleshot.data import default_split, open_dataset
    from singleshot.engine.evaluation import score

    split = split or default_split(data, "eval", format)
    dataset = open_dataset(data, split=split, format=format, classes=engine.class_names)
    metric = metric or ("coco" if dataset.format == "coco" else "voc07")
    predictions, targets = predict_dataset(
        engine, dataset, batch_size=batch_size, workers=workers, progress=False
    )
    return score(predictions, targets, dataset, metric, engine.class_names), len(dataset), split, metric


def interleaved_seconds(
    engines: dict,
    batch: int = 1,
    *,
    min_rounds: int = 3,
    max_rounds: int = 15,
    budget: float = 1.0,
    warmup: int = 1,
    seed: int = 0,
    clock=None,
) -> dict[str, float]:
    """Median seconds per batch of each of ``engines`` (``{name: engine}``) on ``batch`` random images at
    the input size: ``warmup`` untimed runs each, then rounds in which every engine runs once, so that a
    burst of load hits all alike; at least ``min_rounds``, more while the rounds took less than ``budget``
    seconds, at most ``max_rounds``. Fast models get many runs (SSDLite: 15, under a second), slow ones few."""
    import statistics
    import time

    clock = clock or time.perf_counter
    g = torch.Generator().manual_seed(seed)
    size = tuple(next(iter(engines.values())).image_size)
    images = torch.randint(0, 256, (batch, 3, *size), generator=g, dtype=torch.uint8)
    sizes = [size] * batch
    for _ in range(warmup):
        for engine in engines.values():
            engine.detect(images, sizes)
    times = {name: [] for name in engines}
    start = clock()
    for done in range(1, max_rounds + 1):
        for name, engine in engines.items():
            t = clock()
            engine.detect(images, sizes)
            times[name].append(clock() - t)
        if done >= min_rounds and clock() - start >= budget:
            break
    return {name: statistics.median(values) for name, values in times.items()}


def seconds_per_batch(engine, batch: int = 1, *, repeats: int = 5, warmup: int = 1, seed: int = 0) -> float:
    """Median wall time of ``engine.detect`` on ``batch`` random uint8 images at the input size
    (``repeats`` timed runs after ``warmup`` untimed ones)."""
    rounds = {"min_rounds": repeats, "max_rounds": repeats, "warmup": warmup, "seed": seed}
    return interleaved_seconds({"engine": engine}, batch, **rounds)["engine"]
