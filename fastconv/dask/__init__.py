"""fastconv on Dask: convolution and pooling over chunked arrays, prediction over data
larger than memory, and data-parallel training on a ``dask.distributed`` cluster.

Install with ``pip install "fastconv[dask]"``. Every block runs a fastconv kernel on
NumPy arrays; Dask only moves data.

- :func:`conv2d`, :func:`max_pool2d`, :func:`avg_pool2d`, :func:`adaptive_avg_pool2d`:
  a ``dask.array`` in, a lazy chunked ``dask.array`` out, equal to the in-memory
  result bit for bit for any chunking along N, C, H and W (a convolution: the result of
  the in-memory call by the algorithm of :func:`plan`, the plan every block follows;
  see ``docs/dask.md`` for how the halo, the stride alignment and the plan work, and
  for what is only within tolerance).
- :func:`predict`: a ``fastconv.nn`` model over a Dask array, block by block of the
  batch (a ``.npy`` memmap or a Zarr store read lazily).
- :func:`fit`: ``fastconv.nn.fit`` with each global batch split over the workers of a
  ``dask.distributed.Client``; the same result as single-process training.

>>> import dask.array as da, numpy as np, fastconv.dask as fd
>>> x = da.ones((64, 3, 32, 32), chunks=(16, 3, 16, 16), dtype=np.float32)
>>> y = fd.conv2d(x, np.ones((8, 3, 3, 3), np.float32), padding=1)     # lazy
>>> y.chunks
((16, 16, 16, 16), (8,), (16, 16), (16, 16))
>>> y.compute().shape
(64, 8, 32, 32)
"""
try:
    import dask.array  # noqa: F401
except ImportError as e:                                   # pragma: no cover
    raise ImportError(
        f"fastconv.dask needs Dask ({e}); install it with: pip install \"fastconv[dask]\" "
        f"(or pip install \"dask[array,distributed]\")") from e

from ._array import adaptive_avg_pool2d, avg_pool2d, conv2d, max_pool2d, plan
from ._train import fit, predict

__all__ = ["conv2d", "plan", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "predict", "fit"]
