"""``python -m tamis``: the same command line as ``tamis``."""
from .cli import main

main()
