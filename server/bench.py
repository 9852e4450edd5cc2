"""`python -m server.bench`: the name the HTTP streaming benchmark had before it moved to `bench/` with
the other benchmarks; kept so that commands written against it (issue reports, users' scripts) still
run. The benchmark itself is `python -m bench.http_overhead` (same flags)."""

from __future__ import annotations

if __name__ == "__main__":
    from bench.http_overhead import main

    main()
