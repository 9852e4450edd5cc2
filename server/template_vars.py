"""The chat template's own variables: what a request's `chat_template_kwargs` may set.

`apply_chat_template(**kwargs)` treats some keys as its own (`chat_template` replaces the template with
the caller's Jinja source, `tokenize` / `return_dict` change what it returns) and passes the rest to
the template. A request may only set variables the engine's template reads (Gemma 4: `enable_thinking`),
never those keys nor the ones the server sets itself (messages, tools, the generation prompt).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# Set by the server or by transformers around the template; a request never sets them.
RESERVED = frozenset(
    {
        "chat_template",
        "tokenize",
        "return_dict",
        "return_tensors",
        "return_assistant_tokens_mask",
        "padding",
        "truncation",
        "max_length",
        "tokenizer_kwargs",
        "conversation",
        "messages",
        "tools",
        "documents",
        "add_generation_prompt",
        "continue_final_message",
        "raise_exception",
        "strftime_now",
        "bos_token",
        "eos_token",
        "pad_token",
        "unk_token",
        "sep_token",
        "cls_token",
        "mask_token",
    }
)


def template_variables(source: str | None) -> frozenset[str]:
    """The template's free variables (names it reads that it does not set), less the reserved ones."""
    if not source:
        return frozenset()
    import jinja2
    from jinja2 import meta

    try:
        env = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"])
        names = meta.find_undeclared_variables(env.parse(source))
    except jinja2.TemplateError as e:  # the engine's template would fail anyway; allow nothing extra
        log.warning("could not list the chat template's variables: %s", e)
        return frozenset()
    return frozenset(names) - RESERVED
