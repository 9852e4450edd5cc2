"""The conversations the taught tiny model learns by heart, one per output structure the server handles.

Each item: `name`; `messages` as the server hands them to the chat template (tool-call arguments
already objects, image parts as {"type": "image"}); optional `tools`, `chat_template_kwargs` and
`images` (ImageSpec, one per image part, in prompt order); and `reply`, the exact text the model must
write after the generation prompt, ending with the stop token it emits (`<turn|>`, or `<|tool_response>`
after tool calls). End-to-end tests send the same requests and expect these replies back.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

Q = '<|"|>'  # Gemma 4's string delimiter (one token)


@dataclass(frozen=True)
class ImageSpec:
    """A Pillow-drawn solid-colour image: tests make the same bytes to serve or inline."""

    color: tuple[int, int, int]
    size: tuple[int, int] = (64, 64)  # (width, height)

    def image(self) -> Image.Image:
        return Image.new("RGB", self.size, self.color)

    def encoded(self, fmt: str = "PNG") -> bytes:
        """The image as a PNG, JPEG or GIF file (a solid colour survives JPEG's loss nearly intact)."""
        buf = io.BytesIO()
        self.image().save(buf, format=fmt)
        return buf.getvalue()


RED_SQUARE = ImageSpec(color=(255, 0, 0))
BLUE_SQUARE = ImageSpec(color=(0, 0, 255))  # same question, other answer: the reply depends on the pixels

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city name, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    },
}

MATH_QUESTION = "What is 25 * 37? Think step by step."
IMAGE_QUESTION = "What is in this image?"
ITINERARY_SYSTEM = "You are a helpful assistant"
ITINERARY_QUESTION = "Create a detailed itinerary for a week-long adventure trip through Southeast Asia."
DGX_ANSWER = (
    "This image shows an **NVIDIA DGX system**, which is NVIDIA's flagship line of AI supercomputers/servers. ..."
)
PARIS_CALL = {
    "id": "call_0",
    "type": "function",
    "function": {"name": "get_weather", "arguments": {"location": "Paris"}},
}
PARIS_RESULT = '{"temperature": 21, "unit": "celsius"}'


def _call(name: str, **args: str) -> str:
    fields = ",".join(f"{k}:{Q}{v}{Q}" for k, v in args.items())
    return f"<|tool_call>call:{name}{{{fields}}}<tool_call|>"


def _image_question() -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": IMAGE_QUESTION}, {"type": "image"}]}]


TAUGHT_CONVERSATIONS: tuple[dict, ...] = (
    {
        "name": "hello",
        "messages": [{"role": "user", "content": "Hello!"}],
        "reply": "Hello! How can I help you today?<turn|>",
    },
    {
        "name": "math_thinking",
        "messages": [{"role": "user", "content": MATH_QUESTION}],
        "chat_template_kwargs": {"enable_thinking": True},
        "reply": "<|channel>thought\n25 * 37 = 25 * 40 - 25 * 3 = 1000 - 75 = 925.<channel|>25 * 37 = 925.<turn|>",
    },
    {
        "name": "math_direct",
        "messages": [{"role": "user", "content": MATH_QUESTION}],
        "chat_template_kwargs": {"enable_thinking": False},
        "reply": "25 * 37 = 925.<turn|>",
    },
    {
        "name": "tool_call",
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [WEATHER_TOOL],
        "reply": _call("get_weather", location="Paris") + "<|tool_response>",
    },
    {
        "name": "parallel_tool_calls",
        "messages": [{"role": "user", "content": "What is the weather in Paris and in London?"}],
        "tools": [WEATHER_TOOL],
        "reply": _call("get_weather", location="Paris") + _call("get_weather", location="London") + "<|tool_response>",
    },
    {
        "name": "after_tool_response",
        "messages": [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [PARIS_CALL]},
            {"role": "tool", "tool_call_id": "call_0", "content": PARIS_RESULT},
        ],
        "tools": [WEATHER_TOOL],
        "reply": "It is 21 degrees Celsius in Paris.<turn|>",
    },
    {
        "name": "image",
        "messages": _image_question(),
        "images": [RED_SQUARE],
        "reply": "A red square.<turn|>",
    },
    {
        "name": "image_blue",
        "messages": _image_question(),
        "images": [BLUE_SQUARE],
        "reply": "A blue square.<turn|>",
    },
    {
        "name": "itinerary",
        "messages": [{"role": "system", "content": ITINERARY_SYSTEM}, {"role": "user", "content": ITINERARY_QUESTION}],
        "reply": "Day 1: Bangkok. Day 2: Chiang Mai. Day 3: Luang Prabang. Day 4: Hanoi. "
        "Day 5: Ha Long Bay. Day 6: Siem Reap. Day 7: Bali.<turn|>",
    },
    {
        "name": "multi_turn",
        "messages": [
            *_image_question(),
            {"role": "assistant", "content": DGX_ANSWER},
            {"role": "user", "content": "When was this system released?"},
        ],
        "images": [RED_SQUARE],
        "reply": "It was released in 2024.<turn|>",
    },
)
