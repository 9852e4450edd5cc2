"""Device execution of one step: `model_runner` (launch/resolve a scheduled batch), `decode_graphs`
and `verify_graphs` (padded static buffers of decode and speculative verify steps, CUDA graphs), `device_block_tables` (the block tables' device mirror),
`device_io` (host-to-device copies without host waits) and `sampler` (tokens and logprobs on the device)."""
