"""Load test of `spotter serve`: requests/s, latency percentiles and images/s against offline prediction.

Starts a real `spotter serve` on a free loopback port (never anything else), measures the same model's offline
throughput in this process first, then runs 1, 8 and 64 concurrent clients, each for at most --seconds and
--max-requests, and stops the server. Prints a table and writes JSON. Bounded and self-stopping.

    python bench/serve_load.py --run RUN [--extra-runs RUN ...] [--images DIR] [--clients 1 8 64]
        [--seconds 20] [--max-requests 5000] [--per-request 1] [--out serve_load.json]

The clients run in this process, on the same machine as the server: on a small machine they take CPU from it.
The load test is spotter.bench.serve_load's.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from spotter.bench.serve_load import DEFAULT_IMAGES, load_test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="histo run (or ensemble) to load-test")
    parser.add_argument("--extra-runs", type=Path, nargs="*", default=[],
                        help="more runs for the server to hold (for its memory with several models loaded)")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of .tif patches")
    parser.add_argument("--n-images", type=int, default=512, help="distinct patches sent (and used offline)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--seconds", type=float, default=20, help="most seconds per client count")
    parser.add_argument("--max-requests", type=int, default=5000, help="most requests per client count")
    parser.add_argument("--per-request", type=int, default=1, help="patches per request")
    parser.add_argument("--out", type=Path, default=Path("serve_load.json"))
    args = parser.parse_args()
    load_test(args.run, args.extra_runs, args.images, args.n_images, args.clients, args.seconds, args.max_requests,
              args.per_request, args.out)


if __name__ == "__main__":
    main()
