"""3x3 convolutions by Winograd's minimal filtering F(4x4, 3x3), for the CPU in float32.

A 3x3 convolution (stride 1, padding 1) computes each output pixel with 9 multiply-adds per input channel.
Winograd's algorithm (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016)
computes a 4x4 block of outputs from the 6x6 input tile around it with 36 products per input channel
instead of 144, through three linear maps::

    V = B^T d B          the input tile d (6x6), per channel
    U = G g G^T          the 3x3 filter g, once per weight
    Y = A^T (sum_c U * V) A   the 4x4 output block

The channel sum is, for each of the 36 tile positions, a matrix product (tiles x C_in) @ (C_in x C_out):
36 batched matrix products replace the convolution, with 4x fewer multiply-adds. The transforms are done
here as matrix products with the Kronecker products B^T (x) B^T (36 x 36) and A^T (x) A^T (16 x 36).

The result equals the convolution up to float32 rounding: the transforms' coefficients (up to 8) make the
error a few times larger than a direct convolution's (~1e-5 relative instead of ~3e-6). It serves the CPU
in float32, for prediction (:class:`FusedWinogradConv2d`) and training (:class:`WinogradConv2d`, whose
backward pass stays in the Winograd domain), where :func:`winograd_pays`: VGG16's 3x3 layers with >= 128
channels at 38x38 and 75x75 run 1.5-2x faster than oneDNN's direct convolution on an AVX-512 CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

# Lavin and Gray's F(4x4, 3x3) with the interpolation points 0, 1, -1, 2, -2 and infinity.
_BT = torch.tensor(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    dtype=torch.float64,
)
_G = torch.tensor(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    dtype=torch.float64,
)
_AT = torch.tensor(
    [
        [1, 1, 1, 1, 1, 0],
        [0, 1, -1, 2, -2, 0],
        [0, 1, 1, 4, 4, 0],
        [0, 1, -1, 8, -8, 1],
    ],
    dtype=torch.float64,
)
_INPUT = torch.kron(_BT, _BT).float()  # (36, 36): tile (k, l) -> transformed (i, j), row-major pairs
_OUTPUT = torch.kron(_AT, _AT).float()  # (16, 36): transformed (i, j) -> output (p, q)
_TILE, _BLOCK = 6, 4


def winograd_weight(weight: Tensor) -> Tensor:
    """The transformed filters U = G g G^T of a 3x3 convolution weight, computed in float64.

    Args:
        weight: Tensor[C_out, C_in, 3, 3].

    Returns:
        Tensor[36, C_in, C_out] float32 contiguous: for each of the 6x6 tile positions (row-major), the
        matrix the transformed input tiles are multiplied with.
    """
    if weight.dim() != 4 or weight.shape[-2:] != (3, 3):
        raise ValueError(
            f"winograd_weight expects Tensor[C_out, C_in, 3, 3], got shape {tuple(weight.shape)}"
        )
    return _transformed(weight.detach().double(), _G).float().contiguous()


def _transformed(weight: Tensor, g: Tensor) -> Tensor:
    """G g G^T of every filter of ``weight`` Tensor[C_out, C_in, 3, 3] with ``g`` = G in its dtype:
    Tensor[36, C_in, C_out] (differentiable)."""
    u = torch.einsum("ik,jl,ockl->ijco", g, g, weight)  # (6, 6, C_in, C_out)
    return u.reshape(_TILE * _TILE, weight.shape[1], weight.shape[0])


_CHUNK_BYTES = 8 * 2**20  # transformed tiles per chunk of images: about the size of a core's share of cache


def _chunks(n: int, tiles: int, channels: int) -> list[tuple[int, int]]:
    """Consecutive image ranges whose transformed tiles (36 x tiles x channels floats each) fill about
    ``_CHUNK_BYTES``: small maps go several images at a time so that the matrix products are not too thin,
    large ones one at a time so that the tiles stay in the cache."""
    per_chunk = max(1, _CHUNK_BYTES // (_TILE * _TILE * tiles * channels * 4))
    return [(i, min(n, i + per_chunk)) for i in range(0, n, per_chunk)]


def _input_tiles(padded: Tensor, start: int, stop: int, rows: int, cols: int) -> Tensor:
    """B^T d B of every 6x6 tile of images ``start:stop`` of ``padded`` Tensor[N, 4R + 2, 4C + 2, C_in]:
    Tensor[36, k * R * C, C_in] for k = stop - start images (tiles in image, row, column order)."""
    c = padded.shape[3]
    s_n, s_h, s_w, _ = padded.stride()
    k = stop - start
    # d[y, x, i, r, s, :] = padded[start + i, 4r + y, 4s + x, :]: the tiles, overlapping by 2 pixels.
    d = padded.as_strided(
        (_TILE, _TILE, k, rows, cols, c),
        (s_h, s_w, s_n, _BLOCK * s_h, _BLOCK * s_w, 1),
        padded.storage_offset() + start * s_n,
    ).reshape(_TILE * _TILE, -1)
    return torch.mm(_INPUT, d).view(_TILE * _TILE, k * rows * cols, c)


def _output_blocks(m: Tensor, k: int, rows: int, cols: int) -> Tensor:
    """A^T m A of the channel sums ``m`` Tensor[36, k * R * C, C_out]: the output blocks assembled as
    Tensor[k, 4R, 4C, C_out] (a permuted view)."""
    c_out = m.shape[2]
    y = torch.mm(_OUTPUT, m.view(_TILE * _TILE, -1)).view(_BLOCK, _BLOCK, k, rows, cols, c_out)
    return y.permute(2, 3, 0, 4, 1, 5).reshape(k, rows * _BLOCK, cols * _BLOCK, c_out)


def _blocks(h: int, w: int) -> tuple[int, int]:
    """The number R, C of 4x4 output blocks down and across an H x W map."""
    return -(-h // _BLOCK), -(-w // _BLOCK)


def _pad_to_tiles(x: Tensor) -> tuple[Tensor, int, int]:
    """``x`` Tensor[N, H, W, C] with one pixel of zeros above and left and enough below and right to complete
    4x4 output blocks, and the number R, C of block rows and columns."""
    _, h, w, _ = x.shape
    rows, cols = _blocks(h, w)
    return F.pad(x, (0, 0, 1, _BLOCK * cols + 1 - w, 1, _BLOCK * rows + 1 - h)), rows, cols


def _forward(
    x: Tensor, transformed: Tensor, bias: Tensor | None, tiles: list[Tensor] | None = None
) -> Tensor:
    """The convolution of :func:`conv3x3_winograd` (no ReLU), chunk by chunk of images; the transformed input
    tiles of each chunk are appended to ``tiles`` when given (for a backward pass)."""
    n, h, w, c = x.shape
    padded, rows, cols = _pad_to_tiles(x)
    out = x.new_empty(n, h, w, transformed.shape[2])
    for start, stop in _chunks(n, rows * cols, max(c, transformed.shape[2])):
        v = _input_tiles(padded, start, stop, rows, cols)
        if tiles is not None:
            tiles.append(v)
        y = _output_blocks(torch.bmm(v, transformed), stop - start, rows, cols)
        if bias is None:
            out[start:stop] = y[:, :h, :w]
        else:
            torch.add(y[:, :h, :w], bias, out=out[start:stop])
    return out


def conv3x3_winograd(
    x: Tensor, transformed: Tensor, bias: Tensor | None = None, *, relu: bool = False
) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` (then ReLU if ``relu``) by F(4x4, 3x3), channels last.

    Args:
        x: Tensor[N, H, W, C_in] float32, contiguous (the channels-last layout of an N, C, H, W tensor).
        transformed: Tensor[36, C_in, C_out] from :func:`winograd_weight`.
        bias: Tensor[C_out] or None.
        relu: apply ReLU to the output.

    Returns:
        Tensor[N, H, W, C_out] contiguous.
    """
    out = _forward(x, transformed, bias)
    return out.relu_() if relu else out


