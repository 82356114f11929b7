"""Which test images an analysis looks at: seeded, with both classes where possible."""

from __future__ import annotations

import numpy as np


def pick_mixed_indices(labels, n: int, seed: int) -> np.ndarray:
    """``n`` dataset indices (fewer if the set is smaller), half real and half fake where possible,
    drawn with ``seed``; sorted, so reals come first. The same seed gives the same images."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    real, fake = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    n = min(n, len(labels))
    n_fake = min(len(fake), max(n // 2, n - len(real)))
    n_real = n - n_fake
    chosen = np.concatenate(
        [rng.choice(real, n_real, replace=False), rng.choice(fake, n_fake, replace=False)]
    )
    return np.sort(chosen).astype(np.int64)


def subset_indices(labels, max_images: int, seed: int) -> np.ndarray | None:
    """``pick_mixed_indices`` of ``max_images`` images, or ``None`` (every image) when
    ``max_images`` is 0 or covers the whole set (a ``--max_images`` flag)."""
    if max_images == 0 or max_images >= len(labels):
        return None
    return pick_mixed_indices(labels, max_images, seed)


def pick_one_per_class(labels, seed: int) -> dict[int, int | None]:
    """One dataset index per label (0 real, 1 fake) drawn with ``seed``; ``None`` if a class is absent."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out: dict[int, int | None] = {}
    for label in (0, 1):
        members = np.flatnonzero(labels == label)
        out[label] = int(rng.choice(members)) if len(members) else None
    return out
