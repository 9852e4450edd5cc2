"""The parallel floor: one engine across several devices with torch.distributed (NCCL on GPUs, gloo on
CPU), between engine/ (which starts it) and executor/ (whose ModelRunner every rank reuses).

- `plan.py`: the sharding plan (which rows and columns of each weight a rank holds, its local heads).
- `loading.py`: a rank's shard read straight from the engine's safetensors with `get_slice`.
- `group.py`: the process group (rendezvous on loopback, a timeout on every collective).
- `sharded_layers.py`: the all-reducing linear and the expert-parallel / tensor-parallel MoE wrappers.
- `step_channel.py`: a step's ForwardBatch broadcast from rank 0 as tensors.
- `worker.py`: ranks 1..N-1 (torch.multiprocessing spawn): load a shard, run every step rank 0 sends.
- `launcher.py`: rank 0's side: spawn the workers, watch them, stop them.
"""
