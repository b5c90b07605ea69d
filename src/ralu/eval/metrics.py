"""Metrics for ``ralu eval score``, each an optional extra imported only when asked for.

Kinds: "image" metrics score one image (with its prompt), "paired" ones an image against the
reference method's image of the same prompt and seed, "set" ones a method's whole set against the
reference's (and, on the toy model, against the rendered ground truth). A missing package or
missing weights raise :class:`MetricUnavailable`: one line naming the extra to install and the
weights to fetch, before any image is scored.

Which extras install together (their pins conflict): ``ralu[eval]`` (CLIP score; torchmetrics:
FID/KID with Inception, LPIPS; scikit-image: PSNR/SSIM) with either ``ralu[imagereward]`` (pins timm 0.6.13) or
``ralu[iqa]`` (pyiqa: CLIP-IQA, NIQE; wants timm >= 0.8), not both: run the other in a second
environment, or install it with ``pip install --no-deps``. docs/evaluation.md has the recipes.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import stats


class MetricUnavailable(ValueError):
    """A metric's package or weights are missing; the message says what to install or fetch."""


Features = Callable[[np.ndarray], np.ndarray]  # uint8 images (B, H, W, 3) → (B, d)


@dataclass
class Metric:
    """name; kind: "image", "paired" or "set"; higher: whether higher is better; needs: (module, extra) pairs;
    weights: what must be downloaded (for the error message); build: () → the scoring function."""

    name: str
    kind: str
    higher: bool
    needs: tuple[tuple[str, str], ...] = ()
    weights: str = ""
    build: Callable[[], Callable] | None = None
    _fn: Callable | None = field(default=None, repr=False)

    def check(self) -> None:
        for module, extra in self.needs:
            if importlib.util.find_spec(module) is None:
                raise MetricUnavailable(f"metric {self.name}: needs the package {module!r}: pip install 'ralu[{extra}]'"
                                        + (f", and the weights {self.weights}" if self.weights else ""))

    def fn(self) -> Callable:
        if self._fn is None:
            self.check()
            try:
                self._fn = self.build()
            except (OSError, EnvironmentError) as error:  # weights not in the local cache and no network
                raise MetricUnavailable(f"metric {self.name}: could not load its weights ({self.weights or 'see docs'}): "
                                        f"download them on a connected machine first ({type(error).__name__})") from None
        return self._fn


def _torch_images(images: Sequence[np.ndarray]):
    import torch

    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def _offline_kwargs() -> dict:
    return {"local_files_only": True} if os.environ.get("HF_HUB_OFFLINE") else {}


# --- per-image metrics --------------------------------------------------------------------------------

def clip_score(model: str | Callable = "openai/clip-vit-large-patch14") -> Callable:
    """CLIP score, ``100 · max(cos(image, text), 0)`` (Hessel et al. 2021, as torchmetrics computes it).

    model: a hub id of a CLIP checkpoint, or a callable returning (CLIPModel, CLIPProcessor), as
    torchmetrics' ``CLIPScore(model_name_or_path=...)`` accepts. Computed here rather than through
    torchmetrics 1.9, whose CLIPScore breaks with transformers 5 (``get_image_features`` returns an
    output object there, not a tensor).
    """
    import torch

    if callable(model):
        clip, processor = model()
    else:
        from transformers import CLIPModel, CLIPProcessor

        clip = CLIPModel.from_pretrained(model, **_offline_kwargs()).eval()
        processor = CLIPProcessor.from_pretrained(model, **_offline_kwargs())

    def embedding(output):
        return getattr(output, "pooler_output", output)

    @torch.no_grad()
    def score(images, prompts):
        pixels = [torch.from_numpy(np.ascontiguousarray(i)).permute(2, 0, 1) for i in images]
        inputs = processor(text=list(prompts), images=pixels, return_tensors="pt", padding=True, truncation=True)
        image = embedding(clip.get_image_features(pixel_values=inputs["pixel_values"]))
        text = embedding(clip.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]))
        cosine = torch.nn.functional.cosine_similarity(image, text)
        return (100 * cosine).clamp(min=0).tolist()

    return score


def image_reward() -> Callable:
    import ImageReward as RM  # noqa: N814
    from PIL import Image

    model = RM.load("ImageReward-v1.0")

    def score(images, prompts):
        return [float(model.score(p, [Image.fromarray(i)])) for i, p in zip(images, prompts)]

    return score


def pyiqa_metric(name: str) -> Callable:
    import pyiqa

    metric = pyiqa.create_metric(name)

    def score(images, prompts):
        return [float(v) for v in metric(_torch_images(images)).flatten()]

    return score


# --- paired metrics (against the reference method's image of the same prompt and seed) --------------------