def winograd_pays(c_in: int, c_out: int, height: int, width: int, *, backward: bool = False) -> bool:
    """Whether F(4x4, 3x3) is expected to beat oneDNN's direct 3x3 convolution on the CPU for this layer and
    map size, from measurements on an AVX-512 CPU (docs/benchmarks.md): both channel counts >= 128 and maps
    >= 16 pixels a side (smaller ones make 36 thin matrix products). Forward only, it also needs
    C_in * C_out >= 128 * 256: a 128 -> 128 layer breaks even, while with its backward pass it gains 1.5x.
    """
    if min(height, width) < 16 or c_in < 128 or c_out < 128:
        return False
    return backward or c_in * c_out >= 128 * 256


def winograd_suits(conv: nn.Module) -> bool:
    """Whether ``conv`` is a convolution F(4x4, 3x3) can compute: a plain ``nn.Conv2d`` (or a
    :class:`WinogradConv2d`) 3x3 with stride 1, padding 1, no dilation or groups, zero padding, and >= 128
    input and output channels (:func:`winograd_pays` decides per map size)."""
    return (
        type(conv) in (nn.Conv2d, WinogradConv2d)
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and conv.in_channels >= 128
        and conv.out_channels >= 128
    )


class FusedWinogradConv2d(nn.Module):
    """An inference-only 3x3 convolution (stride 1, padding 1, no groups) for channels-last float32 input
    on the CPU, by :func:`conv3x3_winograd` where :func:`winograd_pays` for the map size and by the direct
    convolution elsewhere, with an optional fused ReLU.

    Args:
        weight: Tensor[C_out, C_in, 3, 3] (batch norm already folded in, if any).
        bias: Tensor[C_out].
        relu: apply ReLU to the output.
    """

    def __init__(self, weight: Tensor, bias: Tensor, *, relu: bool = False) -> None:
        super().__init__()
        self.weight = weight.detach().contiguous(memory_format=torch.channels_last)
        self.bias = bias.detach().clone()
        self.transformed: Tensor | None = None  # built on first use: 4x the weight's memory
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        c_out, c_in = self.weight.shape[:2]
        if not winograd_pays(c_in, c_out, *x.shape[-2:]):
            y = F.conv2d(x, self.weight, self.bias, padding=1)
            return y.relu_() if self.relu else y
        if self.transformed is None:
            self.transformed = winograd_weight(self.weight)
        nhwc = x.permute(0, 2, 3, 1).contiguous()  # free for channels-last input
        return conv3x3_winograd(nhwc, self.transformed, self.bias, relu=self.relu).permute(0, 3, 1, 2)


