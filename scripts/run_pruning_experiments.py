"""The seed's command: `python scripts/run_pruning_experiments.py --experiment basic [--seeds 1 2 3] [--jobs N]`.

The same as `hotprune experiments ...` (service/experiments.py): runs land in logs/pruning_<experiment>/.
"""

import sys

from hotprune.cli import main

if __name__ == "__main__":
    sys.exit(main(["experiments", *sys.argv[1:]]))
