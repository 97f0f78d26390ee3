"""Benchmark: the product (upload command + a real qcluster) against a bare concurrent boto3
put_object loop, both on moto's standalone S3 server on loopback.

Run from the repository root:
    .venv/bin/python bench/bench_s3.py
    .venv/bin/python bench/bench_s3.py --database-url postgres://postgres@127.0.0.1:5432/bench
    .venv/bin/python bench/bench_s3.py --sets small --repeat 2

Per data set (10,000 x 4 KiB and 8 x 64 MiB by default, generated once under --data):
  product  a fresh database, `manage.py migrate`, `manage.py qcluster` (Q_WORKERS = upload_tasks + 1:
           one worker scans, the others upload) and `manage.py upload --config cfg.json --no-progress`
           with upload_workers=15 to a fresh bucket. Wall = the upload command's wall time; client CPU =
           CPU of the qcluster process tree + the upload command during that time.
  bare     ThreadPoolExecutor(15) of put_object on one shared client (same botocore settings as the
           product: one attempt, checksums when required), to another fresh bucket; its process CPU.
Targets: product wall <= 1.1 x bare; product CPU per file <= 1.5 x bare.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import MANAGE, PYTHON, REGION, REPO  # noqa: E402

MiB = 1024 * 1024
WALL_TARGET, CPU_TARGET = 1.1, 1.5
QUIET_WAIT = 120.0  # --quiet-wait


@dataclass
class DataSet:
    name: str
    count: int
    size: int
    folders: int
    path: Path = field(init=False)

    @property
    def total(self) -> int:
        return self.count * self.size

    def label(self) -> str:
        size = f"{self.size // MiB} MiB" if self.size >= MiB else f"{self.size // 1024} KiB"
        return f"{self.count:,} x {size}"


@dataclass
class Result:
    name: str
    files: int
    nbytes: int
    wall: float
    cpu: float
    moto_cpu: float
    note: str = ""
    other_cpu: float = 0.0  # CPU the rest of the machine used meanwhile (noise)

    def line(self) -> str:
        return (f"  {self.name:<8} {self.wall:8.2f} s {self.files / self.wall:9.1f} files/s "
                f"{self.nbytes / self.wall / 1e6:8.1f} MB/s   client CPU {self.cpu:7.2f} s "
                f"= {self.cpu / self.files * 1000:7.2f} s/1000 files   moto CPU {self.moto_cpu:7.2f} s   "
                f"other CPU {self.other_cpu:6.2f} s  {self.note}")


# -- data ---------------------------------------------------------------------------------------
def ensure_data(root: Path, ds: DataSet) -> None:
    """Random bytes (so nothing compresses or dedups), generated once; the marker lives outside the
    source folder so that it is not uploaded."""
    ds.path = root / f"s3-{ds.name}-{ds.count}x{ds.size}"
    marker = ds.path.with_name(ds.path.name + ".complete")
    if marker.exists():
        return
    print(f"generating {ds.label()} under {ds.path} ...", flush=True)
    shutil.rmtree(ds.path, ignore_errors=True)
    for i in range(ds.count):
        p = ds.path / f"d{i % ds.folders:03d}" / f"f{i:06d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "wb") as f:
            left = ds.size
            while left:
                n = min(left, 8 * MiB)
                f.write(os.urandom(n))
                left -= n
    marker.write_text(f"{ds.count} {ds.size}\n")


def list_files(root: Path) -> list[str]:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out.extend(name if rel == "." else f"{rel}/{name}" for name in files)
    return out


# -- S3 -----------------------------------------------------------------------------------------
def client(endpoint_url: str, pool: int):
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, region_name=REGION,
        config=Config(max_pool_connections=pool, retries={"total_max_attempts": 1, "mode": "standard"},
                      request_checksum_calculation="when_required", response_checksum_validation="when_required"),
    )


def make_bucket(admin, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    admin.create_bucket(Bucket=name)
    return name


def check_bucket(admin, bucket: str, ds: DataSet) -> str:
    """'' when the bucket holds exactly the data set, else what is wrong."""
    count = size = 0
    for page in admin.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", ()):
            count += 1
            size += obj["Size"]
    if (count, size) != (ds.count, ds.total):
        return f"BUCKET HOLDS {count} objects / {size} bytes, expected {ds.count} / {ds.total}"
    return ""


# -- the bare loop -------------------------------------------------------------------------------
def run_bare(moto: common.Moto, admin, ds: DataSet, threads: int) -> Result:
    bucket = make_bucket(admin, "bare")
    common.wait_quiet(QUIET_WAIT)
    snap0 = common.snapshot()
    b0, m0, c0, t0 = common.machine_busy(), moto.cpu(), time.process_time(), time.perf_counter()
    s3 = client(moto.endpoint_url, max(threads, 10))

    def put(rel: str) -> None:
        with open(ds.path / rel, "rb") as f:
            s3.put_object(Bucket=bucket, Key=rel, Body=f, ContentLength=os.fstat(f.fileno()).st_size)

    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(put, list_files(ds.path)):
            pass
    wall, cpu, m1, b1 = time.perf_counter() - t0, time.process_time() - c0, moto.cpu(), common.machine_busy()
    s3.close()
    others = common.top_others(snap0, common.snapshot(), {os.getpid(), *common.tree_pids(moto.proc.pid)})
    note = check_bucket(admin, bucket, ds) + (f" [others: {others}]" if others else "")
    return Result("bare", ds.count, ds.total, wall, cpu, m1 - m0, note, other_cpu=(b1 - b0) - cpu - (m1 - m0))


# -- the product ---------------------------------------------------------------------------------
def run_product(moto: common.Moto, admin, ds: DataSet, args, work: Path) -> Result:
    run_dir = Path(tempfile.mkdtemp(prefix=f"product-{ds.name}-", dir=work))
    db = common.FreshDatabase(args.database_url, run_dir, keep=args.keep_db).create()
    cluster = None
    try:
        db.migrate(run_dir / "migrate.log")
        bucket = make_bucket(admin, "product")
        cfg = run_dir / "cfg.json"
        cfg.write_text(json.dumps({
            "project": f"bench-{ds.name}",
            "source_dir": str(ds.path),
            "destination": {"type": "s3", "bucket": bucket, "endpoint_url": moto.endpoint_url, "region": REGION},
            "upload_workers": args.upload_workers,
            "upload_tasks": args.upload_tasks,
        }))
        env = db.env(Q_WORKERS=str(args.q_workers or args.upload_tasks + 1), LOG_LEVEL="INFO")
        cluster_log = run_dir / "qcluster.log"
        cluster = common.spawn([PYTHON, MANAGE, "qcluster"], env=env, cwd=REPO, log=cluster_log)
        common.wait_for(lambda: _cluster_up(cluster, cluster_log), 60, "qcluster to report running")
        time.sleep(args.settle)  # workers forked, first broker polls done
        idle0, t_idle = cluster_cpu(cluster), time.perf_counter()
        time.sleep(args.settle)
        idle_rate = (cluster_cpu(cluster) - idle0) / (time.perf_counter() - t_idle)

        spy = None
        if args.py_spy:
            # Sampling profile of the cluster's processes during the upload (figures of such a run are
            # not representative: the sampler takes CPU of its own on these 2 cores).
            out = Path(args.py_spy) / f"{ds.name}-{db.kind}.txt"
            spy = common.spawn([str(Path(PYTHON).parent / "py-spy"), "record", "--pid", str(cluster.pid),
                                "--subprocesses", "--nonblocking", "--threads", "--rate", "200",
                                "--format", "raw", "--output", str(out)], log=run_dir / "py-spy.log")
            time.sleep(1.0)
        up_log = run_dir / "upload.log"
        if spy is None:  # the sampler itself keeps the machine busy
            common.wait_quiet(QUIET_WAIT)
        snap0 = common.snapshot()
        b0, m0, q0, ch0 = common.machine_busy(), moto.cpu(), cluster_cpu(cluster), common.children_cpu()
        s0, t0, epoch0 = time.process_time(), time.perf_counter(), time.time()
        with open(up_log, "wb") as out:
            upload = subprocess.Popen(
                [PYTHON, MANAGE, "upload", "--config", str(cfg), "--no-progress"],
                env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )
            common._children.append(upload)
            code = upload.wait()
            common._children.remove(upload)
        wall = time.perf_counter() - t0
        ours = {os.getpid(), *common.tree_pids(moto.proc.pid), *common.tree_pids(cluster.pid)}
        others = common.top_others(snap0, common.snapshot(), ours)
        q1, ch1, m1, s1, b1 = (cluster_cpu(cluster), common.children_cpu(), moto.cpu(), time.process_time(),
                               common.machine_busy())
        if spy is not None:
            common.stop(spy, grace=20, sig=signal.SIGINT)  # SIGINT: py-spy writes its output
        cpu = (q1 - q0) + (ch1 - ch0)
        note = f"(upload cmd {ch1 - ch0:.2f} s + cluster {q1 - q0:.2f} s, of which idle ~{idle_rate * wall:.2f} s)"
        note += "\n           timeline: " + timeline(epoch0, epoch0 + wall, up_log, cluster_log)
        if code != 0:
            note += f" UPLOAD EXIT {code}: {up_log.read_text()[-2000:]}"
        problem = check_bucket(admin, bucket, ds)
        if problem:
            note += " " + problem
        if args.keep_logs:
            print(f"    logs: {run_dir}", flush=True)
        other = (b1 - b0) - cpu - (m1 - m0) - (s1 - s0)
        if others:
            note += f" [others: {others}]"
        return Result("product", ds.count, ds.total, wall, cpu, m1 - m0, note, other_cpu=other)
    finally:
        if cluster is not None:
            common.stop(cluster, grace=15)
        db.drop()
        if not args.keep_logs:
            shutil.rmtree(run_dir, ignore_errors=True)


def timeline(start: float, end: float, up_log: Path, cluster_log: Path) -> str:
    """Where the product's wall time went, from the timestamps of the logs (ms resolution)."""
    import datetime
    import re

    marks: dict[str, float] = {}
    pattern = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?(Enqueued|processing session-\d+:(\w+)|"
                         r"Processed '[\w.]+' \(session-\d+:(\w+)\))")
    for name, path in (("cmd", up_log), ("cluster", cluster_log)):
        for line in path.read_text(errors="replace").splitlines():
            m = pattern.match(line)
            if not m:
                continue
            t = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if name == "cmd" and m.group(2) == "Enqueued":
                key = "scan queued"
            elif m.group(3):
                key = f"{m.group(3)} starts"
            elif m.group(4):
                key = f"{m.group(4)} ends"
            else:
                continue
            if start <= t <= end + 1:
                marks.setdefault(key, t) if "starts" in key or "queued" in key else marks.__setitem__(key, t)
    order = ["scan queued", "scan starts", "upload starts", "scan ends", "upload ends"]
    parts, last = [], start
    for key in sorted((k for k in order if k in marks), key=lambda k: marks[k]):
        parts.append(f"{key} +{marks[key] - start:.2f}")
        last = marks[key]
    parts.append(f"command exits +{end - start:.2f} ({end - last:.2f} after the last task)")
    return ", ".join(parts)


