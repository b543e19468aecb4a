"""Temporal smoothing of landmarks: frame-to-frame jitter is the most reported complaint about face
swappers. The One-Euro filter (Casiez et al., CHI 2012) smooths hard when the face is still and follows
fast motion with little lag, with two intuitive knobs."""
from __future__ import annotations

import math

import numpy as np


class OneEuroFilter:
    """Smooths an array signal sampled at `rate` Hz (landmarks [5,2] per frame)."""

    def __init__(self, rate: float, min_cutoff: float = 1.0, beta: float = 0.05, d_cutoff: float = 1.0):
        self.rate = rate
        self.min_cutoff = min_cutoff
        self.beta = beta
        self.d_cutoff = d_cutoff
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None

    def _alpha(self, cutoff: np.ndarray | float) -> np.ndarray | float:
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau * self.rate)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self._x is None or self._x.shape != x.shape:
            self._x, self._dx = x, np.zeros_like(x)
            return x.copy()
        dx = (x - self._x) * self.rate
        a_d = self._alpha(self.d_cutoff)
        self._dx = a_d * dx + (1 - a_d) * self._dx
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx)
        a = self._alpha(cutoff)
        self._x = a * x + (1 - a) * self._x
        return self._x.copy()

    def reset(self) -> None:
        self._x = self._dx = None
