"""Numba (JIT) kernels: one module per algorithm."""
