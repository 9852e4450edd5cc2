"""The engine directory's format (engines/README.md), read by the runtime and written by the builder:
`files` (the file names), `spec` (engine.json as frozen dataclasses), `dtypes` (an engine dtype parsed
once into a small value), `fp8` (the FP8 weight convention: e4m3 rows with float32 row scales) and
`weights` (loading the safetensors files). It imports nothing else of the runtime."""
