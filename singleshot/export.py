"""ONNX export of an SSD with normalisation, box decoding and class-wise NMS inside the graph.

::

    model = load_checkpoint("runs/a/best.pt")
    export_onnx(model, "model.onnx")                    # or: singleshot export runs/a/best.pt --out model.onnx

The graph (``detections``, the default)::

    images       uint8 [B, 3, H, W]  RGB, already resized to model.image_size (plain resize, no letterbox)
      -> model.normalize -> network -> decode against the priors (a constant) -> clip to [0, 1]
      -> softmax -> per class the best candidates_per_class -> ONNX NonMaxSuppression (per image and
         class, IoU > nms_threshold suppresses, score > score_threshold survives)
      -> per image the best max_detections, sorted by image then by descending score
    boxes        float32 [K, 4]   xyxy relative to the image ([0, 1]); multiply by (w, h, w, h) of the
                                  original image to get its pixels
    scores       float32 [K]
    labels       int64 [K]        1..C-1; label i is class_names[i - 1] (in the model's metadata)
    batch_index  int64 [K]        which image of the batch each detection belongs to

This is exactly :func:`singleshot.postprocess.postprocess` with the same settings (the tests check the
detections against it with onnxruntime), so ``model.predict`` and the ONNX model agree.

With ``postprocess=False`` (``--no-nms``) the graph stops before NMS, for runtimes with their own::

    boxes        float32 [B, P, 4]  decoded xyxy relative boxes, clipped to [0, 1]
    scores       float32 [B, P, C]  softmax class probabilities, column 0 the background

The ONNX ``NonMaxSuppression`` op does SSD's class-wise NMS in one node because SSD's boxes are shared by
all classes: boxes ``[B, P, 4]`` with scores ``[B, C-1, P]``. In PyTorch the same step is the custom op
``singleshot::multiclass_nms`` (torchvision's ``batched_nms`` per image and class), which the exporter
translates to that node. Export uses the torch.export-based ("dynamo") exporter with opset 18 by default.
The model's metadata (``metadata_props``) records the class names, the input size and type, the box format,
the resize's antialiasing and the post-processing settings: :mod:`singleshot.runtime` runs a graph from its
metadata alone. ``input_dtype="float32"`` makes ``images`` float32 in [0, 1] instead of uint8 (what the
runtime cache exports, so that images resized in float reach the network unrounded).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from singleshot import __version__
from singleshot.boxes import decode
from singleshot.errors import UserError
from singleshot.files import atomic_write

INSTALL_HINT = "pip install 'singleshot[export]'"
DEFAULT_OPSET = 18
MIN_OPSET = 17  # 17 goes through the ONNX version converter; the exporter writes 18 natively
DETECTION_OUTPUTS = ("boxes", "scores", "labels", "batch_index")
RAW_OUTPUTS = ("boxes", "scores")
INPUT_DTYPES = ("uint8", "float32")
_INT64_MAX = 2**63 - 1


def require_onnx() -> None:
    """Raise :class:`UserError` unless the packages ONNX export needs (onnx, onnxscript) are installed."""
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(
            f"ONNX export needs {' and '.join(missing)}, which is not installed; run: {INSTALL_HINT}"
        )


@torch.library.custom_op("singleshot::multiclass_nms", mutates_args=())
def multiclass_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float) -> Tensor:
    """Class-wise NMS of a batch with boxes shared by all classes, as ONNX ``NonMaxSuppression`` does it.

    Args:
        boxes: Tensor[B, P, 4] xyxy.
        scores: Tensor[B, K, P] one score per class and box.
        iou_threshold: a box is suppressed by a better box of its image and class with IoU above this.
        score_threshold: only scores strictly above this take part.

    Returns:
        Tensor[N, 3] int64 rows (image, class, box) of the kept boxes; the order is unspecified.
    """
    num_classes = scores.shape[1]
    image_idx, class_idx, box_idx = (scores > score_threshold).nonzero(as_tuple=True)
    # float64: batched_nms may shift each group by group * (largest coordinate + 1), which would eat
    # float32's precision with many (image, class) groups.
    kept = batched_nms(
        boxes[image_idx, box_idx].double(),
        scores[image_idx, class_idx, box_idx].double(),
        image_idx * num_classes + class_idx,
        iou_threshold,
    )
    return torch.stack([image_idx[kept], class_idx[kept], box_idx[kept]], dim=1)


@multiclass_nms.register_fake
def _(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float) -> Tensor:
    count = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((count, 3), dtype=torch.int64)


def _multiclass_nms_onnx(boxes, scores, iou_threshold: float, score_threshold: float):
    """ONNX Script translation of ``singleshot::multiclass_nms``: one ``NonMaxSuppression`` node."""
    from onnxscript import opset18 as op

    return op.NonMaxSuppression(
        boxes,
        scores,
        op.Constant(value_ints=[_INT64_MAX]),
        op.Constant(value_floats=[iou_threshold]),
        op.Constant(value_floats=[score_threshold]),
    )


class DetectionGraph(nn.Module):
    """An SSD and its post-processing as one traceable module: what :func:`export_onnx` exports.

    ``forward(images uint8 Tensor[B, 3, H, W])`` at the model's input size returns
    ``(boxes [K, 4] xyxy relative, scores [K], labels [K] int64, batch_index [K] int64)``, or with
    ``postprocess=False`` ``(boxes [B, P, 4] xyxy relative, scores [B, P, C])`` (see the module docstring).
    Settings left as None are the model's own.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        postprocess: bool = True,
        score_threshold: float | None = None,
        nms_threshold: float | None = None,
        candidates_per_class: int | None = None,
        max_detections: int | None = None,
    ):
        super().__init__()
        self.model = model
        self.postprocess = postprocess
        self.score_threshold = float(model.score_threshold if score_threshold is None else score_threshold)
        self.nms_threshold = float(model.nms_threshold if nms_threshold is None else nms_threshold)
        self.candidates_per_class = int(
            model.candidates_per_class if candidates_per_class is None else candidates_per_class
        )
        self.max_detections = int(model.max_detections if max_detections is None else max_detections)
        self.variances = tuple(float(v) for v in model.variances)

    def settings(self) -> dict:
        """The post-processing settings baked into the graph."""
        return {
            "score_threshold": self.score_threshold,
            "nms_threshold": self.nms_threshold,
            "candidates_per_class": self.candidates_per_class,
            "max_detections": self.max_detections,
        }

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        cls_logits, box_deltas = self.model(self.model.normalize(images))  # (B, P, C), (B, P, 4)
        priors = self.model.priors.to(box_deltas.dtype)
        boxes = decode(box_deltas, priors, self.variances).clamp(0.0, 1.0)  # (B, P, 4) relative xyxy
        probs = cls_logits.softmax(dim=-1)  # (B, P, C)
        if not self.postprocess:
            return boxes, probs

        batch, num_priors = boxes.shape[:2]
        scores = probs[..., 1:].transpose(1, 2)  # (B, C-1, P)
        k = min(self.candidates_per_class, num_priors)
        top_scores, top_idx = scores.topk(k, dim=-1)  # (B, C-1, k)
        # Only each class's best k take part: every other score becomes 0, which never passes
        # the strict "> score_threshold" test (thresholds are >= 0).
        scores = torch.zeros_like(scores).scatter(-1, top_idx, top_scores)
        selected = torch.ops.singleshot.multiclass_nms(
            boxes, scores, self.nms_threshold, self.score_threshold
        )
        image_idx, class_idx, box_idx = selected.unbind(1)  # (N,) each
        det_scores = scores[image_idx, class_idx, box_idx]
        det_boxes = boxes[image_idx, box_idx]

        # Sort by image, then by descending score: one sort on 2 * image - score (scores are in [0, 1]);
        # float64 keeps every float32 score distinct next to the image term.
        order = (image_idx.double() * 2.0 - det_scores.double()).argsort()
        image_idx, class_idx, det_scores, det_boxes = (
            image_idx[order],
            class_idx[order],
            det_scores[order],
            det_boxes[order],
        )
        # Rank inside the image = position - position of the image's first detection.
        counts = (image_idx[:, None] == torch.arange(batch, device=boxes.device)[None, :]).sum(0)  # (B,)
        starts = counts.cumsum(0) - counts
        rank = torch.arange(image_idx.shape[0], device=boxes.device) - starts[image_idx]
        keep = rank < self.max_detections
        return det_boxes[keep], det_scores[keep], class_idx[keep] + 1, image_idx[keep]


