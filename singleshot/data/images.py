"""Reading image files as ``uint8`` RGB tensors, whatever their mode, and EXIF orientation.

Every image comes out as ``Tensor[3, H, W]`` uint8 RGB:

- grayscale (``L``, ``1``), palette (``P``), ``CMYK``, ``YCbCr`` and ``LAB`` are converted to RGB;
- images with transparency (``RGBA``, ``LA``, ``PA``, palettes with a transparent colour) are composited
  onto white, which is how viewers and annotation tools show them;
- 16-bit images (``I;16``, ``I``) are scaled to 8 bits (65535 -> 255), not clipped.

EXIF orientation. Cameras store pixels as the sensor saw them and record how to turn them upright in the
EXIF ``Orientation`` tag (1..8; 5..8 swap width and height). Viewers, browsers, OpenCV's ``imread`` and the
annotation tools built on them show the upright image, so :func:`load_image` applies the tag by default.
Tools that ignore the tag (Qt-based ones such as labelImg) annotate the stored pixels; a data set reader
can tell that case when the annotation records the image size (see ``exif_transpose_for``).
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from PIL import Image, ImageOps

from singleshot.errors import UserError

if TYPE_CHECKING:  # torch is imported where a tensor is made: reading annotations and headers needs none
    from torch import Tensor

ORIENTATION_TAG = 0x0112
# EXIF orientations whose upright image has width and height swapped.
SWAPS_AXES = (5, 6, 7, 8)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
EXIF_MODES = ("auto", "upright", "stored")
# What the data-set readers add to a broken image's error: the command that lists every broken file at once.
CHECK_DATA_HINT = "run 'singleshot check-data' to list every broken file"


class ImageHeader(NamedTuple):
    """What an image file says about itself without decoding its pixels.

    ``width``/``height`` are the stored pixels; ``upright_size`` gives ``(width, height)`` after EXIF.
    """

    width: int
    height: int
    orientation: int
    mode: str
    format: str

    @property
    def upright_size(self) -> tuple[int, int]:
        if self.orientation in SWAPS_AXES:
            return self.height, self.width
        return self.width, self.height


def is_image_file(name: str) -> bool:
    """True when the file name ends with a known image extension (any case)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # a corrupt EXIF block is not a reason to refuse the pixels
        return 1
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def read_image_header(path: str | os.PathLike) -> ImageHeader:
    """Size, EXIF orientation, mode and format of an image file, reading only its header.

    Raises:
        UserError: the file is missing or is not an image PIL can identify.
    """
    try:
        with Image.open(path) as im:
            return ImageHeader(im.width, im.height, _orientation(im), im.mode, im.format or "")
    except Exception as exc:
        raise _image_error(path, exc, CHECK_DATA_HINT) from None


def _image_error(path: str | os.PathLike, exc: BaseException, hint: str | None) -> UserError:
    """The one-sentence error for an image file PIL could not open or decode, with ``hint`` appended."""
    if isinstance(exc, FileNotFoundError):
        text = f"image {path} does not exist; check the path" + (f" or {hint}" if hint else "")
    else:
        text = f"cannot read image {path} ({_reason(exc)})" + (f"; {hint}" if hint else "")
    return UserError(text + ".")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if "cannot identify image file" in text:
        return "not an image file PIL can read"
    truncated = re.fullmatch(r"image file is truncated(?: \((\d+) bytes? not processed\))?", text)
    if truncated:  # PIL's own words: "image file is truncated (1 bytes not processed)"
        left = truncated.group(1)
        n = (
            ""
            if left is None
            else f": {left} byte{'' if left == '1' else 's'} at its end could not be decoded"
        )
        return f"the file is truncated{n}"
    return text.split("\n")[0]


def exif_transpose_for(
    header: ImageHeader, annotated_size: tuple[int, int] | None, exif: str = "auto"
) -> bool:
    """Whether to turn an image upright given the size its annotation records.

    ``exif="upright"`` always applies the EXIF orientation, ``"stored"`` never does. ``"auto"`` applies it
    unless the orientation swaps the axes and the annotation's ``(width, height)`` matches the stored
    pixels but not the upright image: then the boxes were drawn on the stored pixels.
    """
    if exif == "stored":
        return False
    if exif == "upright" or header.orientation == 1 or annotated_size is None:
        return True
    stored = (header.width, header.height)
    return not (
        header.orientation in SWAPS_AXES and tuple(annotated_size) == stored and stored != header.upright_size
    )


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    """PIL image of any mode -> ``uint8`` array (H, W, 3), read-only where it views PIL's pixel bytes.

    ``np.asarray`` takes the bytes PIL exports without copying them again (``np.array`` would); callers copy
    into the layout they return, which makes the array writable (``torch.from_numpy`` warns otherwise).
    """
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im)
    if mode.startswith("I") or mode == "F":  # 16/32-bit integer or float gray
        a = np.nan_to_num(np.asarray(im, dtype=np.float32))
        peak = float(a.max(initial=0.0))
        if mode.startswith("I;16") or peak > 255:
            a = a / 257.0  # 16-bit range
        elif mode == "F" and peak <= 1.0:
            a = a * 255.0  # float in [0, 1]
        a = np.clip(a + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, im).convert("RGB"))
    return np.asarray(im.convert("RGB"))


