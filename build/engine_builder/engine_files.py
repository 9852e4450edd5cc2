"""The engine's non-weight files: tokenizer, chat template, generation config (stop ids, sampling defaults)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from gemma_runtime.engine_format.files import CHAT_TEMPLATE, GENERATION_CONFIG, TOKENIZER_FILES
from gemma_runtime.engine_format.spec import TokenSpec

from .errors import BuildError

EXTRA_FILES = ("processor_config.json", "preprocessor_config.json")  # image preprocessing settings, when shipped
# Gemma 4 ends a model turn with <turn|> and hands control to a tool with <|tool_response>
EXTRA_STOP_TOKENS = ("<turn|>", "<|tool_response>")
SAMPLING_DEFAULTS = {"do_sample": True, "temperature": 1.0, "top_p": 0.95, "top_k": 64}


@dataclass(frozen=True)
class TokenizerInfo:
    tokens: TokenSpec
    stop_token_ids: tuple[int, ...]
    generation_config: dict
    chat_template: str


def _token_id(tokenizer, token: str, folder: Path) -> int:
    i = tokenizer.convert_tokens_to_ids(token)
    if i is None or tokenizer.convert_ids_to_tokens(i) != token:
        raise BuildError(f"the tokenizer in {folder} has no {token} token: not a Gemma 4 tokenizer")
    return int(i)


def _chat_template(folder: Path) -> str:
    path = folder / CHAT_TEMPLATE
    if path.is_file():
        return path.read_text(encoding="utf-8")
    template = (
        json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template")
        if (folder / "tokenizer_config.json").is_file()
        else None
    )
    if isinstance(template, list):  # older format: [{"name": "default", "template": ...}, ...]
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if not template:
        raise BuildError(f"{folder} has no chat template ({CHAT_TEMPLATE} or tokenizer_config.json chat_template)")
    return template


def _eos_list(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, list) else [value])]


def read_tokenizer(folder: Path) -> TokenizerInfo:
    if not (folder / "tokenizer.json").is_file():
        raise BuildError(f"{folder} has no tokenizer.json: the tokenizer is missing")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:  # noqa: BLE001 - any loader failure is a bad checkpoint, reported in one line
        raise BuildError(
            f"cannot load the tokenizer in {folder}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    bos, eos, pad = (
        _token_id(tokenizer, getattr(tokenizer, f"{k}_token") or d, folder)
        for k, d in (("bos", "<bos>"), ("eos", "<eos>"), ("pad", "<pad>"))
    )
    source_gen = {}
    if (folder / GENERATION_CONFIG).is_file():
        source_gen = json.loads((folder / GENERATION_CONFIG).read_text())
    stops = _eos_list(source_gen.get("eos_token_id")) or [eos]
    stops += [_token_id(tokenizer, t, folder) for t in EXTRA_STOP_TOKENS]
    stops = list(dict.fromkeys(stops))  # dedupe, keep order
    sampling = {k: source_gen.get(k, v) for k, v in SAMPLING_DEFAULTS.items()}
    generation = {**sampling, "bos_token_id": bos, "eos_token_id": stops, "pad_token_id": pad}
    return TokenizerInfo(TokenSpec(bos, eos, pad), tuple(stops), generation, _chat_template(folder))


def write_engine_files(src: Path, dst: Path, info: TokenizerInfo) -> None:
    for name in TOKENIZER_FILES + EXTRA_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    (dst / CHAT_TEMPLATE).write_text(info.chat_template, encoding="utf-8")
    (dst / GENERATION_CONFIG).write_text(json.dumps(info.generation_config, indent=2) + "\n")
