"""``spark-submit`` entry point of the compression job: ``twinv2 compress run --backend spark`` with the
options given on the command line.

It lives at the top of the package, beside the CLI it calls, so that :mod:`twinv2.compress.spark` (the
backend) never imports the CLI: the package reads in one direction, data -> compress -> models -> train
-> cli, and nothing imports this module.

Example (options as ``twinv2 compress``, ``--split-by NAME`` included: the Spark backend writes the same
bytes as the local one)::

    spark-submit --master yarn --deploy-mode client \\
      --conf spark.executorEnv.NUMBA_NUM_THREADS=1 --conf spark.executorEnv.OMP_NUM_THREADS=1 \\
      "$(python -c 'import twinv2.spark_submit as m; print(m.__file__)')" \\
      --dataset /shared/data/synth --out /shared/compressed/synth --snapshot-ts 1700000000
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """Run ``twinv2 compress run --backend spark ARGV`` (default: this process's arguments)."""
    from twinv2.cli import app

    app(["compress", "run", "--backend", "spark", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
