"""Frame serving on loopback against a bare uvicorn endpoint (issue 4's load
test), with integrity checks against without (issue 11: at least 0.9x), and
with authentication and the audit trail on against both off (issue 14: at
least 0.9x; also the cost of one audit line: transcode/bench/secured.py);
the measurement lives in `transcode.bench.server`, which `transcode bench`
also runs.

    python benchmarks/server_load.py [--files 300] [--seconds 5] [--clients 1 8]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transcode.bench import report, server
from transcode.bench.measure import save


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=5.0, help="per case and concurrency (default: 5)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    results = server.run(args.files, args.seconds, args.clients)
    table = report.server_table(results)
    save(args.out, "server_load", results, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
