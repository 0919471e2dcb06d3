"""twinv2: life-cycle user behavior modeling for CTR prediction (TWIN-V2, Si et al., CIKM 2024).

Data flows one way through files a user can inspect::

    raw logs -> dataset (parquet + manifest) -> item embeddings -> compressed life cycles
             -> training samples -> checkpoint -> evaluation report / serving

Subpackages: :mod:`twinv2.data`, :mod:`twinv2.compress`, :mod:`twinv2.models`, :mod:`twinv2.train`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("twinv2")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
