"""Gemma 4 image preprocessing: RGB, aspect-preserving resize, rescale, patchify (no padding).

Numerically identical to transformers' `Gemma4ImageProcessorPil` for the patches it does not pad:
the same RGB conversion (alpha composited on white), Pillow BICUBIC resize on uint8, rescale in
float64 then cast to float32, and (row, col, channel) patch order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

SUPPORTED_SOFT_TOKENS = (70, 140, 280, 560, 1120)
RESAMPLE = Image.Resampling.BICUBIC
RESCALE = 1 / 255


@dataclass(frozen=True)
class PreprocessedImage:
    pixel_values: torch.Tensor  # float32 [num_patches, 3 * patch * patch], values in [0, 1]
    position_ids: torch.Tensor  # int64 [num_patches, 2] as (x, y) patch coordinates, raster order
    num_soft_tokens: int


def check_budget(max_soft_tokens: int) -> None:
    if max_soft_tokens not in SUPPORTED_SOFT_TOKENS:
        raise ValueError(f"max_soft_tokens must be one of {SUPPORTED_SOFT_TOKENS}, got {max_soft_tokens!r}")


def target_size(
    width: int, height: int, *, patch_size: int, pooling_kernel_size: int, max_soft_tokens: int
) -> tuple[int, int]:
    """(width, height) after the aspect-preserving resize: the largest multiples of patch*pool within the budget."""
    check_budget(max_soft_tokens)
    if width <= 0 or height <= 0:
        raise ValueError(f"image has no pixels: {width}x{height}")
    max_patches = max_soft_tokens * pooling_kernel_size**2
    side = pooling_kernel_size * patch_size
    target_px = max_patches * patch_size**2
    factor = math.sqrt(target_px / (height * width))
    new_h = math.floor(factor * height / side) * side
    new_w = math.floor(factor * width / side) * side
    # A very thin image rounds one side to zero: keep one pooling block there and stretch the other side
    # by the aspect ratio, capped so the patch budget still holds (the same rule as the reference).
    max_side = (max_patches // pooling_kernel_size**2) * side
    if new_h == 0 and new_w == 0:
        raise ValueError(f"cannot resize a {width}x{height} image to a multiple of {side}")
    if new_h == 0:
        new_h, new_w = side, min(math.floor(width / height) * side, max_side)
    elif new_w == 0:
        new_w, new_h = side, min(math.floor(height / width) * side, max_side)
    if new_h * new_w > target_px:
        raise ValueError(f"resizing {width}x{height} to {new_w}x{new_h} exceeds {max_patches} patches")
    return new_w, new_h


def num_soft_tokens_for(
    width: int, height: int, *, patch_size: int, pooling_kernel_size: int, max_soft_tokens: int
) -> int:
    """Soft tokens an image of this size becomes, without decoding its pixels."""
    new_w, new_h = target_size(
        width, height, patch_size=patch_size, pooling_kernel_size=pooling_kernel_size, max_soft_tokens=max_soft_tokens
    )
    side = pooling_kernel_size * patch_size
    return (new_w // side) * (new_h // side)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency (RGBA, LA, palette with a transparent index) composited onto white."""
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def resize(image: Image.Image, *, patch_size: int, pooling_kernel_size: int, max_soft_tokens: int) -> Image.Image:
    size = target_size(
        image.width,
        image.height,
        patch_size=patch_size,
        pooling_kernel_size=pooling_kernel_size,
        max_soft_tokens=max_soft_tokens,
    )
    return image if size == image.size else image.resize(size, resample=RESAMPLE)


def rescale(image: Image.Image) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 in [0, 1]; the float64 detour matches the reference bit for bit."""
    return (np.asarray(image, dtype=np.uint8).astype(np.float64) * RESCALE).astype(np.float32)


def patchify(pixels: np.ndarray, patch_size: int) -> np.ndarray:
    """[H, W, C] -> [num_patches, patch * patch * C], patches in raster order, (row, col, channel) inside."""
    h, w, c = pixels.shape
    ph, pw = h // patch_size, w // patch_size
    patches = pixels.reshape(ph, patch_size, pw, patch_size, c)  # [ph, p, pw, p, C]
    patches = patches.transpose(0, 2, 1, 3, 4)  # [ph, pw, p, p, C]
    return patches.reshape(ph * pw, patch_size * patch_size * c)  # [ph*pw, p*p*C]


def patch_positions(width: int, height: int, patch_size: int) -> np.ndarray:
    """(x, y) of every patch in raster order: int64 [num_patches, 2]."""
    ph, pw = height // patch_size, width // patch_size
    ys, xs = np.meshgrid(np.arange(ph), np.arange(pw), indexing="ij")  # each [ph, pw]
    return np.stack([xs, ys], axis=-1).reshape(ph * pw, 2).astype(np.int64)  # [ph*pw, 2]


def preprocess_image(
    image: Image.Image, *, patch_size: int, pooling_kernel_size: int, max_soft_tokens: int
) -> PreprocessedImage:
    check_budget(max_soft_tokens)
    resized = resize(
        to_rgb(image), patch_size=patch_size, pooling_kernel_size=pooling_kernel_size, max_soft_tokens=max_soft_tokens
    )
    patches = patchify(rescale(resized), patch_size)
    positions = patch_positions(resized.width, resized.height, patch_size)
    return PreprocessedImage(
        pixel_values=torch.from_numpy(np.ascontiguousarray(patches)),
        position_ids=torch.from_numpy(positions),
        num_soft_tokens=patches.shape[0] // pooling_kernel_size**2,
    )
