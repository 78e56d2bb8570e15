"""Image files of every mode load as uint8 RGB; EXIF orientation follows the documented policy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from singleshot.data import check_dataset, load_image, open_dataset, read_image_header
from singleshot.data.images import load_annotated_image
from singleshot.errors import UserError

from .test_data_readers import voc_xml


def pixel(image: torch.Tensor, x: int = 0, y: int = 0) -> list[int]:
    return image[:, y, x].tolist()


def test_modes_load_as_rgb(tmp_path):
    cases = {}
    cases["gray.png"] = (Image.new("L", (6, 4), 77), [77, 77, 77])
    cases["bilevel.png"] = (Image.new("1", (6, 4), 1), [255, 255, 255])
    palette = Image.new("P", (6, 4), 3)
    palette.putpalette([0, 0, 0] * 3 + [10, 20, 30] + [0, 0, 0] * 252)
    cases["palette.png"] = (palette, [10, 20, 30])
    cases["rgba.png"] = (Image.new("RGBA", (6, 4), (0, 0, 255, 255)), [0, 0, 255])
    cases["clear.png"] = (Image.new("RGBA", (6, 4), (255, 0, 0, 0)), [255, 255, 255])  # transparent: white
    cases["gray_alpha.png"] = (Image.new("LA", (6, 4), (0, 128)), [127, 127, 127])
    cases["deep.png"] = (Image.fromarray(np.full((4, 6), 128 * 257, dtype=np.uint16)), [128, 128, 128])
    cases["float.tif"] = (Image.fromarray(np.full((4, 6), 0.5, dtype=np.float32)), [128, 128, 128])
    cases["cmyk.jpg"] = (Image.new("CMYK", (6, 4), (0, 255, 255, 0)), None)  # red in CMYK
    for name, (im, expected) in cases.items():
        im.save(tmp_path / name)
        image = load_image(tmp_path / name)
        assert image.dtype == torch.uint8 and image.shape == (3, 4, 6), name
        if expected is not None:
            assert all(abs(a - b) <= 1 for a, b in zip(pixel(image), expected)), (name, pixel(image))
    r, g, b = pixel(load_image(tmp_path / "cmyk.jpg"))
    assert r > 200 and g < 60 and b < 60
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")  # really a 16-bit file


def test_images_load_writable_without_warnings(tmp_path, monkeypatch):
    arrays = []
    from_numpy = torch.from_numpy

    def spy(array):  # torch warns about a read-only array once per process only: check every call
        arrays.append(array)
        return from_numpy(array)

    monkeypatch.setattr(torch, "from_numpy", spy)
    Image.new("RGB", (6, 4), (10, 20, 30)).save(tmp_path / "rgb.png")
    Image.new("L", (6, 4), 77).save(tmp_path / "gray.png")
    Image.new("RGBA", (6, 4), (0, 0, 255, 128)).save(tmp_path / "rgba.png")
    rotated_jpeg(tmp_path / "r.jpg")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ["rgb.png", "gray.png", "rgba.png", "r.jpg"]:
            image = load_image(tmp_path / name)
            assert image.is_contiguous()
            annotated, _, _ = load_annotated_image(tmp_path / name)
            assert torch.equal(annotated, image)
            image.add_(1), annotated.add_(1)  # the caller owns the pixels
        assert torch.equal(
            load_image(tmp_path / "rgb.png")[:, 0, 0], torch.tensor([10, 20, 30], dtype=torch.uint8)
        )
    assert len(arrays) == 9 and all(a.flags.writeable for a in arrays)


def test_unreadable_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_image(tmp_path / "none.jpg")
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(UserError, match="not an image file"):
        load_image(tmp_path / "text.jpg")
    with pytest.raises(UserError, match="not an image file"):
        read_image_header(tmp_path / "text.jpg")


def test_a_truncated_image_is_said_in_plain_words(tmp_path):
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "cut.png").write_bytes(_png_bytes()[:-30])
    for name in ("cut.jpg", "cut.png"):
        with pytest.raises(UserError) as exc:
            load_image(tmp_path / name)
        message = str(exc.value)
        assert f"cannot read image {tmp_path / name} (the file is truncated" in message, message
        assert "not processed" not in message and "((" not in message and "))" not in message


def _png_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_pils_truncation_count_is_pluralised():
    from singleshot.data.images import _reason

    assert _reason(OSError("image file is truncated (1 bytes not processed)")) == (
        "the file is truncated: 1 byte at its end could not be decoded"
    )
    assert _reason(OSError("image file is truncated (3 bytes not processed)")).endswith(
        "3 bytes at its end could not be decoded"
    )
    assert _reason(OSError("image file is truncated")) == "the file is truncated"


def test_error_hints_fit_the_caller(tmp_path):
    (tmp_path / "text.jpg").write_text("hello")
    # load_image serves `singleshot detect` and any caller: the file and the reason, no data-set command.
    with pytest.raises(UserError) as info:
        load_image(tmp_path / "text.jpg")
    assert str(info.value) == f"cannot read image {tmp_path / 'text.jpg'} (not an image file PIL can read)."
    with pytest.raises(UserError) as info:
        load_image(tmp_path / "none.jpg")
    assert str(info.value) == f"image {tmp_path / 'none.jpg'} does not exist; check the path."
    # The data-set readers point to check-data, which lists every broken file at once.
    for read in (load_annotated_image, read_image_header):
        with pytest.raises(UserError, match=r"cannot read image .*text\.jpg .*; run 'singleshot check-data'"):
            read(tmp_path / "text.jpg")
        with pytest.raises(UserError, match=r"does not exist; check the path or run 'singleshot check-data'"):
            read(tmp_path / "none.jpg")


def rotated_jpeg(path, orientation: int = 6):
    """A 40x20 stored image with a red 6x6 square at its stored top-left corner, EXIF orientation 6."""
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    im.paste((255, 0, 0), (0, 0, 6, 6))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, exif=exif, quality=95)


def test_load_image_turns_exif_orientation_upright(tmp_path):
    rotated_jpeg(tmp_path / "r.jpg")
    header = read_image_header(tmp_path / "r.jpg")
    assert (header.width, header.height, header.orientation, header.upright_size) == (40, 20, 6, (20, 40))
    upright = load_image(tmp_path / "r.jpg")
    assert upright.shape == (3, 40, 20)
    # orientation 6 means "turn 90 degrees clockwise to view": the stored top-left lands top-right
    assert pixel(upright, 18, 1)[0] > 200 and pixel(upright, 1, 1)[0] < 50
    stored = load_image(tmp_path / "r.jpg", exif_transpose=False)
    assert stored.shape == (3, 20, 40) and pixel(stored, 1, 1)[0] > 200


def voc_with_rotated_image(root, recorded_size):
    rotated_jpeg(root / "JPEGImages" / "r.jpg")
    (root / "Annotations").mkdir(parents=True)
    (root / "Annotations" / "r.xml").write_text(voc_xml([("thing", 1, 1, 6, 6, 0)], *recorded_size, "r.jpg"))
    return root


def test_exif_policy_follows_the_recorded_size(tmp_path):
    # the annotation records the upright size (20x40): boxes refer to the upright image
    up = open_dataset(voc_with_rotated_image(tmp_path / "up", (20, 40)))
    image, target = up[0]
    assert image.shape == (3, 40, 20)
    # it records the stored size (40x20): the tool ignored EXIF, so the stored pixels are used
    stored = open_dataset(voc_with_rotated_image(tmp_path / "stored", (40, 20)))
    image, target = stored[0]
    assert image.shape == (3, 20, 40)
    x1, y1, x2, y2 = target["boxes"][0].long().tolist()
    assert (image[0, y1 + 1 : y2 - 1, x1 + 1 : x2 - 1] > 200).all()  # the box frames the red square
    warnings = [p for p in check_dataset(tmp_path / "stored") if p.severity == "warning"]
    assert (
        len(warnings) == 1
        and "EXIF orientation (6)" in warnings[0].message
        and "stored" in warnings[0].message
    )
    # forcing a policy
    assert open_dataset(tmp_path / "stored", exif="upright")[0][0].shape == (3, 40, 20)
    assert open_dataset(tmp_path / "up", exif="stored")[0][0].shape == (3, 20, 40)
    with pytest.raises(UserError, match="exif mode"):
        open_dataset(tmp_path / "up", exif="sideways")


def test_yolo_boxes_refer_to_the_upright_image(tmp_path):
    root = tmp_path / "yolo"
    rotated_jpeg(root / "images" / "train" / "r.jpg")
    (root / "labels" / "train").mkdir(parents=True)
    # the red square seen upright: x 14..20 of 20, y 0..6 of 40
    (root / "labels" / "train" / "r.txt").write_text(f"0 {17 / 20} {3 / 40} {6 / 20} {6 / 40}\n")
    (root / "data.yaml").write_text("train: images/train\nnames: [square]\n")
    ds = open_dataset(root, "train")
    image, target = ds[0]
    assert image.shape == (3, 40, 20) and ds.image_info(0)[1:] == (20, 40)
    x1, y1, x2, y2 = target["boxes"][0].round().long().tolist()
    assert (x1, y1, x2, y2) == (14, 0, 20, 6) and (image[0, y1 + 1 : y2 - 1, x1 + 1 : x2 - 1] > 200).all()
