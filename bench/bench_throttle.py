"""Benchmark: a sync through a throttle storm (issue 16), the product against bare boto3 in its
adaptive retry mode, both through the same fault-injecting proxy in front of moto.

Run from the repository root:
    .venv/bin/python bench/bench_throttle.py
    .venv/bin/python bench/bench_throttle.py --files 1200 --first 200 --rate 40 --repeat 2

The storm (tests/servers/s3.py FaultProxy.throttle): the first --first PUTs answer 503 SlowDown,
then --rate PUT/s pass and the rest answer 503 SlowDown. Both sides use 8 concurrent transfers
and max_retries 3 (4 attempts):
  product  `manage.py upload --sync` (one process, sessions_app/pacing.py), a fresh database.
  boto3    ThreadPoolExecutor(8) of put_object on one client with retries={"mode": "adaptive",
           "max_attempts": 4}: the AWS SDK's own client-side rate limiter.
Reported per side: wall time, files failed, and wall / ideal, where ideal = files / rate (the
storm's 200 refusals cost no time at all in the ideal).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import MANAGE, PYTHON, REGION, REPO  # noqa: E402

from tests.servers.s3 import FaultProxy  # noqa: E402


def make_files(root: Path, n: int) -> Path:
    src = root / f"src-{n}"
    if not src.exists():
        for i in range(n):
            p = src / f"d{i % 10}" / f"f{i:05d}.wav"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"x" * 1024)
    return src


def run_product(args, moto: common.Moto, proxy: FaultProxy, src: Path, work: Path) -> tuple[float, int, str]:
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    boto_client(moto.endpoint_url).create_bucket(Bucket=bucket)
    db = common.FreshDatabase(args.database_url, work).create()
    try:
        db.migrate(work / "migrate.log")
        cfg = work / f"cfg-{bucket}.json"
        cfg.write_text(json.dumps({"project": "throttle", "source_dir": str(src), "max_retries": 3,
                                   "upload_workers": 8,
                                   "destination": {"type": "s3", "bucket": bucket, "region": REGION,
                                                   "endpoint_url": proxy.endpoint_url}}))
        proxy.reset()
        proxy.throttle(args.first, args.rate)
        started = time.monotonic()
        result = subprocess.run([PYTHON, MANAGE, "upload", "--sync", "--no-progress", "--config", str(cfg)],
                                env=db.env(LOG_LEVEL="INFO"), cwd=REPO, capture_output=True, text=True)
        wall = time.monotonic() - started
        failed = -1
        for line in result.stdout.splitlines():
            if " failed, " in line and line.startswith("session "):
                failed = int(line.split(" failed, ")[0].rsplit(" ", 1)[1])
        rates = [line.split(": ", 2)[-1] for line in result.stderr.splitlines() if "sending at" in line]
        return wall, failed, "\n".join(rates)
    finally:
        db.drop()


def boto_client(endpoint_url: str, **retries):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint_url, region_name=REGION, config=Config(
        max_pool_connections=16, retries=retries or {"mode": "standard", "max_attempts": 3},
        request_checksum_calculation="when_required", response_checksum_validation="when_required"))


def run_boto3(args, moto: common.Moto, proxy: FaultProxy, src: Path) -> tuple[float, int]:
    import botocore.exceptions

    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    boto_client(moto.endpoint_url).create_bucket(Bucket=bucket)
    client = boto_client(proxy.endpoint_url, mode="adaptive", max_attempts=4)
    paths = sorted(p for p in src.rglob("*") if p.is_file())

    def put(path: Path) -> bool:
        try:
            with open(path, "rb") as f:
                client.put_object(Bucket=bucket, Key=str(path.relative_to(src)), Body=f)
            return True
        except botocore.exceptions.ClientError:
            return False

    proxy.reset()
    proxy.throttle(args.first, args.rate)
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        ok = sum(pool.map(put, paths))
    return time.monotonic() - started, len(paths) - ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1200)
    parser.add_argument("--first", type=int, default=200)
    parser.add_argument("--rate", type=float, default=40)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "uploader-bench-throttle"))
    parser.add_argument("--show-rates", action="store_true", help="print the product's rate lines")
    args = parser.parse_args()
    common.install_cleanup()
    os.environ.update(common.aws_env())  # this process's own boto3 clients too
    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-throttle-"))
    src = make_files(data, args.files)
    moto = common.Moto(work / "moto.log").start()
    proxy = FaultProxy("127.0.0.1", moto.port)
    ideal = args.files / args.rate
    print(f"{args.files} files; first {args.first} PUTs 503 SlowDown, then {args.rate:g} PUT/s; "
          f"ideal {ideal:.1f} s; {common.machine()}")
    try:
        for i in range(args.repeat):
            order = ("product", "boto3") if i % 2 == 0 else ("boto3", "product")
            for side in order:
                if side == "product":
                    wall, failed, rates = run_product(args, moto, proxy, src, work)
                    if args.show_rates:
                        print(rates)
                else:
                    wall, failed = run_boto3(args, moto, proxy, src)
                print(f"run {i + 1} {side:8s} wall {wall:6.1f} s  failed {failed:4d}  wall/ideal {wall / ideal:.2f}")
    finally:
        proxy.close()
        moto.stop()


if __name__ == "__main__":
    main()
