"""The padded step graphs an engine runs, by kind: which exist follows from the ResolvedConfig.

`ModelRunner` asks each in this order whether it fits a step and runs the first that does; a step none
fits runs eagerly. Under tensor parallel the kind's place in GRAPH_KINDS is what rank 0 broadcasts with
each step (parallel/step_channel.py), so every rank runs the same graphs; every rank builds them in this
order, which keeps their captures (and the collectives inside) in step.
"""

from __future__ import annotations

from gemma_runtime.config import ResolvedConfig
from gemma_runtime.executor.decode_graphs import DecodeGraphs, graph_batch_sizes, speculative_graph_batch
from gemma_runtime.executor.row_padded_graphs import PrefillGraphs, VerifyGraphs

GRAPH_KINDS = ("decode", "verify", "prefill")


def build_step_graphs(text, kv_caches, config: ResolvedConfig, pad_token_id: int) -> dict[str, object]:
    """kind -> graphs (each with `fits(batch, query_lens)` and `run(batch, query_lens)`), captured into one
    memory pool on a GPU: a step replays one graph, so they can share their intermediates' memory."""
    wanted = {
        "decode": config.decode_graph_max_batch > 0,
        "verify": speculative_graph_batch(config) > 0,
        "prefill": config.prefill_graph_max_tokens > 0,
    }
    makers = {"decode": DecodeGraphs, "verify": VerifyGraphs, "prefill": PrefillGraphs}
    out, pool = {}, None
    for kind in GRAPH_KINDS:
        if wanted[kind]:
            out[kind] = makers[kind](text, kv_caches, config, pad_token_id, pool)
            pool = out[kind].pool
    return out


def drafter_graph_sizes(config: ResolvedConfig) -> tuple[int, ...]:
    """The batch sizes of an MTP drafter's round graphs: the verify graphs' (the steps they draft for)."""
    n = speculative_graph_batch(config)
    return tuple(graph_batch_sizes(n)) if n else ()
