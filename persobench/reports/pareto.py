"""Pareto fronts of (text fidelity, subject fidelity) operating points: both higher is better."""

from __future__ import annotations

import numpy as np


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points, sorted by x. A point is dominated when another is >= on
    both axes and > on one."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = []
    for i in range(len(x)):
        dominated = np.any((x >= x[i]) & (y >= y[i]) & ((x > x[i]) | (y > y[i])))
        if not dominated and np.isfinite(x[i]) and np.isfinite(y[i]):
            keep.append(i)
    return np.array(sorted(keep, key=lambda i: x[i]), dtype=int)
