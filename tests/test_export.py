"""ONNX export: onnxruntime against PyTorch on the same images.

Two exports are shared by the module (detections with a free batch, and the raw graph); the CLI test
makes a third. Each takes 3 to 5 s of CPU, so the tests that export are marked slow.
"""

import importlib.util
import json
import stat
import unittest.mock

import numpy as np
import pytest
import torch
from torchvision.ops import nms

from singleshot.boxes import decode
from singleshot.cli import main
from singleshot.errors import UserError
from singleshot.export import DetectionGraph, _save, export_onnx, multiclass_nms, require_onnx
from singleshot.models import DEFAULT_MODEL, build_model, save_checkpoint
from singleshot.postprocess import postprocess

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SETTINGS = {"score_threshold": 0.05, "nms_threshold": 0.45, "candidates_per_class": 60, "max_detections": 40}


def _model(seed: int = 0):
    """A randomly initialised small SSD whose class scores are spread out (random head biases)."""
    torch.manual_seed(seed)
    model = build_model(DEFAULT_MODEL, num_classes=4, class_names=["cat", "dog", "bird"])
    with torch.no_grad():
        for conv in model.head.classification.modules():
            if isinstance(conv, torch.nn.Conv2d):
                conv.bias.normal_(0.0, 1.5)
        for conv in model.head.regression.modules():
            if isinstance(conv, torch.nn.Conv2d):
                conv.bias.normal_(0.0, 0.5)
    return model.eval()