# --- training: the same algorithm with its own backward ---------------------------------------------------


class _Winograd3x3(torch.autograd.Function):
    """y = conv3x3(x, U) + bias in the Winograd domain, with the backward pass in the same domain: the
    gradients of the 36 matrix products are again 36 matrix products, 4x smaller than a direct convolution's.

    forward(x Tensor[N, H, W, C_in] contiguous, transformed Tensor[36, C_in, C_out], bias Tensor[C_out])
    -> Tensor[N, H, W, C_out]. The transformed input tiles (2.25x the input) are kept for the backward pass.
    """

    @staticmethod
    def forward(ctx, x: Tensor, transformed: Tensor, bias: Tensor) -> Tensor:
        ctx.tiles = []
        ctx.save_for_backward(transformed)
        return _forward(x, transformed, bias, ctx.tiles)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        (transformed,) = ctx.saved_tensors
        tiles = ctx.tiles  # freed with the graph (kept for a second backward pass with retain_graph)
        n, h, w, c_out = grad_out.shape
        c = transformed.shape[1]
        rows, cols = _blocks(h, w)
        grad_transformed = torch.zeros_like(transformed) if ctx.needs_input_grad[1] else None
        grad_x = grad_out.new_empty(n, h, w, c) if ctx.needs_input_grad[0] else None
        for (start, stop), v in zip(_chunks(n, rows * cols, max(c, c_out)), tiles):
            k = stop - start
            # The adjoint of A^T m A: grad_out zero-padded to whole blocks, then A (x) A applied.
            blocks = grad_out.new_zeros(k, rows * _BLOCK, cols * _BLOCK, c_out)
            blocks[:, :h, :w] = grad_out[start:stop]
            gy = (
                blocks.view(k, rows, _BLOCK, cols, _BLOCK, c_out)
                .permute(2, 4, 0, 1, 3, 5)
                .reshape(_BLOCK**2, -1)
            )
            gm = torch.mm(_OUTPUT.T, gy).view(_TILE * _TILE, k * rows * cols, c_out)
            if grad_transformed is not None:
                grad_transformed.baddbmm_(v.transpose(1, 2), gm)
            if grad_x is not None:
                gv = torch.bmm(gm, transformed.transpose(1, 2))  # (36, tiles, C_in)
                gd = torch.mm(_INPUT.T, gv.view(_TILE * _TILE, -1)).view(_TILE, _TILE, k, rows, cols, c)
                # The adjoint of the overlapping tile gather: position (y, x) of tile (r, s) is padded pixel
                # (4r + y, 4s + x). Positions 0-3 cover the map once; 4-5 add onto the next tile's 0-1.
                grid = grad_out.new_zeros(k, rows + 1, _BLOCK, cols + 1, _BLOCK, c)
                grid[:, :rows, :, :cols] = gd[:_BLOCK, :_BLOCK].permute(2, 3, 0, 4, 1, 5)
                grid[:, 1:, :2, :cols] += gd[_BLOCK:, :_BLOCK].permute(2, 3, 0, 4, 1, 5)
                grid[:, :rows, :, 1:, :2] += gd[:_BLOCK, _BLOCK:].permute(2, 3, 0, 4, 1, 5)
                grid[:, 1:, :2, 1:, :2] += gd[_BLOCK:, _BLOCK:].permute(2, 3, 0, 4, 1, 5)
                padded = grid.view(k, (rows + 1) * _BLOCK, (cols + 1) * _BLOCK, c)
                grad_x[start:stop] = padded[:, 1 : 1 + h, 1 : 1 + w]
        grad_bias = grad_out.sum(dim=(0, 1, 2)) if ctx.needs_input_grad[2] else None
        return grad_x, grad_transformed, grad_bias


