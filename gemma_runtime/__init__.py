"""The Gemma 4 runtime, in floors; each floor imports only the floors below it.

- `api.py` (request contracts) and `config.py` (RuntimeConfig): what callers hand the runtime; every floor reads them.
- `engine/`: LLMEngine (the step loop) and AsyncEngine (asyncio front, engine-loop thread, or a worker process).
- `parallel/`: tensor and expert parallelism: ranks 1..N-1, the sharding plan, the step broadcast.
- `scheduling/`: host-side state: sequences, the scheduler, the KV page allocator.
- `executor/`: device execution: the model runner, decode graphs, device block tables and copies, the sampler.
- `inputs/`: tokenizing and image preprocessing on the way in, detokenizing on the way out.
- `model/`: the Gemma 4 decoder, the vision tower and their backends (chosen by device through a registry).
- `kernels/`: Triton kernels (imported only where CUDA runs, or under Triton's CPU interpreter in tests).
- `engine_format/`: the engine directory's format (engine.json, weight files), shared with the builder.

Package `__init__` files import nothing, so importing a contract never pulls in torch or a GPU stack.
"""
