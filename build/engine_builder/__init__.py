"""Gemma 4 engine builder: `python -m engine_builder --model tiny|26b|31b|<folder>|<hub id>`.

Public entry points (imported from their modules so `import engine_builder` stays light):
`engine_builder.convert.build_engine` and `engine_builder.tiny_checkpoint.make_tiny_checkpoint`.
"""
