"""Device execution of one step: `model_runner` (launch/resolve a scheduled batch), `decode_graphs`
(padded static decode buffers, CUDA graphs), `device_block_tables` (the block tables' device mirror),
`device_io` (host-to-device copies without host waits) and `sampler` (tokens and logprobs on the device)."""
