"""Host-side state of the running requests: `sequence` (one request's tokens, pages and status),
`scheduler` (who runs this step within the token budget; preemption) and `block_manager` (the KV pages of
the full and the sliding layers)."""