def cluster_cpu(cluster: subprocess.Popen) -> float:
    return common.tree_cpu(cluster.pid)


def _cluster_up(cluster: subprocess.Popen, log: Path) -> bool:
    if cluster.poll() is not None:
        raise RuntimeError(f"qcluster exited with {cluster.returncode}:\n{log.read_text()[-3000:]}")
    return b"running." in log.read_bytes()


# -- main ---------------------------------------------------------------------------------------
def summarize(ds: DataSet, product: list[Result], bare: list[Result]) -> dict:
    """Best (lowest) wall and best CPU per file of each side: other users' jobs on a shared machine
    only ever add to either."""
    pw, bw = min(r.wall for r in product), min(r.wall for r in bare)
    pc, bc = min(r.cpu / r.files for r in product), min(r.cpu / r.files for r in bare)
    wall_ratio, cpu_ratio = pw / bw, pc / bc
    ok_w, ok_c = wall_ratio <= WALL_TARGET, cpu_ratio <= CPU_TARGET
    print(f"  product/bare (best of {len(product)} and {len(bare)}): wall {wall_ratio:.2f}x (target <= {WALL_TARGET}: "
          f"{'met' if ok_w else 'NOT met'}), CPU per file {cpu_ratio:.2f}x (target <= {CPU_TARGET}: "
          f"{'met' if ok_c else 'NOT met'})", flush=True)
    return {"set": ds.label(), "product": product, "bare": bare, "wall_ratio": wall_ratio, "cpu_ratio": cpu_ratio,
            "best": {"product": (pw, pc), "bare": (bw, bc)}}


