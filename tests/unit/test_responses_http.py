"""/v1/responses over a scripted backend, driven by the real `openai` SDK: the typed event stream
(order, sequence numbers, what the SDK's stream helper accumulates) against the non-streaming
response, input items through the real chat template, incomplete and failed responses, the store,
and the 400/404 envelopes. The live runtime on both backends is tests/e2e/test_responses.py."""

from __future__ import annotations

import json

import openai
import pytest

try:
    from ._server_fakes import Script
    from ._server_http_support import CALL_TEXT, MODEL, THINK_TEXT, make, pieces
except ImportError:
    from _server_fakes import Script
    from _server_http_support import CALL_TEXT, MODEL, THINK_TEXT, make, pieces

TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def serve(script: Script, **settings):
    backend, client = make(script, **settings)  # enter `client` to run the app's lifespan
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="k", http_client=client, max_retries=0)
    return backend, client, sdk


@pytest.fixture
def thinking_call():
    backend, client, sdk = serve(Script(pieces(THINK_TEXT + CALL_TEXT)))
    with client:
        yield backend, client, sdk


# Ids and times differ between two runs of the same response; `parsed*` are the SDK's own additions
# to what its stream helper returns. Everything else must be equal.
IGNORED = ("id", "call_id", "created_at", "completed_at", "parsed", "parsed_arguments")


def _strip_ids(value):
    if isinstance(value, dict):
        return {k: _strip_ids(v) for k, v in value.items() if k not in IGNORED}
    if isinstance(value, list):
        return [_strip_ids(v) for v in value]
    return value


def test_stream_events_accumulate_to_the_non_streaming_response(thinking_call):
    _, _, sdk = thinking_call
    body = {"model": MODEL, "input": "Weather?", "tools": [TOOL], "reasoning": {"effort": "high"}}
    plain = sdk.responses.create(**body)
    assert [o.type for o in plain.output] == ["reasoning", "message", "function_call"]
    assert plain.output[0].content[0].text == "The user asks. I answer." and plain.output_text == "It is sunny."
    call = plain.output[2]
    assert (
        call.name == "get_weather"
        and json.loads(call.arguments) == {"city": "Paris"}
        and call.call_id.startswith("call_")
    )
    assert (
        plain.status == "completed"
        and plain.model == MODEL
        and plain.usage.output_tokens == len(pieces(THINK_TEXT + CALL_TEXT))
    )

    raw = list(sdk.responses.create(**body, stream=True))
    assert [e.sequence_number for e in raw] == list(range(len(raw)))
    assert (
        raw[0].type == "response.created"
        and raw[1].type == "response.in_progress"
        and raw[-1].type == "response.completed"
    )
    assert raw[0].response.status == "in_progress" and raw[0].response.output == []
    # What the deltas add up to, item by item, is what each item's done event and the final response hold.
    texts: dict[tuple[int, str], str] = {}
    for e in raw:
        if e.type.endswith(".delta"):
            key = (e.output_index, e.type.rsplit(".", 1)[0])
            texts[key] = texts.get(key, "") + e.delta
    assert texts == {
        (0, "response.reasoning_text"): "The user asks. I answer.",
        (1, "response.output_text"): "It is sunny.",
        (2, "response.function_call_arguments"): call.arguments,
    }
    done_items = [e.item.to_dict() for e in raw if e.type == "response.output_item.done"]
    assert done_items == [o.to_dict() for o in raw[-1].response.output]

    with sdk.responses.stream(**body) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [e.type for e in events] == [e.type for e in raw]
    assert _strip_ids(final.to_dict()) == _strip_ids(plain.to_dict())


def test_input_items_render_through_the_chat_template(thinking_call):
    backend, _, sdk = thinking_call
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [],
            "content": [{"type": "reasoning_text", "text": "Use the tool."}],
        },
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "c1", "output": '{"temp": 21}'},
    ]
    sdk.responses.create(model=MODEL, input=items, instructions="Be brief.", tools=[TOOL])
    prompt = backend.tokenizer.decode(backend.requests[-1].prompt)
    assert (
        prompt.index("Be brief.")
        < prompt.index("Weather in Paris?")
        < prompt.index("<|tool_call>call:get_weather{city:")
    )
    # the output string goes to the template as the chat tool message would: the model continues after it
    assert prompt.endswith('<|tool_response>response:get_weather{value:<|"|>{"temp": 21}<|"|>}<tool_response|>')


