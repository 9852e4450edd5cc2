"""Device execution of one step: `model_runner` (launch/resolve a scheduled batch), `step_graphs`
with `decode_graphs` and `row_padded_graphs` (padded static buffers of decode, speculative verify and
short prompt steps, replayed as CUDA graphs), `device_block_tables` (the block tables' device mirror),
`device_io` (host-to-device copies without host waits) and `sampler` (tokens and logprobs on the device)."""
