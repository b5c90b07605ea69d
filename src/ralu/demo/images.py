"""Pictures of the toy model's results: comparison grids with labelled rows and outlined regions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from PIL import Image

REGION_COLOUR = (0, 255, 255)  # cyan: the low-res tokens a RALU run upsampled early


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images (B, 3, H, W) in [-1, 1] → (B, H, W, 3) uint8."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def psnr(images: np.ndarray, reference: np.ndarray) -> float:
    """Mean PSNR in dB of uint8 images (B, H, W, 3) against references of the same shape (inf when equal)."""
    mse = ((images.astype(np.float64) - reference.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        return float(np.mean(10 * np.log10(255.0**2 / mse)))


def comparison_grid(rows: Sequence[tuple[str, np.ndarray, np.ndarray | None]], captions: Sequence[str],
                    scale: int = 3, title: str | None = None, legend: str | None = None,
                    label_width: int = 150) -> Image.Image:
    """One picture: a row per method, a column per prompt.

    rows: (label, images (B, H, W, 3) uint8, regions (B, h, w) bool or None). The regions, the
    low-res tokens a RALU run upsampled early, are outlined in cyan over that row's images.
    title / legend: optional lines above and below the grid. A label may hold several lines.
    """
    from PIL import Image, ImageDraw

    batch, height, width, _ = rows[0][1].shape
    cell_h, cell_w, pad = height * scale, width * scale, 4
    title_h = 16 * len(title.splitlines()) + 6 if title else 0
    header_h = 56
    legend_h = 14 * len(_wrap(legend, (label_width + batch * (cell_w + pad)) // 6)) + 8 if legend else 0
    canvas = Image.new("RGB", (label_width + batch * (cell_w + pad),
                               title_h + header_h + len(rows) * (cell_h + pad) + legend_h), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.multiline_text((4, 3), title, fill="black")
    for b, caption in enumerate(captions):
        text = "\n".join(_wrap(caption, max(8, cell_w // 6)))  # PIL's default font: about 6 px a character
        draw.multiline_text((label_width + b * (cell_w + pad), title_h + 2), text, fill="black", spacing=1)
    for r, (label, images, regions) in enumerate(rows):
        top = title_h + header_h + r * (cell_h + pad)
        lines = [line for part in label.splitlines() for line in _wrap(part, label_width // 6 - 1)]
        draw.multiline_text((4, top + max(0, cell_h // 2 - 7 * len(lines))), "\n".join(lines), fill="black")
        for b in range(batch):
            left = label_width + b * (cell_w + pad)
            canvas.paste(Image.fromarray(images[b]).resize((cell_w, cell_h), Image.NEAREST), (left, top))
            if regions is not None:
                _outline(draw, regions[b], left, top, cell_h // regions.shape[1], cell_w // regions.shape[2])
    if legend:
        top = title_h + header_h + len(rows) * (cell_h + pad) + 4
        text = "\n".join(_wrap(legend, (label_width + batch * (cell_w + pad)) // 6))
        draw.multiline_text((4, top), text, fill="black")
    return canvas


def _wrap(text: str, width: int) -> list[str]:
    lines = [""]
    for word in text.split():
        if lines[-1] and len(lines[-1]) + 1 + len(word) > width:
            lines.append(word)
        else:
            lines[-1] = f"{lines[-1]} {word}".strip()
    return lines


def _outline(draw, mask: np.ndarray, left: int, top: int, cell_h: int, cell_w: int) -> None:
    """Draw the boundary of the union of the True cells of ``mask`` (h, w)."""
    h, w = mask.shape
    for i in range(h):
        for j in range(w):
            if not mask[i, j]:
                continue
            x0, y0 = left + j * cell_w, top + i * cell_h
            x1, y1 = x0 + cell_w - 1, y0 + cell_h - 1
            if i == 0 or not mask[i - 1, j]:
                draw.line([(x0, y0), (x1, y0)], fill=REGION_COLOUR)
            if i == h - 1 or not mask[i + 1, j]:
                draw.line([(x0, y1), (x1, y1)], fill=REGION_COLOUR)
            if j == 0 or not mask[i, j - 1]:
                draw.line([(x0, y0), (x0, y1)], fill=REGION_COLOUR)
            if j == w - 1 or not mask[i, j + 1]:
                draw.line([(x1, y0), (x1, y1)], fill=REGION_COLOUR)
