"""`python -m bench [--quick] [--only NAME ...]`: run the benchmarks, print tables, save JSON."""

from __future__ import annotations

import argparse
import importlib
import sys
import time

BENCHMARKS = ("webhooks", "turns", "outbox", "ledger", "matching", "memory")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./run bench")
    parser.add_argument("--quick", action="store_true", help="small smoke run (< 2 minutes)")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these")
    args = parser.parse_args(argv)
    from bench.common import speed_probe

    probe_start = speed_probe()
    t0 = time.perf_counter()
    took: list[str] = []
    for name in args.only or BENCHMARKS:
        started = time.perf_counter()
        importlib.import_module(f"bench.{name}").measure(args.quick)
        took.append(f"{name} {time.perf_counter() - started:.0f} s")
    print(f"\nbench finished in {time.perf_counter() - t0:.0f} s ({', '.join(took)}); "
          "JSON in bench/results/")
    print(f"speed probe (a fixed Python loop on one core; lower is faster): {probe_start} s "
          f"at the start, {speed_probe()} s at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