_G32 = _G.float()


def winograd_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for a 3x3 ``weight`` by F(4x4, 3x3), differentiable in ``x``,
    ``weight`` and ``bias`` (the backward pass runs in the Winograd domain too).

    Args:
        x: Tensor[N, C_in, H, W] float32 on the CPU, any memory format.
        weight: Tensor[C_out, C_in, 3, 3].
        bias: Tensor[C_out] or None.

    Returns:
        Tensor[N, C_out, H, W] in the channels-last memory format.
    """
    if bias is None:
        bias = weight.new_zeros(weight.shape[0])
    nhwc = x.permute(0, 2, 3, 1).contiguous()
    return _Winograd3x3.apply(nhwc, _transformed(weight, _G32).contiguous(), bias).permute(0, 3, 1, 2)


class WinogradConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, same state dict) that trains by F(4x4, 3x3) on the CPU.

    In training mode, on the CPU, in float32 without autocast and where :func:`winograd_pays` (with the
    backward pass) for the map size, the forward and backward passes run in the Winograd domain
    (:func:`winograd_conv2d`, 1.5-2x faster than oneDNN's direct kernels for VGG16's conv3 to conv5 layers);
    everywhere else, in eval mode included (so that ``model(x)`` stays bit-identical to a plain
    ``nn.Conv2d``), it is ``nn.Conv2d``. ``winograd = False`` on the instance turns it off.
    :func:`use_winograd` swaps it in for the suitable convolutions of a model.
    """

    winograd = True

    def forward(self, x: Tensor) -> Tensor:
        if (
            self.winograd
            and self.training
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and x.dim() == 4
            and winograd_pays(self.in_channels, self.out_channels, *x.shape[-2:], backward=True)
        ):
            return winograd_conv2d(x, self.weight, self.bias)
        return super().forward(x)


def use_winograd(module: nn.Module, enabled: bool = True) -> int:
    """Make every suitable 3x3 convolution under ``module`` a :class:`WinogradConv2d` (in place: the same
    module objects, parameters and state-dict keys, only their class changes) with Winograd training turned
    on or off. Returns how many convolutions it set."""
    count = 0
    for conv in module.modules():
        if winograd_suits(conv):
            conv.__class__ = WinogradConv2d
            conv.winograd = enabled
            count += 1
    return count
