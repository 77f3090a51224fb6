"""vlkit's tie rule for the cache searches, written plainly for the brute-force reference tests."""
from __future__ import annotations


def nearest_centre(scored: list[tuple[int, tuple[int, ...]]], sizes: tuple[int, ...]) -> tuple[int, ...]:
    """Grid indices of the choice among ``scored`` = [(correct count, grid indices), ...] in loop order.

    Of the points at the best count, the one nearest the grid's centre, in grid steps with each
    axis (of ``sizes`` values) scaled to [-1/2, 1/2]; equally near points: the first in loop order.
    """
    best = max(count for count, _ in scored)
    ranked = []
    for order, (count, index) in enumerate(scored):
        if count == best:
            distance = sum(((i - (n - 1) / 2) / max(n - 1, 1)) ** 2 for i, n in zip(index, sizes))
            ranked.append((distance, order, index))
    return min(ranked)[2]
