"""Distribution distances and paired statistics with standard errors. numpy and scipy only.

- :func:`fid`: Fréchet distance between Gaussian fits of two feature sets (Heusel et al. 2017), with a
  bootstrap standard error (both sets resampled);
- :func:`kid`: the unbiased squared MMD with the cubic polynomial kernel (Bińkowski et al. 2018),
  averaged over random subsets, with the standard error over the subsets;
- :func:`precision_recall`: improved precision and recall (Kynkäänniemi et al. 2019), k-NN manifolds;
- :func:`mean_se`, :func:`paired_difference`: means with 2-SE intervals, paired differences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _frechet(mu1, cov1, mu2, cov2) -> float:
    from scipy import linalg

    diff = mu1 - mu2
    covmean = linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():  # singular product: regularise as the reference implementation does
        offset = np.eye(cov1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean))


def _stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(axis=0), np.cov(x, rowvar=False)


def fid(a: np.ndarray, b: np.ndarray, bootstrap: int = 50, seed: int = 0) -> tuple[float, float]:
    """(FID, bootstrap SE) between feature sets a (n, d) and b (m, d), in squared feature units."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (n, d) arrays of the same width, got {a.shape} and {b.shape}")
    if min(len(a), len(b)) < 2:
        raise ValueError("FID needs at least 2 images in each set")
    value = _frechet(*_stats(a), *_stats(b))
    rng = np.random.default_rng(seed)
    draws = [_frechet(*_stats(a[rng.integers(0, len(a), len(a))]), *_stats(b[rng.integers(0, len(b), len(b))]))
             for _ in range(bootstrap)]
    return value, float(np.std(draws, ddof=1)) if bootstrap > 1 else math.nan


def _mmd2(x: np.ndarray, y: np.ndarray) -> float:
    kxx, kyy, kxy = _kernel(x, x), _kernel(y, y), _kernel(x, y)
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def kid(a: np.ndarray, b: np.ndarray, subsets: int = 50, subset_size: int | None = None,
        seed: int = 0) -> tuple[float, float]:
    """(KID, SE over subsets): mean unbiased MMD² over random subsets of both sets."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    size = subset_size or min(len(a), len(b), 1000)
    if size < 2:
        raise ValueError("KID needs at least 2 images in each set")
    rng = np.random.default_rng(seed)
    values = [_mmd2(a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)])
              for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values, ddof=1) / math.sqrt(subsets))


def _kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return ((x @ y.T) / x.shape[1] + 1) ** 3


def kid_jackknife(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(KID, SE): the unbiased MMD² of the full sets, and its delete-one jackknife SE over the items of both
    sets (deleting each image of ``a``, then each of ``b``). The SD of KID over random subsets (:func:`kid`)
    measures how much subsets of one sample differ, not how much another sample would: it understated
    the difference between two methods several times on the toy (docs/solvers.md)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n, m = len(a), len(b)
    if min(n, m) < 3:
        raise ValueError(f"KID with a jackknife SE needs at least 3 images in each set, got {n} and {m}")
    kaa, kbb, kab = _kernel(a, a), _kernel(b, b), _kernel(a, b)
    row_a, row_b = kaa.sum(1) - np.diag(kaa), kbb.sum(1) - np.diag(kbb)
    within_a, within_b, cross = row_a.sum(), row_b.sum(), kab.sum()
    full = within_a / (n * (n - 1)) + within_b / (m * (m - 1)) - 2 * cross / (n * m)
    without_a = ((within_a - 2 * row_a) / ((n - 1) * (n - 2)) + within_b / (m * (m - 1))
                 - 2 * (cross - kab.sum(1)) / ((n - 1) * m))
    without_b = (within_a / (n * (n - 1)) + (within_b - 2 * row_b) / ((m - 1) * (m - 2))
                 - 2 * (cross - kab.sum(0)) / (n * (m - 1)))
    variance = ((n - 1) / n * ((without_a - without_a.mean()) ** 2).sum()
                + (m - 1) / m * ((without_b - without_b.mean()) ** 2).sum())
    return float(full), float(math.sqrt(variance))


def kid_difference(a: np.ndarray, b: np.ndarray, truth: np.ndarray) -> dict:
    """KID(a, truth) − KID(b, truth) over all items, with a delete-one jackknife SE.

    Row i of ``a``, ``b`` and ``truth`` belong together (one caption and seed: the two methods' images and
    its rendered truth), so deleting item i from all three keeps the comparison paired; the shared noise of
    the truth set and of the captions cancels in the difference. Returns dict(mean, se, n) like
    :func:`paired_difference`.
    """
    a, b, truth = (np.asarray(x, np.float64) for x in (a, b, truth))
    n = len(a)
    if n < 3 or len(b) != n or len(truth) != n:
        raise ValueError(f"kid_difference needs three matched sets of at least 3 items, got {len(a)}, {len(b)}, "
                         f"{len(truth)}")
    ktt = _kernel(truth, truth)
    row_tt = ktt.sum(1) - np.diag(ktt)
    within_t = row_tt.sum()

    def leave_one_out(x: np.ndarray) -> tuple[float, np.ndarray]:
        kxx, kxt = _kernel(x, x), _kernel(x, truth)
        row_xx = kxx.sum(1) - np.diag(kxx)
        within_x, cross = row_xx.sum(), kxt.sum()
        full = within_x / (n * (n - 1)) + within_t / (n * (n - 1)) - 2 * cross / n**2
        m = n - 1
        deleted = ((within_x - 2 * row_xx) / (m * (m - 1)) + (within_t - 2 * row_tt) / (m * (m - 1))
                   - 2 * (cross - kxt.sum(1) - kxt.sum(0) + np.diag(kxt)) / m**2)
        return full, deleted

    full_a, deleted_a = leave_one_out(a)
    full_b, deleted_b = leave_one_out(b)
    theta = deleted_a - deleted_b
    se = math.sqrt((n - 1) / n * ((theta - theta.mean()) ** 2).sum())
    return dict(mean=float(full_a - full_b), se=float(se), n=int(n))


def _radii(x: np.ndarray, k: int) -> np.ndarray:
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    return np.sort(d, axis=1)[:, k]  # column 0 is the point itself


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision (share of ``fake`` inside the k-NN manifold of ``real``) and recall (the reverse)."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} images in each set")

    def coverage(ref: np.ndarray, query: np.ndarray) -> float:
        radii = _radii(ref, k)
        d = np.sqrt(((query[:, None, :] - ref[None, :, :]) ** 2).sum(-1))
        return float((d <= radii[None, :]).any(axis=1).mean())

    return coverage(real, fake), coverage(fake, real)


def mean_se(values: Sequence[float | None]) -> dict:
    """Mean, standard error and count of the defined (not None/NaN) values."""
    x = np.array([v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))], np.float64)
    if len(x) == 0:
        return dict(mean=math.nan, se=math.nan, n=0)
    se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan
    return dict(mean=float(x.mean()), se=se, n=int(len(x)))


def paired_difference(first: Sequence[float | None], second: Sequence[float | None]) -> dict:
    """Mean and SE of first − second over the pairs where both are defined (and finite)."""
    pairs = [(a, b) for a, b in zip(first, second) if a is not None and b is not None
             and math.isfinite(a) and math.isfinite(b)]
    return mean_se([a - b for a, b in pairs])