def _decode(path: str | os.PathLike, transpose: bool | None, annotated_size, exif: str, hint: str | None):
    """Decode a file; returns (array (H, W, 3) uint8, possibly read-only, header, whether the EXIF orientation
    was applied). ``hint`` ends the error message of a missing or broken file."""
    try:
        with Image.open(path) as im:
            header = ImageHeader(im.width, im.height, _orientation(im), im.mode, im.format or "")
            im.load()  # raises on truncated or corrupt data
            if transpose is None:
                transpose = exif_transpose_for(header, annotated_size, exif)
            transpose = bool(transpose) and header.orientation != 1
            if transpose:
                im = ImageOps.exif_transpose(im)
            array = _to_rgb_array(im)
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error ... on bad files
        raise _image_error(path, exc, hint) from None
    return array, header, transpose


def load_image(path: str | os.PathLike, *, exif_transpose: bool = True) -> Tensor:
    """Read an image file as upright RGB.

    Args:
        path: any image file PIL reads (JPEG, PNG, BMP, GIF, TIFF, WebP ...), any mode.
        exif_transpose: apply the EXIF orientation tag (what a viewer shows). False keeps the stored pixels.

    Returns:
        ``Tensor[3, H, W]`` uint8 RGB, contiguous.

    Raises:
        UserError: the file is missing, truncated or not an image (one sentence naming it, fit for any caller).
    """
    import torch

    array, _, _ = _decode(path, exif_transpose, None, "upright", None)
    return torch.from_numpy(np.array(array.transpose(2, 0, 1), order="C"))  # the one copy, into (3, H, W)


def as_image_tensor(image) -> Tensor:
    """An image as a user holds it -> ``Tensor[3, H, W]`` RGB, channels first, what :meth:`SSD.predict` runs.

    Args:
        image: a PIL image of any mode (grayscale, palette and transparent ones are converted to RGB as
            :func:`load_image` converts them), a numpy ``uint8`` array (H, W, 3) RGB, or a tensor
            [3, H, W] (uint8, or float in [0, 1]), given back as it is.

    Raises:
        TypeError: anything else (one sentence naming what it got and what it takes).
    """
    import torch

    takes = "a PIL image, a numpy uint8 array (H, W, 3) RGB or a tensor [3, H, W]"
    if isinstance(image, torch.Tensor):
        if image.dim() == 3 and image.shape[0] == 3:
            return image
        raise TypeError(
            f"an image tensor must be [3, H, W] (RGB, channels first), got shape {tuple(image.shape)}"
        )
    if isinstance(image, Image.Image):
        return torch.from_numpy(np.array(_to_rgb_array(image).transpose(2, 0, 1), order="C"))
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
            return torch.from_numpy(np.array(image.transpose(2, 0, 1), order="C"))
        raise TypeError(f"an image must be {takes}, got a numpy {image.dtype} array of shape {image.shape}")
    raise TypeError(f"an image must be {takes}, got {type(image).__name__}")


def load_annotated_image(
    path: str | os.PathLike, annotated_size: tuple[int, int] | None = None, exif: str = "auto"
) -> tuple[Tensor, ImageHeader, bool]:
    """Read an image the way its annotation sees it (see :func:`exif_transpose_for`).

    Returns:
        (image ``Tensor[3, H, W]`` uint8 RGB as a channels-last view of the decoded (H, W, 3) array (resizing
        it is twice as fast as a contiguous copy), the file's header, whether the EXIF orientation was applied).

    Raises:
        UserError: the file is missing, truncated or not an image; the message points to check-data.
    """
    import torch

    array, header, transposed = _decode(path, None, annotated_size, exif, CHECK_DATA_HINT)
    array = np.require(array, requirements="W")  # copies PIL's read-only bytes: the tensor shares this memory
    return torch.from_numpy(array).permute(2, 0, 1), header, transposed


def inspect_image(path: str | os.PathLike, *, decode: bool = True) -> tuple[ImageHeader | None, str | None]:
    """Check an image file without raising: ``(header, None)`` when it reads, ``(header or None, reason)`` if not.

    ``decode=True`` decodes the pixels too, which finds truncated and corrupt files.
    """
    try:
        with Image.open(path) as im:
            header = ImageHeader(im.width, im.height, _orientation(im), im.mode, im.format or "")
            if decode:
                try:
                    im.load()
                except Exception as exc:
                    return header, _reason(exc)
            return header, None
    except FileNotFoundError:
        return None, "image file is missing"
    except Exception as exc:
        return None, _reason(exc)
