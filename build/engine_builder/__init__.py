"""Gemma 4 engine builder: `python -m engine_builder --model tiny|26b|31b|<folder>|<hub id>`.

The converter: `convert` (build_engine, convert_folder) over `sources`, `checkpoint` (reading),
`spec`, `weights` (names, fusing, FP8), `engine_files` (tokenizer, template, generation config) and
`writer` (streamed shards); the engine format itself is gemma_runtime.engine_format. Apart from it:
`tiny/` (the demo and test models) and `tools/` (the memory check).

Public entry points (imported from their modules so `import engine_builder` stays light):
`engine_builder.convert.build_engine` and `engine_builder.tiny.random_checkpoint.make_tiny_checkpoint`.
"""
