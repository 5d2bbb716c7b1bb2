"""Jitted building blocks below the cells: BLAS GEMM (blas), the register-tiled
GEMM (mm), activations (activations) and the threads' spin barrier (sync).
The subset custom cells need is public as :mod:`memopt_bptt.kernels`."""
