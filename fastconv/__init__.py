"""fastconv: fast CPU convolution and pooling on NumPy arrays (NCHW, float32/float64),
with ``torch.nn.functional`` semantics.

>>> import fastconv
>>> y = fastconv.conv2d(x, w, padding=1)            # doctest: +SKIP
"""
from ._config import (get_num_threads, get_workspace_limit, release_workspace, set_num_threads,
                      set_workspace_limit)
from ._dispatch import algorithms, get_backend, set_backend
from ._plan import Plan, autotune, plan
from ._plan import trace as trace_plans
from .functional import (adaptive_avg_pool2d, avg_pool2d, avg_pool2d_backward, channels_last,
                         conv2d, conv2d_input, conv2d_weight, conv_transpose2d,
                         inverted_residual, max_pool2d, max_pool2d_backward, prepare_weight,
                         to_channels_last)
from .kernels.weight_cache import PreparedWeight

__version__ = "0.1.0"

__all__ = [
    "conv2d", "conv2d_input", "conv2d_weight", "conv_transpose2d", "max_pool2d",
    "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward", "adaptive_avg_pool2d",
    "inverted_residual", "prepare_weight", "PreparedWeight", "channels_last",
    "to_channels_last", "algorithms", "autotune", "plan", "Plan", "trace_plans",
    "set_backend", "get_backend", "set_num_threads", "get_num_threads", "set_workspace_limit",
    "get_workspace_limit", "release_workspace",
]