def test_previous_response_id_get_delete_and_store_false(thinking_call):
    backend, _, sdk = thinking_call
    first = sdk.responses.create(model=MODEL, input="Weather?", tools=[TOOL], metadata={"k": "v"})
    assert sdk.responses.retrieve(first.id).to_dict() == first.to_dict() and first.metadata == {"k": "v"}
    call = first.output[-1]
    sdk.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        tools=[TOOL],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "21 C"}],
    )
    prompt = backend.tokenizer.decode(backend.requests[-1].prompt)
    # the stored turn comes back whole: its thought (the template keeps it within a tool-call turn) and call
    assert (
        prompt.count("Weather?") == 1
        and "thought\nThe user asks. I answer.\n<channel|><|tool_call>call:get_weather" in prompt
    )
    assert 'response:get_weather{value:<|"|>21 C<|"|>}' in prompt
    sdk.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError) as e:
        sdk.responses.create(model=MODEL, previous_response_id=first.id, input="again")
    assert e.value.body["param"] == "previous_response_id"
    unstored = sdk.responses.create(model=MODEL, input="Weather?", store=False)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(unstored.id)


def test_length_cut_is_incomplete():
    _, client, sdk = serve(Script(pieces("Hello there, my friend.", 2)))
    with client:
        out = sdk.responses.create(model=MODEL, input="Hi", max_output_tokens=3)
        assert out.status == "incomplete" and out.incomplete_details.reason == "max_output_tokens"
        assert out.output_text == "Hello " and out.output[0].status == "incomplete" and out.usage.output_tokens == 3
        last = list(sdk.responses.create(model=MODEL, input="Hi", max_output_tokens=3, stream=True))[-1]
        assert last.type == "response.incomplete" and last.response.incomplete_details.reason == "max_output_tokens"


def test_engine_failure_fails_the_response():
    backend, client, sdk = serve(Script(pieces("Hello there, my friend."), error_after=2))
    with client:
        with pytest.raises(openai.InternalServerError):
            sdk.responses.create(model=MODEL, input="Hi")
        events = list(sdk.responses.create(model=MODEL, input="Hi", stream=True))
        assert events[-1].type == "response.failed" and events[-1].response.status == "failed"
        assert "engine" in events[-1].response.error.message and events[-1].response.output[0].status == "incomplete"


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"input": "Hi", "background": True}, 400, "background"),
        ({"input": "Hi", "text": {"format": {"type": "grammar", "syntax": "lark"}}}, 400, "text.format.type"),
        ({"input": "Hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, 400, "text.format.schema"),
        ({"input": "Hi", "tools": [{"type": "web_search"}]}, 400, "tools.0.type"),
        (
            {"input": "Hi", "tools": [TOOL], "tool_choice": {"type": "function", "name": "nope"}},
            400,
            "tool_choice.name",
        ),
        ({"input": [{"type": "item_reference", "id": "x"}]}, 400, "input.0.type"),
        ({"input": [{"type": "function_call_output", "call_id": "c9", "output": "x"}]}, 400, "input.0.call_id"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, 400, "input.0.content.0"),
        ({"input": "Hi", "conversation": "conv_1"}, 400, "conversation"),
        ({"input": "Hi", "max_output_tokens": 100000}, 400, "max_output_tokens"),
        ({"input": "Hi", "temperature": 5}, 400, "temperature"),
        ({"input": "Hi", "model": "gpt-9"}, 404, "model"),
    ],
)
def test_errors_are_openai_envelopes(body, status, param):
    backend, client, _ = serve(Script(["x"]))
    with client:
        r = client.post("/v1/responses", json={"model": MODEL, **body})
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["param"] == param and err["message"]
        assert backend.requests == []  # refused before anything ran
        assert client.post("/v1/responses", json={"model": MODEL, "input": "Hi"}).status_code == 200  # nothing lost


def test_get_and_delete_unknown_ids_are_404():
    _, client, _ = serve(Script(["x"]))
    with client:
        for method in ("GET", "DELETE"):
            r = client.request(method, "/v1/responses/resp_nope")
            assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
