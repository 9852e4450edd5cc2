"""The engine directory's format, read by the runtime and written by the builder: `spec` (engine.json as
frozen dataclasses) and `weights` (loading the safetensors shards)."""
