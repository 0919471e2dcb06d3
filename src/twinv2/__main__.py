"""``python -m twinv2``: the ``twinv2`` command (what ``torchrun --nproc-per-node N -m twinv2 train ...`` runs
on every rank)."""

from twinv2.cli import main

if __name__ == "__main__":
    main()
