"""Benchmark: the product (upload command + a real qcluster) against bare boto3 programs, all on
moto's standalone S3 server on loopback.

Run from the repository root:
    .venv/bin/python bench/bench_s3.py
    .venv/bin/python bench/bench_s3.py --database-url postgres://postgres@127.0.0.1:5432/bench
    .venv/bin/python bench/bench_s3.py --sets small --repeat 2

Per data set (10,000 x 4 KiB and 8 x 64 MiB by default, generated once under --data):
  product  a fresh database, `manage.py migrate`, `manage.py qcluster` (Q_WORKERS = upload_tasks + 1:
           one worker scans, the others upload) and `manage.py upload --config cfg.json --no-progress`
           with upload_workers=15 to a fresh bucket. Wall = the upload command's wall time; client CPU =
           CPU of the qcluster process tree + the upload command during that time.
  bare     (both sets) a program of its own (a child process: start-up counted as the product's is):
           ThreadPoolExecutor(15) of put_object on one shared client (one attempt, checksums when
           required), to another fresh bucket.
  upload_file  (large set) a program of its own: boto3's upload_file machinery (one transfer manager,
           max_concurrency=15, boto3's default 8 MiB parts), to another fresh bucket: the peer of the
           large-file target.
Targets (issue 15): small files: product/bare wall <= 1.1 x, whole-process client CPU <= 0.8 x;
large files: product/upload_file wall <= 1.1 x, CPU <= 1.3 x.
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
from common import PYTHON, REGION, REPO  # noqa: E402

MiB = 1024 * 1024
WALL_TARGET = 1.1
CPU_TARGET = {"small": 0.8, "large": 1.3}
PEER = {"small": "bare", "large": "upload_file"}  # the side each set's targets compare with
QUIET_WAIT = 120.0  # --quiet-wait
# botocore as a plain `pip install boto3` has it (no CRT signing), for the peers and for --before's
# product as for ours (uploader_site sets the same).
NO_CRT = {**os.environ, "BOTO_DISABLE_CRT": "true"}


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


# -- the bare programs ---------------------------------------------------------------------------
def run_bare(moto: common.Moto, admin, ds: DataSet, threads: int, mode: str = "bare") -> Result:
    """A bare boto3 program in a child process: whole-process wall and CPU (interpreter start-up and
    `import boto3` included, as the product's command start-up is), and its loop's own CPU."""
    bucket = make_bucket(admin, mode.replace("_", "-"))
    common.wait_quiet(QUIET_WAIT)
    snap0 = common.snapshot()
    b0, m0, ch0, t0 = common.machine_busy(), moto.cpu(), common.children_cpu(), time.perf_counter()
    out = subprocess.run([PYTHON, __file__, "_bare", mode, moto.endpoint_url, bucket, str(ds.path), str(threads)],
                         env=common.aws_env(NO_CRT), capture_output=True, text=True)
    wall, cpu, m1, b1 = time.perf_counter() - t0, common.children_cpu() - ch0, moto.cpu(), common.machine_busy()
    if out.returncode:
        raise RuntimeError(f"bare program failed: {out.stderr[-2000:]}")
    loop = json.loads(out.stdout)
    others = common.top_others(snap0, common.snapshot(), {os.getpid(), *common.tree_pids(moto.proc.pid)})
    note = (f"(loop alone: {loop['wall']:.2f} s, CPU {loop['cpu']:.2f} s) " + check_bucket(admin, bucket, ds)
            + (f" [others: {others}]" if others else ""))
    return Result(mode, ds.count, ds.total, wall, cpu, m1 - m0, note, other_cpu=(b1 - b0) - cpu - (m1 - m0))


def bare_program(mode: str, endpoint_url: str, bucket: str, root: str, threads: int) -> None:
    """The peer as a user would write it; prints its loop's wall and CPU as JSON."""
    t0, c0 = time.perf_counter(), time.process_time()
    s3 = client(endpoint_url, max(threads, 10))
    files = list_files(Path(root))
    if mode == "upload_file":
        from boto3.s3.transfer import TransferConfig, create_transfer_manager

        with create_transfer_manager(s3, TransferConfig(max_concurrency=threads)) as manager:
            for future in [manager.upload(os.path.join(root, rel), bucket, rel) for rel in files]:
                future.result()
    else:
        def put(rel: str) -> None:
            with open(os.path.join(root, rel), "rb") as f:
                s3.put_object(Bucket=bucket, Key=rel, Body=f, ContentLength=os.fstat(f.fileno()).st_size)

        with ThreadPoolExecutor(threads) as pool:
            for _ in pool.map(put, files):
                pass
    s3.close()
    print(json.dumps({"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0}))


# -- the product ---------------------------------------------------------------------------------
def run_product(moto: common.Moto, admin, ds: DataSet, args, work: Path, checkout: Path = REPO,
                name: str = "product") -> Result:
    """The product of `checkout` (this one, or --before's): its manage.py, run from its folder."""
    manage = str(checkout / "manage.py")
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
        env = db.env(Q_WORKERS=str(args.q_workers or args.upload_tasks + 1), LOG_LEVEL="INFO", BOTO_DISABLE_CRT="true")
        cluster_log = run_dir / "qcluster.log"
        cluster = common.spawn([PYTHON, manage, "qcluster"], env=env, cwd=checkout, log=cluster_log)
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
                [PYTHON, manage, "upload", "--config", str(cfg), "--no-progress"],
                env=env, cwd=checkout, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
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
        return Result(name, ds.count, ds.total, wall, cpu, m1 - m0, note, other_cpu=other)
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
def summarize(ds: DataSet, runs: dict[str, list[Result]]) -> dict:
    """Best (lowest) wall and best CPU per file of each side: other users' jobs on a shared machine
    only ever add to either. The targets compare the product with the set's peer."""
    best = {side: (min(r.wall for r in rs), min(r.cpu / r.files for r in rs)) for side, rs in runs.items()}
    peer, cpu_target = PEER[ds.name], CPU_TARGET[ds.name]
    pairs = [("product", side) for side in runs if side != "product"]
    if "before" in runs:
        pairs += [("before", side) for side in runs if side not in ("product", "before")]
    ratios = {f"{a}/{b}": (best[a][0] / best[b][0], best[a][1] / best[b][1]) for a, b in pairs}
    for pair, (wall_ratio, cpu_ratio) in ratios.items():
        a, b = pair.split("/")
        line = f"  {pair} (best of {len(runs[a])} and {len(runs[b])}): wall {wall_ratio:.2f}x, CPU {cpu_ratio:.2f}x"
        if pair == f"product/{peer}":
            line += (f"  (targets: wall <= {WALL_TARGET}: {'met' if wall_ratio <= WALL_TARGET else 'NOT met'}; "
                     f"CPU <= {cpu_target}: {'met' if cpu_ratio <= cpu_target else 'NOT met'})")
        print(line, flush=True)
    return {"set": ds.label(), "runs": runs, "ratios": ratios, "peer": peer}


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
    parser.add_argument("--before", metavar="PATH", help="also run the product of this checkout (e.g. the code "
                        "before a change, from `git archive`) as a side of its own, in turn with the others")
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
        print(f"{common.machine()}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}\nmoto on {moto.endpoint_url}; product DB: {db}; upload_workers="
              f"{args.upload_workers} x upload_tasks={args.upload_tasks}; bare: {args.upload_workers} threads",
              flush=True)
        for ds in sets:
            print(f"\n== {ds.label()} ({ds.total / 1e6:.0f} MB) ==", flush=True)
            sides = ["bare", "product"] + (["upload_file"] if ds.name == "large" else []) + (
                ["before"] if args.before else [])
            runs: dict[str, list[Result]] = {side: [] for side in sides}
            for i in range(args.repeat):
                # Rotate the order so that no side always meets a fresher moto.
                for side in sides[i % len(sides):] + sides[:i % len(sides)]:
                    if side == "product":
                        r = run_product(moto, admin, ds, args, work)
                    elif side == "before":
                        r = run_product(moto, admin, ds, args, work, Path(args.before).resolve(), "before")
                    else:
                        r = run_bare(moto, admin, ds, args.upload_workers, side)
                    runs[side].append(r)
                    print(r.line(), flush=True)
            summaries.append(summarize(ds, runs))
        print("\n| data set | side | wall s | files/s | MB/s | client CPU s / 1000 files | moto CPU s | other CPU s |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for s in summaries:
            for side, rs in s["runs"].items():
                for r in rs:
                    print(f"| {s['set']} | {side} | {r.wall:.2f} | {r.files / r.wall:.1f} | "
                          f"{r.nbytes / r.wall / 1e6:.1f} | {r.cpu / r.files * 1000:.2f} | {r.moto_cpu:.2f} | "
                          f"{r.other_cpu:.1f} |")
            for pair, (wall_ratio, cpu_ratio) in s["ratios"].items():
                mark = " (the targets)" if pair == f"product/{s['peer']}" else ""
                print(f"| {s['set']} | **{pair} (best){mark}** | **{wall_ratio:.2f}x** | | | "
                      f"**{cpu_ratio:.2f}x** | | |")
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        moto.stop()
        common.finish(work, args.keep_logs)


if __name__ == "__main__":
    if sys.argv[1:2] == ["_bare"]:  # the bare program, run as a child by run_bare()
        bare_program(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]))
        sys.exit()
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted: every process started here was stopped")
