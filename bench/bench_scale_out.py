"""Benchmark: one sync spread over 1, 2 and 4 django-q2 clusters sharing Redis and PostgreSQL.

Each cluster is a separate `manage.py qcluster` with its own environment, working directory,
DATA_DIR, HOME and TMPDIR, as if on a machine of its own; all of them name the same
DATABASE_URL, REDIS_URL and Q_CLUSTER_NAME (a fresh name per run, so other users of the same
Redis and earlier runs see none of our keys, and we none of theirs). One `manage.py upload
--config` from a directory of its own (the "web machine") starts the session and follows it to
the end; the clusters share its scan and upload tasks through the Redis broker. The project
asks for more upload tasks than the largest run has worker processes, so every cluster gets work.

The sink is a local destination on tmpfs (--sink, default /dev/shm): a file lands there with a
rename out of the destination's temporary folder, so the write is cheap and never the bottleneck,
and every completed upload is seen by an inotify watch on that folder (IN_MOVED_FROM; the
temporary name starts with a hash of the key). Files uploaded twice are counted from those
events (per key), and checked again from the database: rows uploaded, catalog entries, rows
tried more than once.

Run from the repository root (PostgreSQL and Redis required; the database is dropped and made
again, never point it at one you want to keep):
    .venv/bin/python bench/bench_scale_out.py
    .venv/bin/python bench/bench_scale_out.py --files 20000 --clusters 1,2,4 --repeat 2 \\
        --database-url postgres://postgres@127.0.0.1:5432/bench_scale_out --redis-url redis://127.0.0.1:6379/0

Figures per run: files/s over the session (its own start to end, scan included: the command's
summary), files/s of the upload phase alone (first to last `uploaded_at`), the command's wall,
CPU of every cluster (and which clusters ran upload tasks), PostgreSQL's and the rest of the
machine's CPU meanwhile, and the duplicate count. With --repeat 2 the order of the cluster counts
is reversed in the second round, so a change in the machine's load hits both ends.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import hashlib
import json
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402
from common import PYTHON  # noqa: E402

SUMMARY = re.compile(r"(\d+) found, (\d+) uploaded, (\d+) skipped, (\d+) failed.* in ([\d.]+)s")
TEMP_FOLDER = ".uploader-tmp"  # projects.destinations.base.TEMP_FOLDER
QUIET_WAIT = 30


# -- the sink's witness -----------------------------------------------------------------------------
class MoveWatch:
    """Counts the renames out of the destination's temporary folder, by the key hash that starts
    each temporary name (projects.destinations.base.temp_prefix): one per completed upload."""

    IN_MOVED_FROM, IN_Q_OVERFLOW = 0x40, 0x4000

    def __init__(self, folder: Path):
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, os.fsencode(folder), self.IN_MOVED_FROM) < 0:
            raise OSError(ctypes.get_errno(), f"inotify on {folder}")
        self.moves: collections.Counter[str] = collections.Counter()
        self.overflowed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if not ready:
                if self._stop.is_set():
                    return
                continue
            data = os.read(self.fd, 1 << 20)
            offset = 0
            while offset < len(data):
                _wd, mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16:offset + 16 + length].rstrip(b"\0").decode()
                offset += 16 + length
                if mask & self.IN_Q_OVERFLOW:
                    self.overflowed = True
                elif mask & self.IN_MOVED_FROM:
                    self.moves[name[:16]] += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        os.close(self.fd)


def key_hash(key: str) -> str:
    return hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]


# -- data ----------------------------------------------------------------------------------------
def ensure_tree(root: Path, files: int, size: int) -> Path:
    def fill(tree: Path) -> None:
        for i in range(files):
            folder = tree / f"d{i // 1000:03d}"
            if i % 1000 == 0:
                folder.mkdir(parents=True)
            (folder / f"f{i:07d}.bin").write_bytes(os.urandom(size))

    return common.made_once(root / f"scale-out-{files}x{size}", fill)


# -- one run --------------------------------------------------------------------------------------
@dataclass
class Run:
    clusters: int
    files: int
    session_seconds: float
    upload_seconds: float
    command_wall: float
    cluster_cpu: list[float]
    upload_tasks_by_cluster: list[int]
    postgres_cpu: float
    other_cpu: float
    uploaded_rows: int
    catalog_entries: int
    retried_rows: int
    sink_files: int
    moves: int
    twice: int
    overflowed: bool
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.files / self.session_seconds

    @property
    def upload_rate(self) -> float:
        return self.uploaded_rows / self.upload_seconds if self.upload_seconds else 0.0

    def line(self) -> str:
        cpu = " + ".join(f"{c:.1f}" for c in self.cluster_cpu)
        return (f"  {self.clusters} cluster(s): {self.files} files, session {self.session_seconds:6.2f} s = "
                f"{self.rate:7.1f} files/s; upload phase {self.upload_rate:7.1f} files/s; command {self.command_wall:6.2f} s\n"
                f"      cluster CPU {cpu} s (upload tasks run: {self.upload_tasks_by_cluster}); PostgreSQL "
                f"{self.postgres_cpu:.1f} s; rest of the machine {self.other_cpu:.1f} s\n"
                f"      uploaded twice: {self.twice} (sink: {self.sink_files} files, {self.moves} completed writes"
                f"{', INOTIFY OVERFLOWED' if self.overflowed else ''}; rows: {self.uploaded_rows} uploaded, "
                f"{self.retried_rows} tried more than once; catalog: {self.catalog_entries} entries)"
                + "".join(f"\n      {note}" for note in self.notes))


class Bench:
    def __init__(self, args, work: Path, tree: Path):
        self.args, self.work, self.tree = args, work, tree
        self.db = common.FreshDatabase(args.database_url, work).create()
        self.db.migrate(work / "migrate.log")
        self.tasks = max(int(c) for c in args.clusters.split(",")) * args.workers
        self.sink_root = Path(tempfile.mkdtemp(prefix="bench-scale-out-", dir=args.sink))

    def env(self, home: Path, cluster: str, **extra: str) -> dict[str, str]:
        for sub in ("data", "tmp"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        return self.db.env(REDIS_URL=self.args.redis_url, Q_CLUSTER_NAME=cluster, Q_WORKERS=str(self.args.workers),
                           DATA_DIR=str(home / "data"), TMPDIR=str(home / "tmp"), HOME=str(home), LOG_LEVEL="INFO",
                           **extra)

    def run(self, clusters: int, index: int) -> Run:
        name = f"scale-out-{os.getpid()}-{index}"
        sink = self.sink_root / name
        (sink / TEMP_FOLDER).mkdir(parents=True)
        watch = MoveWatch(sink / TEMP_FOLDER)
        machines = [self.work / f"{name}-machine{k}" for k in range(clusters)]
        procs = []
        try:
            for home in machines:
                procs.append(common.spawn([PYTHON, common.MANAGE, "qcluster"], env=self.env(home, name), cwd=home,
                                          log=home / "qcluster.log"))
            common.wait_for(lambda: all(b"running." in (h / "qcluster.log").read_bytes() for h in machines), 90,
                            f"{clusters} qclusters to report running")
            time.sleep(1.0)  # workers forked, first broker polls done
            return self._measure(name, clusters, sink, watch, machines, procs)
        finally:
            for proc in procs:
                common.stop(proc, grace=30)
            watch.close()
            self._forget(name)
            shutil.rmtree(sink, ignore_errors=True)

    def _measure(self, name: str, clusters: int, sink: Path, watch: MoveWatch, machines: list[Path],
                 procs: list[subprocess.Popen]) -> Run:
        web = self.work / f"{name}-web"
        cfg = web / "project.json"
        web.mkdir()
        cfg.write_text(json.dumps({
            "project": name, "source_dir": str(self.tree),
            "destination": {"type": "local", "path": str(sink)},
            "upload_workers": self.args.upload_workers, "upload_tasks": self.tasks,
        }))
        common.wait_quiet(QUIET_WAIT)
        snap0 = common.snapshot()
        cpu0 = [common.tree_cpu(p.pid) for p in procs]
        busy0, children0, t0 = common.machine_busy(), common.children_cpu(), time.perf_counter()
        log = web / "upload.log"
        with open(log, "wb") as out:
            code = subprocess.run([PYTHON, common.MANAGE, "upload", "--config", str(cfg), "--no-progress"],
                                  env=self.env(web, name), cwd=web, stdout=out, stderr=subprocess.STDOUT).returncode
        wall = time.perf_counter() - t0
        cpu = [common.tree_cpu(p.pid) - c for p, c in zip(procs, cpu0)]
        busy, children = common.machine_busy() - busy0, common.children_cpu() - children0
        snap1 = common.snapshot()
        database = self.args.database_url.rsplit("/", 1)[-1]
        postgres = sum(after[1] - snap0.get(pid, (after[0], 0.0))[1] for pid, after in snap1.items()
                       if after[0].startswith("postgres:") and f" {database} " in after[0])
        other = max(0.0, busy - sum(cpu) - children - postgres)
        text = log.read_text()
        match = SUMMARY.search(text)
        if code != 0 or match is None:
            raise RuntimeError(f"upload with {clusters} clusters: exit {code}\n{text[-3000:]}")
        found, uploaded, _skipped, failed, seconds = match.groups()
        facts = self._facts(name, web)
        time.sleep(0.5)  # the last inotify events read
        sink_files = sum(len(files) for folder, _, files in os.walk(sink) if TEMP_FOLDER not in folder)
        keys = {str(p.relative_to(self.tree)) for p in self.tree.rglob("*.bin")}
        by_key = {key_hash(k): 0 for k in keys}
        for h, n in watch.moves.items():
            by_key[h] = by_key.get(h, 0) + n
        run = Run(clusters=clusters, files=int(found), session_seconds=float(seconds),
                  upload_seconds=facts["upload_seconds"], command_wall=wall, cluster_cpu=cpu,
                  upload_tasks_by_cluster=[(h / "qcluster.log").read_text().count("Processed 'sessions_app.tasks.upload'")
                                           for h in machines],
                  postgres_cpu=postgres, other_cpu=other, uploaded_rows=facts["uploaded"],
                  catalog_entries=facts["catalog"], retried_rows=facts["retried"], sink_files=sink_files,
                  moves=sum(watch.moves.values()), twice=sum(n - 1 for n in by_key.values() if n > 1),
                  overflowed=watch.overflowed)
        if int(failed) or int(uploaded) != len(keys):
            run.notes.append(f"NOT ALL UPLOADED: {uploaded} of {len(keys)}, {failed} failed")
        missing = sum(1 for n in by_key.values() if n == 0)
        if missing:
            run.notes.append(f"{missing} files never seen arriving at the sink")
        return run

    def _facts(self, name: str, home: Path) -> dict:
        code = (
            "import json\n"
            "from django.db.models import Max, Min\n"
            "from sessions_app.models import CatalogEntry, FileStatus, FileUpload, SyncSession\n"
            f"s = SyncSession.objects.get(project__name={name!r})\n"
            "up = s.files.filter(status=FileStatus.UPLOADED)\n"
            "span = up.aggregate(a=Min('uploaded_at'), b=Max('uploaded_at'))\n"
            "print(json.dumps({'uploaded': up.count(), 'retried': s.files.filter(attempts__gt=1).count(),\n"
            "    'catalog': CatalogEntry.objects.filter(catalog__project=s.project).count(),\n"
            "    'upload_seconds': (span['b'] - span['a']).total_seconds() if span['a'] else 0.0}))\n"
        )
        done = subprocess.run([PYTHON, common.MANAGE, "shell", "-v", "0", "-c", code], env=self.env(home, name),
                              cwd=home, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-3000:])
        return json.loads(done.stdout.strip().splitlines()[-1])

    def _forget(self, name: str) -> None:
        """Our run's keys out of the shared Redis: the broker's list, the clusters' stats, the cache."""
        import redis

        r = redis.Redis.from_url(self.args.redis_url)
        keys = [k for pattern in (f"django_q:{name}:*", f"{name}:*") for k in r.scan_iter(match=pattern, count=1000)]
        if keys:
            r.delete(*keys)

    def close(self) -> None:
        self.db.drop()
        shutil.rmtree(self.sink_root, ignore_errors=True)


