"""Time one 4-point sweep three ways: one after another in this process (--jobs 1), in the local
process pool (--jobs N, default one per core) and as tasks on a local Ray (ray.init(num_cpus=N)),
and print a table: median of --repeats runs, the first run, and the ratio to the local pool.

    python tools/bench_ray.py                          # resnet50 (legacy export), --flops 0.9 0.7 0.5 0.3
    python tools/bench_ray.py --model m.onnx --repeats 3 --address auto   # an existing cluster

Bar (issue 14): Ray's median is at most 1.3x the local pool's on a 2-core machine. Ray's start
(ray.init) is timed apart: a cluster is started once, not per sweep. The ratios of every run are
checked to be equal to the sequential run's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

TARGETS = [0.9, 0.7, 0.5, 0.3]
BAR = 1.3


def timed(run) -> tuple[float, list[float]]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, [p.flops_ratio for p in result.points]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an .onnx file (default: torchvision resnet50, exported and cached)")
    parser.add_argument("--jobs", type=int, default=None, help="pool size and Ray CPUs (default: one per core)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--address", help="connect to this Ray cluster instead of starting a local one")
    args = parser.parse_args()

    import ray

    import onnxprune
    from onnxprune.jobs.local import default_jobs

    jobs = args.jobs or default_jobs()
    if args.model:
        model = Path(args.model)
    else:
        from export_models import export_model

        model = export_model("resnet50", "legacy", ROOT / ".cache" / "models")
    common = {"flops": TARGETS, "round_to": 8}
    start = time.perf_counter()
    if args.address:
        ray.init(address=args.address, configure_logging=False, log_to_driver=False)
    else:
        ray.init(num_cpus=jobs, include_dashboard=False, configure_logging=False, log_to_driver=False)
    ray_start = time.perf_counter() - start

    ways = {"local sequential (--jobs 1)": {"jobs": 1}, f"local pool (--jobs {jobs})": {"jobs": jobs},
            "local Ray (--ray)" if not args.address else f"Ray at {args.address}": {"ray": True}}
    times: dict[str, list[float]] = {w: [] for w in ways}
    reference = None
    for _ in range(args.repeats):
        for way, kw in ways.items():
            seconds, ratios = timed(lambda kw=kw: onnxprune.sweep(model, **common, **kw))
            reference = reference or ratios
            if ratios != reference:
                print(f"{way}: ratios {ratios} differ from {reference}", file=sys.stderr)
                return 1
            times[way].append(seconds)
    ray.shutdown()

    pool = statistics.median(times[list(ways)[1]])
    print(f"\n4-point sweep of {model.name} (--flops {' '.join(map(str, TARGETS))} --round-to 8), "
          f"median of {args.repeats}; ray.init took {ray_start:.1f} s (not counted)\n")
    print("| way | median s | first run s | ratio to the local pool |")
    print("|---|---|---|---|")
    for way, ts in times.items():
        print(f"| {way} | {statistics.median(ts):.2f} | {ts[0]:.2f} | {statistics.median(ts) / pool:.2f} |")
    ratio = statistics.median(times[list(ways)[2]]) / pool
    print(f"\nRay / local pool: {ratio:.2f} (bar <= {BAR}): {'pass' if ratio <= BAR else 'FAIL'}")
    return 0 if ratio <= BAR else 1


if __name__ == "__main__":
    sys.exit(main())
