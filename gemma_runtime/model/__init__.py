"""The models: `gemma4` (the decoder) and `vision_encoder` (the vision tower), the batch they read
(`forward_batch`), and their backends, chosen by device through `registry`: reference `attention`, `moe`,
`layers` (norms, GEGLU), `kv_write` (the q/k/v step that writes the KV cache) and `linear` (plain or FP8)
for any device; `cuda_backends` (the Triton kernels) for CUDA."""
