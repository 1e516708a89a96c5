"""``python -m ups`` (what ``torchrun --nproc-per-node N -m ups train CONFIG`` runs on every rank)."""

import sys

from ups.cli import main

if __name__ == "__main__":
    sys.exit(main())
