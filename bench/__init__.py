"""Benchmarks and GPU-session tools, run as modules from the repository root (`python -m bench.run`,
`make bench`); docs/benchmarks.md holds their figures. `run` (the end-to-end benchmark) with `run_config`,
`measure`, `report` and `random_engine`; `profile_decode`, `tune_kernels` (on `tune_cases` and `kernel_inputs`), `compile_kernels`,
`decode_launches`, `host_step`, `convert_memory`; `http_overhead` (HTTP and Triton overhead, with
`uvicorn_thread`, which the end-to-end tests also use, and `sse_load`); `engine_loop` (the engine loop on a
thread against one in a worker process, no HTTP); `stream_path` (the server's event-loop cost per streamed
token with the model taken out, beside a bare ASGI app); `gpu_session.sh` chains them on a lent GPU."""
