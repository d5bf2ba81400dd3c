"""Benchmark for agent.compliance.cost: how long the cheapest-mix advice takes on a large estate.

Plain script, not a test (timings do not belong in the test suite):

    python3 bench/bench_cost.py [--users 5000] [--devices 3000] [--per-user 3] [--seed 2015]

Builds a random access graph with a fixed seed (each user reaches ``--per-user`` distinct devices
out of ``--devices``), parses it from CSV as a real export would be, solves it and prints the
time of each step.
"""

from __future__ import annotations

import argparse
import random
import time
from decimal import Decimal

from agent.compliance.cost import cheapest_mix, parse_usage_csv, verify_cover


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--devices", type=int, default=3000)
    parser.add_argument("--per-user", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2015)
    args = parser.parse_args()

    rnd = random.Random(args.seed)
    rows = ["user,computer"]
    for u in range(args.users):
        for d in rnd.sample(range(args.devices), args.per_user):
            rows.append(f"CORP\\user{u:05},WS{d:05}$")
    text = "\n".join(rows) + "\n"

    start = time.perf_counter()
    pairs = parse_usage_csv(text, source="bench")
    parsed = time.perf_counter()
    advice = cheapest_mix(pairs, Decimal("38.00"), Decimal("29.00"), product="Windows Server")
    solved = time.perf_counter()
    uncovered = verify_cover(pairs, advice.users_to_license, advice.devices_to_license)

    print(f"{args.users} users x {args.per_user} devices each ({len(pairs)} pairs, "
          f"{advice.devices_seen} devices), seed {args.seed}")
    print(f"parse CSV:    {parsed - start:.3f} s")
    print(f"cheapest mix: {solved - parsed:.3f} s")
    print(advice.message)
    if uncovered:
        raise SystemExit(f"BUG: {len(uncovered)} pairs left uncovered")


if __name__ == "__main__":
    main()