def metadata(model: nn.Module, graph: DetectionGraph, input_dtype: str = "uint8") -> dict[str, str]:
    """What a deployer needs to use the exported model, as ONNX ``metadata_props`` strings."""
    height, width = (int(s) for s in model.image_size)
    values = "0..255" if input_dtype == "uint8" else "in [0, 1]"
    props = {
        "singleshot_version": __version__,
        "arch": str(getattr(model, "arch", type(model).__name__)),
        "class_names": json.dumps(list(model.class_names)),
        "input": f"images: {input_dtype} [batch, 3, {height}, {width}] RGB {values}, resized to "
        f"{height}x{width}; normalised inside the graph",
        "input_dtype": input_dtype,
        "image_size": json.dumps([height, width]),
        "antialias": json.dumps(bool(getattr(model, "antialias", True))),
        "mean": json.dumps([float(m) for m in model.mean]),
        "std": json.dumps([float(s) for s in model.std]),
    }
    if graph.postprocess:
        props["outputs"] = (
            "boxes float32 [K, 4] xyxy relative to the image in [0, 1]; scores float32 [K]; "
            "labels int64 [K] in 1..C-1 (label i is class_names[i - 1]); batch_index int64 [K]"
        )
        props["postprocess"] = json.dumps(graph.settings())
    else:
        props["outputs"] = (
            "boxes float32 [batch, P, 4] decoded xyxy relative in [0, 1]; "
            "scores float32 [batch, P, C] softmax, column 0 the background"
        )
    return props


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    postprocess: bool = True,
    score_threshold: float | None = None,
    nms_threshold: float | None = None,
    candidates_per_class: int | None = None,
    max_detections: int | None = None,
    input_dtype: str = "uint8",
) -> Path:
    """Write ``model`` and its post-processing to an ONNX file (see the module docstring for the graph).

    Args:
        model: an SSD (``singleshot.models.SSD``); exported on the CPU in eval mode, left unchanged.
        path: the ``.onnx`` file to write; written whole or not at all.
        opset: ONNX opset: 18 (native) or newer; 17 is converted down by the ONNX version converter.
        dynamic_batch: a free batch dimension; False fixes it at 1.
        postprocess: include NMS (outputs boxes/scores/labels/batch_index) or stop before it.
        score_threshold, nms_threshold, candidates_per_class, max_detections: override the model's.
        input_dtype: ``"uint8"`` (0..255) or ``"float32"`` (in [0, 1]) images.

    Returns:
        The path written.

    Raises:
        UserError: onnx/onnxscript are missing, a setting is out of range, or the file cannot be written.
    """
    require_onnx()
    import onnx

    if opset < MIN_OPSET:
        raise UserError(
            f"--opset {opset} is too old: singleshot exports opset {MIN_OPSET} or newer (default 18)."
        )
    graph = DetectionGraph(
        model,
        postprocess=postprocess,
        score_threshold=score_threshold,
        nms_threshold=nms_threshold,
        candidates_per_class=candidates_per_class,
        max_detections=max_detections,
    )
    _check_settings(graph)
    if input_dtype not in INPUT_DTYPES:
        raise ValueError(f"input_dtype must be one of {INPUT_DTYPES}, got {input_dtype!r}")
    path = Path(path)
    _prepare_output(path)

    was_training, device = model.training, next(model.parameters()).device
    graph.eval().cpu()
    try:
        height, width = (int(s) for s in model.image_size)
        example = torch.zeros(2 if dynamic_batch else 1, 3, height, width, dtype=getattr(torch, input_dtype))
        names = DETECTION_OUTPUTS if postprocess else RAW_OUTPUTS
        dynamic_shapes = {"images": {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None
        with torch.no_grad():
            program = torch.onnx.export(
                graph,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=["images"],
                output_names=list(names),
                dynamic_shapes=dynamic_shapes,
                custom_translation_table={torch.ops.singleshot.multiclass_nms.default: _multiclass_nms_onnx},
                verbose=False,
                external_data=False,
            )
    finally:
        model.to(device).train(was_training)

    proto = program.model_proto
    _name_dims(proto, postprocess, dynamic_batch)
    for key, value in metadata(model, graph, input_dtype).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"singleshot SSD ({model.num_classes - 1} classes); see metadata_props"
    _save(proto, path, onnx)
    return path


def _check_settings(graph: DetectionGraph) -> None:
    if not 0.0 <= graph.score_threshold < 1.0:
        raise UserError(f"--score-threshold {graph.score_threshold} is outside [0, 1); try 0.01 or 0.3.")
    if not 0.0 < graph.nms_threshold <= 1.0:
        raise UserError(f"--nms-threshold {graph.nms_threshold} is outside (0, 1]; the paper uses 0.45.")
    if graph.candidates_per_class < 1 or graph.max_detections < 1:
        raise UserError("--max-detections and the candidates per class must be at least 1.")


def _name_dims(proto, postprocess: bool, dynamic_batch: bool) -> None:
    """Readable names for the free dimensions: ``batch`` and ``detections``."""
    for value in proto.graph.output:
        dims = value.type.tensor_type.shape.dim
        if postprocess and len(dims):
            dims[0].dim_param = "detections"
        elif not postprocess and dynamic_batch and len(dims):
            dims[0].dim_param = "batch"


def _prepare_output(path: Path) -> None:
    """Fail before the (slow) export when ``path`` cannot be written; creates its directory."""
    if path.is_dir():
        raise UserError(f"output {path} is a directory; give a file name such as {path / 'model.onnx'}.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create the directory of {path} ({exc.strerror or exc}); choose another --out."
        ) from None
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"cannot write into {path.parent}; choose another --out.")


def _save(proto, path: Path, onnx) -> None:
    """Write ``proto`` to ``path`` atomically (:func:`singleshot.files.atomic_write`)."""
    try:
        atomic_write(path, lambda f: onnx.save_model(proto, f, format="protobuf"))
    except OSError as exc:
        raise UserError(f"cannot write {path} ({exc.strerror or exc}); choose another --out.") from None


def network_nodes(proto) -> tuple[set[str], set[str]]:
    """The node names of the network part of a detection graph and of its last convolutions.

    The last convolutions are the head's (their outputs are reshaped into ``[B, P, ...]``); the network is
    them and every node they depend on. The rest of the graph is decoding and NMS.

    Returns:
        ``(network, head)``: sets of node names.
    """
    producer = {out: node for node in proto.graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    head = {
        node.name
        for node in proto.graph.node
        if node.op_type == "Conv" and any(c.op_type == "Reshape" for c in consumers.get(node.output[0], []))
    }
    network, stack = (
        set(),
        [producer[out] for node in proto.graph.node if node.name in head for out in node.output],
    )
    while stack:
        node = stack.pop()
        if node.name in network:
            continue
        network.add(node.name)
        stack.extend(producer[name] for name in node.input if name in producer)
    return network, head


def quantize_int8(float_path: str | os.PathLike, path: str | os.PathLike, calibration) -> Path:
    """Static int8 quantisation of a detection graph's network with onnxruntime's tools: QDQ, per-channel
    int8 weights, uint8 activations, MinMax calibration on ``calibration``. The head's last convolutions
    (whose outputs are the class logits and box offsets), decoding and NMS stay in float32.

    Args:
        float_path: a graph of :func:`export_onnx` (with NMS).
        path: the int8 ``.onnx`` to write; written whole or not at all.
        calibration: an iterable of input batches, numpy arrays of the graph's input dtype [B, 3, H, W].

    Returns:
        The path written.
    """
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):
        def __init__(self, batches):
            self.batches = iter(batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    path = Path(path)
    _prepare_output(path)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        proto = onnx.load(str(prepared))
        network, head = network_nodes(proto)
        excluded = [n.name for n in proto.graph.node if n.name not in network or n.name in head]
        out = Path(tmp) / "int8.onnx"
        quantize_static(
            str(prepared),
            str(out),
            _Reader(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
        )
        quantized = onnx.load(str(out))
        original = onnx.load(str(float_path), load_external_data=False)
        del quantized.metadata_props[:]
        quantized.metadata_props.extend(original.metadata_props)
        entry = quantized.metadata_props.add()
        entry.key, entry.value = "quantization", "int8 QDQ: per-channel int8 weights, uint8 activations"
        _save(quantized, path, onnx)
    return path