def main() -> None:
    global QUIET_WAIT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/tmp/uploader-bench", help="where generated files are cached")
    parser.add_argument("--database-url", help="postgres://user@host:port/name: created fresh, dropped after "
                                                "(default: a fresh SQLite file)")
    parser.add_argument("--sets", default="small,large", help="small, large or both")
    parser.add_argument("--small-count", type=int, default=10_000)
    parser.add_argument("--small-size", type=int, default=4096)
    parser.add_argument("--large-count", type=int, default=8)
    parser.add_argument("--large-size-mib", type=int, default=64)
    parser.add_argument("--upload-workers", type=int, default=15, help="project upload_workers; bare threads")
    parser.add_argument("--upload-tasks", type=int, default=1, help="project upload_tasks (concurrency = tasks x workers)")
    parser.add_argument("--q-workers", type=int, default=0, help="qcluster workers (default upload_tasks + 1)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each side; the best wall of each is compared")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds to let the cluster settle before a run")
    parser.add_argument("--quiet-wait", type=float, default=QUIET_WAIT,
                        help="before each run, wait up to this many seconds for the machine to be idle (0: never)")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the PostgreSQL database")
    parser.add_argument("--py-spy", metavar="DIR", help="record the cluster with py-spy (collapsed stacks) into DIR")
    parser.add_argument("--keep-logs", action="store_true", help="keep the per-run folder (logs, SQLite file)")
    args = parser.parse_args()

    common.install_cleanup()
    QUIET_WAIT = args.quiet_wait
    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    sets = []
    for name in args.sets.split(","):
        if name == "small":
            sets.append(DataSet("small", args.small_count, args.small_size, 100))
        elif name == "large":
            sets.append(DataSet("large", args.large_count, args.large_size_mib * MiB, 1))
        else:
            parser.error(f"unknown set {name!r}")
    for ds in sets:
        ensure_data(data, ds)

    work = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    moto = common.Moto(work / "moto.log")
    summaries = []
    try:
        os.environ.update(common.aws_env())
        moto.start()

        admin = client(moto.endpoint_url, 10)
        db = "PostgreSQL " + args.database_url if args.database_url else "SQLite (fresh file)"
        print(f"{common.machine()}\nmoto on {moto.endpoint_url}; product DB: {db}; upload_workers="
              f"{args.upload_workers} x upload_tasks={args.upload_tasks}; bare: {args.upload_workers} threads",
              flush=True)
        for ds in sets:
            print(f"\n== {ds.label()} ({ds.total / 1e6:.0f} MB) ==", flush=True)
            product, bare = [], []
            for i in range(args.repeat):
                # Alternate the order so neither side always meets a fresher moto.
                order = ("bare", "product") if i % 2 == 0 else ("product", "bare")
                for side in order:
                    if side == "bare":
                        r = run_bare(moto, admin, ds, args.upload_workers)
                        bare.append(r)
                    else:
                        r = run_product(moto, admin, ds, args, work)
                        product.append(r)
                    print(r.line(), flush=True)
            summaries.append(summarize(ds, product, bare))
        print("\n| data set | side | wall s | files/s | MB/s | client CPU s / 1000 files | moto CPU s | other CPU s |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for s in summaries:
            for side in ("product", "bare"):
                for r in s[side]:
                    print(f"| {s['set']} | {side} | {r.wall:.2f} | {r.files / r.wall:.1f} | "
                          f"{r.nbytes / r.wall / 1e6:.1f} | {r.cpu / r.files * 1000:.2f} | {r.moto_cpu:.2f} | "
                          f"{r.other_cpu:.1f} |")
            print(f"| {s['set']} | **product/bare (best)** | **{s['wall_ratio']:.2f}x** | | | "
                  f"**{s['cpu_ratio']:.2f}x** | | |")
    finally:
        moto.stop()
        common.stop_all()
        if args.keep_logs:
            print(f"logs kept under {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted: every process started here was stopped")
