"""Token-budget batching fixed by content, so the same rows always form the same batches.

Rows are sorted by length (ties by position) and packed greedily while
``longest_in_batch * rows <= batch_tokens``. Sorting cuts padding; the fixed order makes
results bit-for-bit repeatable whatever the runner's bundle sizes are.
"""
from __future__ import annotations

from collections.abc import Sequence


def token_batches(lengths: Sequence[int], batch_tokens: int, max_rows: int = 1024) -> list[list[int]]:
    """Indices of ``lengths`` grouped into batches under the padded-token budget."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        n = max(1, lengths[i])
        if current and (max(longest, n) * (len(current) + 1) > batch_tokens or len(current) >= max_rows):
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, n)
    if current:
        batches.append(current)
    return batches
