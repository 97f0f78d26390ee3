"""Several destinations per project: a first sync of a tree of small files to a local folder and to
S3 (moto) from one scan, against the slower of the two single-destination syncs, in one run.

    python bench/bench_multi.py --files 20000 [--size 256] [--repeat 2]
                                [--database-url postgres://postgres@127.0.0.1:5432/bench_multi]

Each round runs three first syncs (`upload --sync`, fresh project, fresh bucket and folder, so
every file is sent): the local folder alone, S3 alone, and both as one project with two
`destinations`. The order of the three rotates from round to round. The ratio is the
two-destination sync's wall time over the slower single one's (the issue's target: ≤ 1.3×).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from bench_resync import ensure_tree  # noqa: E402

PYTHON = common.PYTHON
WORKERS = 16


def sync(db: common.FreshDatabase, tree: Path, work: Path, name: str, destinations: list[dict]) -> tuple[float, float]:
    """Wall and CPU (the command's process tree) of one first sync of the tree."""
    config = work / f"{name}.json"
    config.write_text(json.dumps({"project": name, "source_dir": str(tree), "destinations": destinations,
                                  "upload_workers": WORKERS, "exclude": [".complete"]}))
    common.wait_quiet(QUIET_WAIT)
    t0, c0 = time.perf_counter(), common.children_cpu()
    with open(work / f"{name}.log", "ab") as out:
        rc = subprocess.run([PYTHON, common.MANAGE, "upload", "--config", str(config), "--sync", "--no-progress"],
                            env=db.env(), cwd=common.PRODUCT, stdout=out, stderr=subprocess.STDOUT).returncode
    wall, cpu = time.perf_counter() - t0, common.children_cpu() - c0
    if rc != 0:
        raise RuntimeError(f"{name} exited {rc}, see {work / f'{name}.log'}")
    return wall, cpu


QUIET_WAIT = 20.0


def main() -> None:
    global QUIET_WAIT
    import boto3

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=256, help="bytes per file")
    parser.add_argument("--data", default="/tmp/uploader-bench", help="where the tree is cached")
    parser.add_argument("--database-url", help="postgres://…/NAME: created fresh, dropped after (default SQLite)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of the three syncs")
    parser.add_argument("--quiet-wait", type=float, default=QUIET_WAIT)
    args = parser.parse_args()
    QUIET_WAIT = args.quiet_wait
    common.install_cleanup()
    tree = ensure_tree(Path(args.data), args.files, args.size)
    subprocess.run(["find", str(tree), "-type", "f"], stdout=subprocess.DEVNULL, check=True)  # warm the cache
    work = Path(tempfile.mkdtemp(prefix="bench-multi-"))
    moto = common.Moto(work / "moto.log").start()
    admin = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name=common.REGION,
                         aws_access_key_id="testing", aws_secret_access_key="testing")
    db = common.FreshDatabase(args.database_url, work).create()
    db_kind = "postgresql" if args.database_url else "sqlite"
    print(f"{common.machine()}\ntree: {args.files:,} × {args.size} B; database {db_kind}; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    times: dict[str, list[tuple[float, float]]] = {"local": [], "s3": [], "both": []}
    try:
        db.migrate(work / "migrate.log")
        for i in range(args.repeat):
            order = ["local", "s3", "both"]
            order = order[i % 3:] + order[:i % 3]
            for side in order:
                bucket = f"b{i}-{side}"
                admin.create_bucket(Bucket=bucket)
                local = {"name": "archive", "type": "local", "path": str(work / f"dest-{i}-{side}")}
                s3 = {"name": "s3", "type": "s3", "bucket": bucket, "prefix": "data",
                      "endpoint_url": moto.endpoint_url, "region": common.REGION}
                dests = {"local": [local], "s3": [s3], "both": [local, s3]}[side]
                times[side].append(sync(db, tree, work, f"multi-{i}-{side}", dests))
                print(f"round {i + 1} {side}: {times[side][-1][0]:.1f} s wall, {times[side][-1][1]:.1f} s CPU; "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        db.drop()
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)
    best = {side: min(runs) for side, runs in times.items()}
    slower = max(("local", "s3"), key=lambda side: best[side][0])
    print(f"\nload average at end {os.getloadavg()[0]:.1f}; best of {args.repeat}, wall (CPU of the command's tree)")
    print("| sync | wall | CPU |\n|---|---:|---:|")
    for side in ("local", "s3", "both"):
        print(f"| {side} | {best[side][0]:.1f} s | {best[side][1]:.1f} s |")
    print(f"\nboth / slower single ({slower}): {best['both'][0] / best[slower][0]:.2f}× wall, "
          f"{best['both'][1] / best[slower][1]:.2f}× CPU")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted: every process started here was stopped")
