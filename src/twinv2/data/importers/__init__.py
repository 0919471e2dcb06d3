"""Real-data importers: MovieLens, Taobao UserBehavior, KuaiRand and any CSV/Parquet with a column mapping.

Each importer reads the raw files, checks every value at the boundary (errors name the file, the column,
the expectation and the first bad value with its line), maps ids densely (sorted raw ids; users ``0..U-1``,
items ``1..I``), sorts events stably by ``(user_id, ts)`` and writes a dataset folder atomically with
:class:`twinv2.data.store.DatasetWriter`. The rules of each format are in ``docs/importers.md``.

Example:
    >>> from twinv2.data.importers import import_movielens
    >>> report = import_movielens("../shared/data/ml-latest-small", "data/ml")  # doctest: +SKIP
    >>> report.num_events, report.num_users  # doctest: +SKIP
    (100836, 610)
"""

from twinv2.data.importers._assemble import ImportReport
from twinv2.data.importers._raw import BadRows
from twinv2.data.importers.generic import TS_UNITS, ColumnMapping, import_csv, load_mapping, make_mapping
from twinv2.data.importers.kuairand import find_kuairand_files, import_kuairand
from twinv2.data.importers.movielens import detect_movielens_layout, import_movielens
from twinv2.data.importers.taobao import import_taobao

__all__ = [
    "TS_UNITS",
    "BadRows",
    "ColumnMapping",
    "ImportReport",
    "detect_movielens_layout",
    "find_kuairand_files",
    "import_csv",
    "import_kuairand",
    "import_movielens",
    "import_taobao",
    "load_mapping",
    "make_mapping",
]
