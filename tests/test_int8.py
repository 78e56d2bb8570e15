"""export --int8: onnxruntime static quantisation of the network only; decoding and NMS stay in float32."""

import json

import numpy as np
import onnx
import pytest
import torch

from singleshot import runtime
from singleshot.cli import main
from singleshot.export import export_onnx, network_nodes, quantize_int8
from singleshot.models import DEFAULT_MODEL, build_model, save_checkpoint

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

POSTPROCESSING = {"NonMaxSuppression", "TopK", "Softmax", "ScatterElements", "Exp"}


def _model():
    torch.manual_seed(0)
    model = build_model(DEFAULT_MODEL, num_classes=4, class_names=["a", "b", "c"], image_size=128)
    with torch.no_grad():
        for conv in model.head.classification.modules():
            if isinstance(conv, torch.nn.Conv2d) and conv.bias is not None:
                conv.bias.normal_(0.0, 1.5)
    model.score_threshold, model.max_detections = 0.05, 30
    return model.eval()


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("int8")
    model = _model()
    float_path = export_onnx(model, folder / "float32.onnx")
    g = torch.Generator().manual_seed(3)
    batches = [
        torch.randint(0, 256, (1, 3, 128, 128), generator=g, dtype=torch.uint8).numpy() for _ in range(8)
    ]
    return model, float_path, quantize_int8(float_path, folder / "int8.onnx", batches)


@pytest.mark.slow
def test_the_network_is_the_convolutions_and_what_they_need(graphs):
    model, float_path, _ = graphs
    proto = onnx.load(str(float_path))
    network, head = network_nodes(proto)
    assert len(head) == 2 * len(model.head.classification)  # a class and a box convolution per source map
    kinds = {node.name: node.op_type for node in proto.graph.node}
    assert all(kinds[name] == "Conv" for name in head) and head <= network
    assert {n.name for n in proto.graph.node if n.op_type == "Conv"} <= network
    assert not {kinds[name] for name in network} & POSTPROCESSING


@pytest.mark.slow
def test_int8_quantises_the_backbone_and_leaves_decoding_and_nms_in_float(graphs):
    model, float_path, int8_path = graphs
    proto = onnx.load(str(int8_path))
    ops = [node.op_type for node in proto.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    float_ops = [node.op_type for node in onnx.load(str(float_path)).graph.node]
    for op in POSTPROCESSING:  # the same post-processing nodes, none of them quantised
        assert ops.count(op) == float_ops.count(op)
    produced_by = {out: node for node in proto.graph.node for out in node.output}
    weights = {init.name: init for init in proto.graph.initializer}
    convs = [node for node in proto.graph.node if node.op_type == "Conv"]
    quantised = [
        c
        for c in convs
        if produced_by.get(c.input[1]) and produced_by[c.input[1]].op_type == "DequantizeLinear"
    ]
    assert len(quantised) == len(convs) - 2 * len(model.head.classification)  # all but the head's last
    for conv in quantised:  # per-channel int8 weights: one scale per output channel
        dq = produced_by[conv.input[1]]
        assert weights[dq.input[0]].data_type == onnx.TensorProto.INT8
        assert (
            len(onnx.numpy_helper.to_array(weights[dq.input[1]]))
            == onnx.numpy_helper.to_array(weights[dq.input[0]]).shape[0]
        )
    for node in proto.graph.node:
        if node.op_type in POSTPROCESSING:
            assert all(
                produced_by.get(i) is None or produced_by[i].op_type != "DequantizeLinear" for i in node.input
            )
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["class_names"]) == ["a", "b", "c"] and "int8" in meta["quantization"]


@pytest.mark.slow
def test_int8_detections_stay_close_to_float32(graphs):
    model, float_path, int8_path = graphs
    g = torch.Generator().manual_seed(4)
    images = torch.randint(0, 256, (2, 3, 128, 128), generator=g, dtype=torch.uint8)
    sizes = [(128, 128)] * 2
    float_det = runtime.GraphEngine(float_path, "onnxruntime").detect(images, sizes)
    int8_det = runtime.GraphEngine(int8_path, "onnxruntime").detect(images, sizes)
    for f, q in zip(float_det, int8_det):
        assert len(q["scores"]) > 0 and np.all(np.diff(q["scores"].numpy()) <= 1e-6)
        assert abs(float(q["scores"][0]) - float(f["scores"][0])) < 0.05  # the best score survives rounding
        assert torch.all((q["boxes"] >= 0) & (q["boxes"] <= 128))


@pytest.mark.slow
def test_cli_export_int8_reports_speed_and_map(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["synth", str(data), "--images", "10", "--classes", "3", "--image-size", "128"]) == 0
    model = _model()
    model.class_names = (data / "classes.txt").read_text().split()
    ckpt = save_checkpoint(tmp_path / "best.pt", model)
    args = ["export", str(ckpt), "--int8", "--calibration-data", str(data), "--calibration-images", "4"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "int8" in out and "mAP" in out and "x)" in out
    report = json.loads((tmp_path / "best.int8.json").read_text())
    assert report["calibration_images"] == 4 and report["validation_images"] > 0
    assert report["path"] == str(tmp_path / "best.int8.onnx")
    assert report["speed_up"] == pytest.approx(
        report["float32"]["ms_per_image"] / report["int8"]["ms_per_image"]
    )
    assert report["map_change"] == pytest.approx(report["int8"]["map"] - report["float32"]["map"])
    assert main(["eval", str(tmp_path / "best.int8.onnx"), "--data", str(data), "--workers", "0"]) == 0


def test_cli_export_int8_bad_options_are_one_sentence(tmp_path, capsys):
    model = _model()
    ckpt = save_checkpoint(tmp_path / "best.pt", model)
    for args, words in (
        (["--int8"], "needs --calibration-data"),
        (["--int8", "--calibration-data", str(tmp_path / "nothing")], "does not exist"),
        (["--int8", "--calibration-data", str(tmp_path), "--calibration-images", "0"], "at least 1"),
        (["--int8", "--calibration-data", str(tmp_path), "--no-nms"], "leave out --no-nms"),
    ):
        assert main(["export", str(ckpt), *args]) == 2
        assert words in capsys.readouterr().err


def test_int8_advice_speaks_only_when_the_int8_graph_does_not_pay():
    from singleshot.commands.export import int8_advice

    assert int8_advice({"speed_up": 3.1, "map_change": -0.0016}) == []
    assert int8_advice({"speed_up": 1.1, "map_change": -0.02}) == []  # the limits themselves pass
    even = int8_advice({"speed_up": 0.99, "map_change": 0.0})
    assert even == [
        "the int8 graph runs at 0.99x the speed of float32 on this CPU (under 1.1x); deploy the float32 graph "
        "(singleshot export CKPT without --int8)"
    ]
    both = int8_advice({"speed_up": 0.5, "map_change": -0.05})
    assert (
        len(both) == 2
        and "loses 0.0500 mAP (more than 0.02)" in both[1]
        and "--calibration-images" in both[1]
    )