def report(runs: list[Run]) -> None:
    print("\n| clusters | files/s, session (runs) | files/s, upload phase (runs) | × 1 cluster (best session rate) | "
          "cluster CPU s (best run) | uploaded twice |")
    print("|---:|---|---|---:|---:|---:|")
    base = max((r.rate for r in runs if r.clusters == min(x.clusters for x in runs)), default=0.0)
    for n in sorted({r.clusters for r in runs}):
        mine = [r for r in runs if r.clusters == n]
        best = max(mine, key=lambda r: r.rate)
        print(f"| {n} | {', '.join(f'{r.rate:.0f}' for r in mine)} | {', '.join(f'{r.upload_rate:.0f}' for r in mine)} | "
              f"{best.rate / base:.2f} | {sum(best.cluster_cpu):.1f} | {sum(r.twice for r in mine)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--size", type=int, default=4096, help="bytes per file")
    parser.add_argument("--clusters", default="1,2,4")
    parser.add_argument("--workers", type=int, default=1, help="Q_WORKERS of each cluster (worker processes)")
    parser.add_argument("--upload-workers", type=int, default=8, help="transfers in flight per upload task")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; every other one in reverse order")
    parser.add_argument("--data", default="/tmp/uploader-bench", help="where the source files are cached")
    parser.add_argument("--sink", default="/dev/shm", help="tmpfs folder the local destination writes under")
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/bench_scale_out",
                        help="PostgreSQL database, dropped and created again")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()

    common.install_cleanup()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-out-"))
    tree = ensure_tree(Path(args.data), args.files, args.size)
    counts = [int(c) for c in args.clusters.split(",")]
    print(f"{common.machine()}\n{args.files} files of {args.size} B; clusters of {args.workers} worker process(es), "
          f"{args.upload_workers} transfers each; sink: local destination under {args.sink}; "
          f"PostgreSQL {args.database_url}; Redis {args.redis_url}; load average {os.getloadavg()[0]:.1f}", flush=True)
    bench = Bench(args, work, tree)
    runs: list[Run] = []
    try:
        for r in range(args.repeat):
            for n in (counts if r % 2 == 0 else list(reversed(counts))):
                runs.append(bench.run(n, len(runs)))
                print(runs[-1].line(), f"(load average {os.getloadavg()[0]:.1f})", flush=True)
        report(runs)
    finally:
        bench.close()
        common.finish(work, args.keep_logs)


if __name__ == "__main__":
    main()
