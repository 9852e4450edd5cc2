"""Triton kernels for the CUDA path (paged attention, fused MoE) and their Python wrappers.

Importing this package imports triton; the model imports it only through model/cuda_backends.py, which
gemma4.py loads only when CUDA is available. Tests run the same kernels on CPU under TRITON_INTERPRET=1.
"""
