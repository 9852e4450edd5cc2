"""The engine floor: `llm_engine.LLMEngine` (one step: schedule, launch, resolve, detokenize, stop checks;
overlap on CUDA) and `async_engine.AsyncEngine` (the asyncio front the server and the Triton backend call,
with the engine loop on its own thread), and `engine_process.ProcessAsyncEngine` (the same front over an
engine loop in a worker process, `engine_worker.py`: `--engine-process`)."""
