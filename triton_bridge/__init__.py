"""The Triton side, shared by the OpenAI server and the model repository: `protocol` (the tensors and
names both sides of the wire share; imported by triton_model_repo/gemma4/1/model.py), `client` (the
server's `triton://` backend over gRPC streaming) and `launcher` (`python -m triton_bridge.launcher`:
starts tritonserver on triton_model_repo/ with an engine)."""
