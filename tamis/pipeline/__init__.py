"""The Beam pipeline: read and validate the pool, score with selectors, select, write."""
