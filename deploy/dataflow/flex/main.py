"""Flex Template entry point: plan, prepare and submit tamis's scoring pass, then exit.

A Flex launcher captures the one job its program submits and must not be kept waiting, so
the selection pass runs afterwards: rerun `tamis select` with the same pool, targets and
--out (see deploy/dataflow/README.md).
"""
from tamis.pipeline.launch import flex_main

if __name__ == "__main__":
    flex_main()