def psnr() -> Callable:
    from skimage.metrics import peak_signal_noise_ratio

    def score(images, references):
        return [float("inf") if np.array_equal(i, r) else float(peak_signal_noise_ratio(r, i, data_range=255))
                for i, r in zip(images, references)]

    return score


def ssim() -> Callable:
    from skimage.metrics import structural_similarity

    def score(images, references):
        return [float(structural_similarity(r, i, channel_axis=-1, data_range=255)) for i, r in zip(images, references)]

    return score


def lpips() -> Callable:
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)

    def score(images, references):
        out = []
        for i, r in zip(images, references):
            out.append(float(metric(_torch_images([i]), _torch_images([r]))))
        return out

    return score


# --- set metrics --------------------------------------------------------------------------------------

def inception_features() -> Features:
    """torchmetrics' FID Inception-v3 (pool3, 2048-d), on images resized to 299 px by the network."""
    import torch
    from torchmetrics.image.fid import NoTrainInceptionV3

    net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"]).eval()

    def features(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).double().numpy()

    return features


def set_metrics(features: Features) -> Callable:
    """FID ± bootstrap SE, KID ± jackknife SE, precision and recall of a set against a reference set, in
    ``features``' space."""

    def score(images: np.ndarray, references: np.ndarray) -> dict:
        a, b = features(images), features(references)
        fid, fid_se = stats.fid(a, b)
        kid, kid_se = stats.kid_jackknife(a, b)
        precision, recall = stats.precision_recall(b, a)
        return dict(fid=fid, fid_se=fid_se, kid=kid, kid_se=kid_se, precision=precision, recall=recall)

    score.features = features  # for paired comparisons (ralu.eval.score)
    return score


# --- the toy model's own metrics (ralu.demo) ------------------------------------------------------------

def toy_readback() -> Callable:
    """The shapes generator reads the picture back against the caption: all, colour, shape, relation."""
    from ..demo.shapes import check_prompt, parse_caption

    def score(images, prompts):
        return [check_prompt(i.astype(np.float32) / 255.0, parse_caption(p)) for i, p in zip(images, prompts)]

    return score


def toy_edges() -> Callable:
    """Blockiness at the 4 px and 8 px token grids (full and half resolution) and fringe, per image."""
    from ..demo.judge import blockiness, fringe

    def score(images, prompts):
        return [dict(block4=blockiness(i, 4), block8=blockiness(i, 8), fringe=fringe(i)) for i in images]

    return score


def toy_features() -> Features:
    from ..demo.judge import load_judge, standardised

    return standardised(load_judge())


REGISTRY: dict[str, Callable[[], Metric]] = {
    "clip": lambda: Metric("clip", "image", True, (("transformers", "eval"),), "openai/clip-vit-large-patch14",
                           clip_score),
    "imagereward": lambda: Metric("imagereward", "image", True, (("ImageReward", "imagereward"),),
                                  "THUDM/ImageReward (ImageReward-v1.0, BLIP, bert-base-uncased)", image_reward),
    "clipiqa": lambda: Metric("clipiqa", "image", True, (("pyiqa", "iqa"),), "pyiqa's CLIP-IQA (CLIP RN50)",
                              lambda: pyiqa_metric("clipiqa")),
    "niqe": lambda: Metric("niqe", "image", False, (("pyiqa", "iqa"),), "pyiqa's NIQE parameters",
                           lambda: pyiqa_metric("niqe")),
    "psnr": lambda: Metric("psnr", "paired", True, (("skimage", "bench"),), "", psnr),
    "ssim": lambda: Metric("ssim", "paired", True, (("skimage", "bench"),), "", ssim),
    "lpips": lambda: Metric("lpips", "paired", False, (("torchmetrics", "eval"), ("torchvision", "eval")),
                            "torchmetrics' LPIPS AlexNet weights", lpips),
    "fid": lambda: Metric("fid", "set", False, (("torchmetrics", "eval"), ("torch_fidelity", "eval")),
                          "the FID Inception-v3 weights (pt_inception-2015-12-05)",
                          lambda: set_metrics(inception_features())),
    "toy_readback": lambda: Metric("toy_readback", "image", True, (), "", toy_readback),
    "toy_edges": lambda: Metric("toy_edges", "image", False, (), "", toy_edges),
    "toy_fid": lambda: Metric("toy_fid", "set", False, (), "ralu/data/toy_judge", lambda: set_metrics(toy_features())),
}


def resolve(names: Sequence[str]) -> list[Metric]:
    """The metrics by name, each checked for its package before any scoring."""
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(f"metrics must be among {sorted(REGISTRY)}, got {unknown}")
    metrics = [REGISTRY[n]() for n in names]
    for m in metrics:
        m.check()
    return metrics