def _images(n: int, size, seed: int = 1) -> torch.Tensor:
    """Noise plus a smooth gradient: uint8 Tensor[n, 3, H, W]."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    noise = torch.randint(0, 256, (n, 3, h, w), generator=g).float()
    ramp = torch.linspace(0, 255, w).expand(n, 3, h, w)
    return (0.5 * noise + 0.5 * ramp).to(torch.uint8)


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _canonical(boxes, scores, labels):
    """Detections in an order that does not depend on how near-equal scores were sorted."""
    order = np.lexsort((boxes[:, 1], boxes[:, 0], labels))
    return boxes[order], scores[order], labels[order]


def _assert_same_detections(onnx_out, reference, size):
    boxes, scores, labels, batch_index = onnx_out
    h, w = size
    scale = np.array([w, h, w, h], dtype=np.float32)
    assert np.all(np.diff(batch_index) >= 0), "sorted by image"
    for b, ref in enumerate(reference):
        mine = batch_index == b
        assert np.all(np.diff(scores[mine]) <= 1e-6), "best first inside an image"
        assert mine.sum() == len(ref["scores"])
        got = _canonical(boxes[mine], scores[mine], labels[mine])
        want = _canonical(
            (ref["boxes"] / torch.tensor(scale)).numpy(), ref["scores"].numpy(), ref["labels"].numpy()
        )
        np.testing.assert_array_equal(got[2], want[2])
        np.testing.assert_allclose(got[0], want[0], atol=1e-4)
        np.testing.assert_allclose(got[1], want[1], atol=1e-5)
        assert np.all((got[0] >= 0) & (got[0] <= 1))


@pytest.fixture(scope="module")
def model():
    model = _model()
    for key, value in SETTINGS.items():
        setattr(model, key, value)
    return model


@pytest.fixture(scope="module")
def detections_onnx(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx")  # the model's own settings


@pytest.fixture(scope="module")
def raw_onnx(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "raw.onnx", postprocess=False)


# --- PyTorch side, no export ------------------------------------------------------------------------


@pytest.mark.parametrize("batch, classes, boxes_per_image", [(2, 3, 50), (8, 80, 30)])
def test_multiclass_nms_is_per_image_and_class_nms(batch, classes, boxes_per_image):
    # Relative boxes, and up to 640 (image, class) groups that must stay apart.
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(batch, boxes_per_image, 2, generator=g)
    boxes = torch.cat([xy, xy + 0.01 + 0.3 * torch.rand(batch, boxes_per_image, 2, generator=g)], dim=-1)
    scores = torch.rand(batch, classes, boxes_per_image, generator=g)
    got = multiclass_nms(boxes, scores, 0.4, 0.3)
    want = set()
    for b in range(batch):
        for c in range(classes):
            candidates = (scores[b, c] > 0.3).nonzero().flatten()
            kept = candidates[nms(boxes[b, candidates], scores[b, c, candidates], 0.4)]
            want |= {(b, c, int(i)) for i in kept}
    assert got.dtype == torch.int64 and got.shape[1] == 3
    assert {tuple(row) for row in got.tolist()} == want and len(got) == len(want)


@pytest.mark.parametrize(
    "settings",
    [
        SETTINGS,
        {"score_threshold": 0.01, "nms_threshold": 0.3, "candidates_per_class": 400, "max_detections": 200},
        {"score_threshold": 0.2, "nms_threshold": 0.6, "candidates_per_class": 5, "max_detections": 7},
    ],
)
def test_graph_in_pytorch_is_postprocess(model, settings):
    graph = DetectionGraph(model, **settings).eval()
    images = _images(3, model.image_size)
    with torch.no_grad():
        out = [t.numpy() for t in graph(images)]
        cls_logits, box_deltas = model(model.normalize(images))
    reference = postprocess(
        cls_logits, box_deltas, model.priors, [model.image_size] * 3, variances=model.variances, **settings
    )
    assert sum(len(r["scores"]) for r in reference) > 3
    _assert_same_detections(out, reference, model.image_size)


def test_graph_takes_the_model_settings_unless_overridden(model):
    assert DetectionGraph(model).settings() == SETTINGS
    assert DetectionGraph(model, max_detections=3).settings()["max_detections"] == 3


# --- onnxruntime against PyTorch --------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("batch", [3, 1])
def test_onnx_detections_match_predict(model, detections_onnx, batch):
    images = _images(batch, model.image_size, seed=batch)
    boxes, scores, labels, batch_index = _session(detections_onnx).run(None, {"images": images.numpy()})
    assert boxes.dtype == np.float32 and labels.dtype == np.int64 and batch_index.dtype == np.int64
    reference = model.predict(list(images))  # at the input size already: predict does not resize
    assert any(len(r["scores"]) == SETTINGS["max_detections"] for r in reference)  # the cap is exercised
    _assert_same_detections((boxes, scores, labels, batch_index), reference, model.image_size)


@pytest.mark.slow
def test_onnx_raw_outputs_match_the_network(model, raw_onnx):
    images = _images(2, model.image_size, seed=5)
    boxes, scores = _session(raw_onnx).run(None, {"images": images.numpy()})
    with torch.no_grad():
        cls_logits, box_deltas = model(model.normalize(images))
    want_boxes = decode(box_deltas, model.priors, model.variances).clamp(0, 1)
    assert boxes.shape == (2, len(model.priors), 4) and scores.shape == (2, len(model.priors), 4)
    np.testing.assert_allclose(boxes, want_boxes.numpy(), atol=1e-4)
    np.testing.assert_allclose(scores, cls_logits.softmax(-1).numpy(), atol=1e-4)


@pytest.mark.slow
def test_onnx_model_describes_itself(model, detections_onnx):
    proto = onnx.load(str(detections_onnx))
    onnx.checker.check_model(proto)
    assert {op.domain: op.version for op in proto.opset_import}[""] == 18
    assert "NonMaxSuppression" in {node.op_type for node in proto.graph.node}
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["class_names"]) == ["cat", "dog", "bird"]
    assert json.loads(meta["image_size"]) == list(model.image_size)
    assert json.loads(meta["postprocess"]) == SETTINGS
    (image_input,) = _session(detections_onnx).get_inputs()
    assert image_input.name == "images" and image_input.type == "tensor(uint8)"
    assert image_input.shape == ["batch", 3, *model.image_size]
    outputs = {o.name: o.shape for o in _session(detections_onnx).get_outputs()}
    assert outputs == {
        "boxes": ["detections", 4],
        "scores": ["detections"],
        "labels": ["detections"],
        "batch_index": ["detections"],
    }


# --- the command ------------------------------------------------------------------------------------


def test_export_writes_a_normal_file_and_keeps_the_old_one_on_failure(model, tmp_path, umask_022):
    path = export_onnx(model, tmp_path / "m.onnx", postprocess=False)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not the 0600 of a temporary file
    before = path.read_bytes()
    with pytest.raises(UserError, match="choose another --out"):
        with unittest.mock.patch("os.replace", side_effect=OSError(28, "No space left on device")):
            _save(onnx.load(str(path)), path, onnx)  # the writing step of export_onnx, without the export
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.slow
def test_cli_export_fixed_batch_and_no_detections(tmp_path, capsys):
    model = _model(seed=3)
    ckpt = save_checkpoint(tmp_path / "best.pt", model)
    images = _images(1, model.image_size)
    with torch.no_grad():
        top = model(model.normalize(images))[0].softmax(-1)[..., 1:].max()
    assert top < 0.999  # so that nothing passes the threshold below

    assert main(["export", str(ckpt), "--no-dynamic-batch", "--score-threshold", "0.999"]) == 0
    out = tmp_path / "best.onnx"  # default: next to the checkpoint
    assert "wrote" in capsys.readouterr().out
    session = _session(out)
    assert session.get_inputs()[0].shape == [1, 3, *model.image_size]
    boxes, scores, labels, batch_index = session.run(None, {"images": images.numpy()})
    assert boxes.shape == (0, 4) and scores.shape == labels.shape == batch_index.shape == (0,)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--opset", "16"], "--opset 16"),
        (["--score-threshold", "1.5"], "--score-threshold"),
        (["--nms-threshold", "0"], "--nms-threshold"),
        (["--max-detections", "0"], "--max-detections"),
    ],
)
def test_cli_export_bad_options(tmp_path, capsys, args, words):
    ckpt = save_checkpoint(tmp_path / "m.pt", _model())
    assert main(["export", str(ckpt), "--out", str(tmp_path / "sub" / "m.onnx"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "sub").exists()  # refused before anything was written


def test_cli_export_bad_files(tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "m.pt", _model())
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(3)}, foreign)
    (tmp_path / "file").write_text("x")
    cases = [
        ([str(tmp_path / "missing.pt")], "missing.pt"),
        ([str(foreign)], "not a singleshot checkpoint"),
        ([str(ckpt), "--out", str(tmp_path / "file" / "m.onnx")], "choose another --out"),
        ([str(ckpt), "--out", str(tmp_path)], "is a directory"),
        ([str(ckpt), "--out", str(ckpt)], "checkpoint itself"),
    ]
    for args, words in cases:
        assert main(["export", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err


def test_missing_onnx_is_one_sentence(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a)
    )
    with pytest.raises(UserError, match=r"pip install 'singleshot\[export\]'"):
        require_onnx()
    ckpt = save_checkpoint(tmp_path / "m.pt", _model())
    assert main(["export", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert "onnx" in err and "pip install 'singleshot[export]'" in err and len(err.strip().splitlines()) == 1
