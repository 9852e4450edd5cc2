"""The fixed prompts `make verify` runs, and the fixed text its perplexity is measured on.

One prompt per output structure the server handles: plain text, thinking, a tool call, an image (drawn
here with Pillow, so the check needs no file). They are the tiny demo model's taught conversations
(engine_builder/tiny/taught_corpus.py), so the check also has real margins on the tiny engines its
tests build; on a real model they are ordinary chat prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine_builder.tiny.taught_corpus import IMAGE_QUESTION, MATH_QUESTION, RED_SQUARE, WEATHER_TOOL


@dataclass(frozen=True)
class VerifyPrompt:
    name: str
    messages: tuple[dict, ...]
    tools: tuple[dict, ...] | None = None
    template_kwargs: dict = field(default_factory=dict)
    images: tuple = ()  # PIL images, one per {"type": "image"} part, in prompt order

    def render(self, tokenizer) -> str:
        """The generation prompt the server would render for these messages (the engine's chat template)."""
        return tokenizer.apply_chat_template(
            list(self.messages),
            tools=list(self.tools) if self.tools else None,
            tokenize=False,
            add_generation_prompt=True,
            **self.template_kwargs,
        )


PROMPTS: tuple[VerifyPrompt, ...] = (
    VerifyPrompt("text", ({"role": "user", "content": "Hello!"},)),
    VerifyPrompt("thinking", ({"role": "user", "content": MATH_QUESTION},), template_kwargs={"enable_thinking": True}),
    VerifyPrompt("tool call", ({"role": "user", "content": "What is the weather in Paris?"},), tools=(WEATHER_TOOL,)),
    VerifyPrompt(
        "image",
        ({"role": "user", "content": [{"type": "text", "text": IMAGE_QUESTION}, {"type": "image"}]},),
        images=(RED_SQUARE.image(),),
    ),
)

# Perplexity is measured, by both models and teacher-forced, on this conversation as the chat template
# renders it, the answer included (the tiny demo model learned it: a text it has real margins on).
PERPLEXITY_MESSAGES = (
    {"role": "system", "content": "You are a helpful assistant"},
    {"role": "user", "content": "Create a detailed itinerary for a week-long adventure trip through Southeast Asia."},
)
PERPLEXITY_ANSWER = (
    "Day 1: Bangkok. Day 2: Chiang Mai. Day 3: Luang Prabang. Day 4: Hanoi. "
    "Day 5: Ha Long Bay. Day 6: Siem Reap. Day 7: Bali.<turn|>"
)


def perplexity_text(tokenizer) -> str:
    """The fixed text: the conversation rendered (from <bos>) with its answer."""
    prompt = tokenizer.apply_chat_template(list(PERPLEXITY_MESSAGES), tokenize=False, add_generation_prompt=True)
    return prompt + PERPLEXITY_ANSWER
