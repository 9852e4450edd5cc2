"""The short table a GPU session prints last (bench/gpu_session.sh, plan h200): per model and dtype, our
batch-1 decode against its bandwidth floor (bytes a step reads over the copy rate measured on that card),
the peak under arrivals and the time to first token, from the JSON lines `make bench` appended in $OUT;
then how each of the session's steps ended (its session.log).

    python -m bench.session_summary OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = ("model", "dtype", "batch-1 tok/s", "floor tok/s", "% of floor", "peak tok/s", "TTFT ms")


def rows(figures: list[dict]) -> list[tuple[str, ...]]:
    """One row per (gpu, model, dtype) of our figures; a later figure of the same kind replaces an earlier one."""
    latest: dict[tuple, dict[tuple, float]] = {}
    for f in figures:
        if f.get("system") != "ours":
            continue
        latest.setdefault((f["gpu"], f["model"], f["dtype"]), {})[(f["metric"], f["batch"])] = f["value"]
    out = []
    for (_gpu, model, dtype), m in sorted(latest.items()):
        batch1 = m.get(("decode_tokens_per_s_per_user", 1))
        floor = m.get(("bandwidth_floor_tokens_per_s", 1))
        peak = next((v for (k, _), v in m.items() if k == "peak_output_tokens_per_s"), None)
        ttft = m.get(("ttft_ms", 1))

        def fmt(v, spec=".1f"):
            return "-" if v is None else format(v, spec)

        share = batch1 / floor if batch1 and floor else None
        out.append((model, dtype, fmt(batch1), fmt(floor), fmt(share, ".0%"), fmt(peak, ".0f"), fmt(ttft)))
    return out


def render(table: list[tuple[str, ...]]) -> str:
    cells = [COLUMNS, *table]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c[i].rjust(w) if i > 1 else c[i].ljust(w) for i, w in enumerate(widths)) for c in cells)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "bench/results")
    figures = [json.loads(line) for p in sorted(out.glob("*.jsonl")) for line in p.read_text().splitlines() if line]
    figures = [f for f in figures if "metric" in f]  # tune.jsonl's lines are kernels' tiles, not figures
    print("== summary")
    print(render(rows(figures)) if figures else "no bench figures in " + str(out))
    log = out / "session.log"
    if log.is_file():
        print("\n".join(line for line in log.read_text().splitlines() if ": exit " in line or "skip" in line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
