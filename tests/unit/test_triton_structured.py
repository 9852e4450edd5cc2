"""The structured-output and logit-bias tensors of the Triton model survive the round trip both ways,
and malformed ones are refused with a message (the Triton path then answers 400)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gemma_runtime.api import GenerateRequest, SamplingParams
from gemma_runtime.grammar.spec import StructuredOutput
from triton_bridge import protocol


def test_round_trip():
    structured = StructuredOutput(
        "json_schema", json.dumps({"type": "object", "properties": {"a": {"enum": ["x"]}}}), "optional"
    )
    request = GenerateRequest(
        "r", "prompt", SamplingParams(max_tokens=5, structured=structured, logit_bias=((3, -100.0), (7, 0.3)))
    )
    tensors = protocol.encode_request(request)
    assert tensors["logit_bias_ids"].tolist() == [3, 7] and tensors["structured_output"].shape == (1,)
    assert protocol.decode_request("r", tensors.get) == request
    plain = GenerateRequest("p", "prompt", SamplingParams(max_tokens=5))
    assert not {"structured_output", "logit_bias_ids"} & set(protocol.encode_request(plain))


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"structured_output": np.array([b"not json"], dtype=object)}, "structured_output"),
        ({"structured_output": np.array([b'{"kind": "json_schema", "thought": "maybe"}'], dtype=object)}, "thought"),
        ({"logit_bias_ids": np.array([1, 2], dtype=np.int32)}, "go together"),
        (
            {
                "logit_bias_ids": np.array([1, 2], dtype=np.int32),
                "logit_bias_values": np.array([1.0], dtype=np.float32),
            },
            "entries",
        ),
        (
            {"logit_bias_ids": np.array([1], dtype=np.int32), "logit_bias_values": np.array([101.0], dtype=np.float32)},
            "between -100 and 100",
        ),
    ],
)
def test_malformed_inputs_are_refused(extra, message):
    tensors = {"text_input": np.array([b"x"], dtype=object), **extra}
    with pytest.raises(ValueError, match=message):
        protocol.decode_request("r", tensors.get)


def test_config_pbtxt_declares_the_new_inputs():
    text = str(Path(protocol.__file__).resolve().parent.parent / "triton_model_repo" / "gemma4" / "config.pbtxt")
    config = open(text).read()
    for spec in protocol.STRUCTURED_INPUTS:
        assert f'name: "{spec.name}"' in config
