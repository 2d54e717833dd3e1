"""K folds of a training split for cross-validation (`train --folds K`).

Seeded and balanced: every fold holds floor(n/K) or ceil(n/K) images, and the images that contain a class are
spread over the folds as evenly as the sizes allow, the rarest classes placed first (the greedy core of iterative
stratification, Sechidis et al. 2011), so that each fold's model is validated on every class a fold can hold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segdata.check import class_presence
from segdata.folder import Sample
from segdata.meta import DataError, DatasetMeta


def assign_folds(presence: np.ndarray, k: int, seed: int) -> list[int]:
    """The fold of each image. Classes in order of rarity (fewest images first); the unplaced images of each, in
    a seeded order, go to the fold with the fewest images of that class among those not yet full, ties to the
    fold holding the least of the image's other classes, then the fewest images, then the lowest index. Images
    without any class go last, to the smallest folds."""
    n = len(presence)
    if not 2 <= k <= n:
        raise DataError(f"{k} folds of {n} training images: use 2 to {n} folds")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    capacity = [n // k + (1 if f < n % k else 0) for f in range(k)]
    fold = [-1] * n
    sizes = [0] * k
    per_class = np.zeros((k, presence.shape[1]), np.int64)
    totals = np.maximum(presence.sum(axis=0), 1)
    rarity = sorted(range(presence.shape[1]), key=lambda c: (int(presence[:, c].sum()), c))
    for c in [*rarity, None]:
        for i in order:
            if fold[i] >= 0 or (c is not None and not presence[i, c]):
                continue
            open_folds = [f for f in range(k) if sizes[f] < capacity[f]]
            load = per_class[:, presence[i]] / totals[presence[i]]  # the folds' shares of this image's classes
            target = min(open_folds, key=lambda f: (per_class[f, c] if c is not None else 0, load[f].sum(),
                                                    sizes[f], f))
            fold[i] = target
            sizes[target] += 1
            per_class[target] += presence[i]
    return fold


def make_folds(samples: Sequence[Sample], meta: DatasetMeta, k: int, seed: int) -> list[list[str]]:
    """The names of each fold's held-out images (each fold's model trains on the others), in the split's order."""
    fold = assign_folds(class_presence(samples, meta), k, seed)
    return [[s.name for s, f in zip(samples, fold, strict=True) if f == target] for target in range(k)]
