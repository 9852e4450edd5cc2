"""build_engine: a Hugging Face Gemma 4 checkpoint -> one engine folder (engines/README.md).

Everything that can be wrong with the input is checked before the first byte is written; the engine is
assembled in a hidden temporary folder inside out_dir and renamed into place only when complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import ExitStack
from pathlib import Path

import torch
from tqdm import tqdm

from gemma_runtime.engine_format.dtypes import EngineDtype
from gemma_runtime.engine_format.fp8 import FP8, scale_name
from gemma_runtime.engine_format.spec import EngineSpec, QuantizationSpec

from .assistant.convert import PreparedAssistant, prepare_assistant, write_assistant
from .assistant.sources import AssistantSource, resolve_assistant
from .checkpoint import ARCHITECTURE, Checkpoint
from .dtypes import engine_dtype
from .engine_files import read_tokenizer, write_engine_files
from .errors import BuildError
from .sources import Source, resolve
from .spec import default_max_model_len, multimodal_spec, text_config, text_spec, vision_spec
from .weights import OutTensor, is_fp8_linear, materialize, plan_weights, quantize_fp8
from .writer import DEFAULT_MAX_SHARD_BYTES, Entry, total_bytes, write_sharded


def _entries(ckpt: Checkpoint, plan: list[OutTensor], dtype: EngineDtype) -> list[Entry]:
    target, quantized = dtype.torch_dtype, dtype.quantization is not None
    entries = []
    for t in plan:
        if quantized and is_fp8_linear(t.name):  # the scale follows its weight: both come from one read
            entries += [Entry(t.name, t.shape, FP8), Entry(scale_name(t.name), t.shape[:-1], torch.float32)]
        else:
            source = ckpt.tensors[t.sources[0]].dtype
            entries.append(Entry(t.name, t.shape, target if source.is_floating_point else source))
    return entries


def _producer(ckpt: Checkpoint, plan: list[OutTensor]):
    """Entry -> tensor, in the writer's order; an FP8 weight leaves its scale for the next entry."""
    by_name = {t.name: t for t in plan}
    scales: dict[str, torch.Tensor] = {}

    def produce(e: Entry) -> torch.Tensor:
        if e.name in scales:
            return scales.pop(e.name)
        if e.dtype == FP8:
            q, scales[scale_name(e.name)] = quantize_fp8(materialize(ckpt, by_name[e.name], torch.float32))
            return q
        return materialize(ckpt, by_name[e.name], e.dtype)

    return produce


def _quantization(dtype: EngineDtype, entries: list[Entry]) -> QuantizationSpec | None:
    method = dtype.quantization
    if method is None:
        return None
    return QuantizationSpec(method, "per_channel", tuple(e.name for e in entries if e.dtype == FP8))


def _max_model_len(config: dict, requested: int | None) -> int:
    limit = int(text_config(config).get("max_position_embeddings") or 0)
    if requested is None:
        return default_max_model_len(config)
    if requested <= 0 or (limit and requested > limit):
        raise BuildError(f"--max-model-len {requested} must be between 1 and max_position_embeddings ({limit})")
    return requested


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace_dir(tmp: Path, final: Path) -> None:
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def convert_folder(
    folder: Path,
    out_dir: Path,
    *,
    engine_name: str,
    dtype: str | EngineDtype,
    model_name: str,
    checkpoint_id: str,
    max_model_len: int | None = None,
    progress: bool = True,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    assistant: AssistantSource | None = None,
) -> Path:
    """Convert one local checkpoint folder into out_dir/engine_name (with its MTP drafter, if given)."""
    with ExitStack() as stack:
        dtype = engine_dtype(dtype)
        text = text_spec(Checkpoint(folder).config, dtype.base)
        prepared = None
        if assistant is not None:  # fetched and checked against the target before anything is written
            a_folder = Path(stack.enter_context(assistant.open(text)))
            prepared = prepare_assistant(a_folder, assistant.checkpoint, text, dtype)
        return _convert(
            folder,
            out_dir,
            engine_name,
            dtype,
            model_name,
            checkpoint_id,
            max_model_len,
            progress,
            max_shard_bytes,
            prepared,
        )


def _convert(
    folder: Path,
    out_dir: Path,
    engine_name: str,
    dtype: EngineDtype,
    model_name: str,
    checkpoint_id: str,
    max_model_len: int | None,
    progress: bool,
    max_shard_bytes: int,
    assistant: PreparedAssistant | None,
) -> Path:
    ckpt = Checkpoint(folder)
    config = ckpt.config
    text = text_spec(config, dtype.base)
    vision = vision_spec(config)
    info = read_tokenizer(folder)
    plan = plan_weights(ckpt, text, with_vision=vision is not None)
    entries = _entries(ckpt, plan, dtype)
    spec = EngineSpec(
        model_name=model_name,
        architecture=ARCHITECTURE,
        dtype=dtype.base,
        max_model_len=_max_model_len(config, max_model_len),
        text=text,
        tokens=info.tokens,
        stop_token_ids=info.stop_token_ids,
        vision=vision,
        multimodal=multimodal_spec(config),
        quantization=_quantization(dtype, entries),
        source={"checkpoint": checkpoint_id, "sha256": ckpt.sha256()},
        assistant=assistant.spec if assistant is not None else None,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{engine_name}.tmp-", dir=out_dir))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the engine is an ordinary folder
        with tqdm(total=total_bytes(entries), unit="B", unit_scale=True, desc=engine_name, disable=not progress) as bar:
            write_sharded(
                tmp,
                entries,
                _producer(ckpt, plan),
                max_shard_bytes,
                on_written=lambda e: bar.update(e.nbytes),
            )
        if assistant is not None:
            write_assistant(assistant, tmp, max_shard_bytes)
        write_engine_files(folder, tmp, info)
        spec.save(tmp)
        final = out_dir / engine_name
        _replace_dir(tmp, final)
    except BaseException:  # Ctrl-C included: a half-written engine must never look like an engine
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def build_engine(
    source: str | Path,
    out_dir: str | Path = "engines",
    *,
    dtype: str | None = None,
    name: str | None = None,
    max_model_len: int | None = None,
    progress: bool = True,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    assistant: str | None = None,
) -> Path:
    """Build an engine from `source` (tiny, 26b, 31b, a folder or a hub id); returns the engine folder.
    assistant (auto, random, a folder or a hub id) adds the MTP drafter in assistant/.

    dtype defaults to float32 for tiny and bfloat16 otherwise (fp8: e4m3 linear layers, the rest bfloat16);
    the folder is `<name or base>-<dtype>`.
    Bad input raises BuildError (a SystemExit carrying one line).
    """
    src: Source = resolve(str(source))
    drafter = resolve_assistant(assistant, src) if assistant else None  # `auto` fails here, before any download
    dtype = engine_dtype(dtype or src.default_dtype)
    engine_name = name or f"{src.base_name}-{dtype.name}"
    with src.open() as folder:
        return convert_folder(
            Path(folder),
            Path(out_dir),
            engine_name=engine_name,
            dtype=dtype,
            model_name=src.model_name,
            checkpoint_id=src.checkpoint,
            max_model_len=max_model_len,
            progress=progress,
            max_shard_bytes=max_shard_bytes,
            assistant=drafter,
        )
