"""Runs the jgrad benchmark suite: ``python experiments/bench/run.py --quick`` (see ``--help``)."""

import sys

from jgrad.bench import main

if __name__ == "__main__":
    sys.exit(main())
