"""The models: `gemma4` (the decoder) and `vision_encoder` (the vision tower), the batch they read
(`forward_batch`), and their backends: reference `attention`, `moe`, `layers` (norms, GEGLU) for any
device, `cuda_backends` (Triton kernels), chosen by device through `registry`; `linear` (plain or FP8)."""
