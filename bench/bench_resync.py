"""First sync and no-op re-sync of a tree of small files, side by side with the tools a user would
pick instead, and what each sync adds to the database.

    python bench/bench_resync.py --files 200000 [--database-url postgres://postgres@127.0.0.1:5432/bench]
                                 [--destinations local,s3] [--repeat 2]

Per destination, in one run, alternating sides:
  local: `upload --sync` into a folder  vs  `rsync -a SRC/ DST/`      (first sync, then no-op re-syncs)
  s3:    `upload --sync` into moto      vs  `aws s3 sync SRC s3://…`  (first sync, then no-op re-syncs)
         (--s3-peer-first no: `aws s3 sync` is not timed for a first sync of its own; its no-ops run
         against the prefix the product filled, the same objects, which it finds up to date. Through
         moto our first sync of 200,000 files took 11–13 minutes on a 2-core machine.)
Each no-op re-sync reports wall time, database growth (bytes, PostgreSQL `pg_database_size` or the
SQLite file), file rows added, and for S3 the LIST and PUT requests counted by a loopback proxy
in front of moto. The first sync reports the database bytes it added per file (the session's rows
and, from the catalog on, the catalog's entries). The product runs with `--sync` (scan, plan and
upload in the command's process, no cluster): what a user runs from cron. `--product PATH` runs
another checkout's product (e.g. the code before a change) with the same script.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from tests.servers.s3 import FaultProxy  # noqa: E402  (a counting proxy; it injects no fault unless told)

PYTHON = common.PYTHON


@dataclass
class Side:
    name: str
    first: float = 0.0
    first_cpu: float = 0.0  # CPU of the process tree (children), not of servers (PostgreSQL, moto)
    first_bytes: int = 0  # database bytes the first sync added
    noop: list[float] = field(default_factory=list)
    noop_cpu: list[float] = field(default_factory=list)
    growth: list[int] = field(default_factory=list)  # database bytes added per no-op
    rows: list[int] = field(default_factory=list)  # file rows added per no-op
    lists: list[int] = field(default_factory=list)  # LIST requests per no-op
    puts: list[int] = field(default_factory=list)  # PUT requests per no-op
    firsts: list[tuple[float, float]] = field(default_factory=list)  # every first sync: wall, CPU

    def add(self, run: tuple[float, float]) -> None:
        self.noop.append(run[0])
        self.noop_cpu.append(run[1])


def ensure_tree(root: Path, files: int, size: int) -> Path:
    tree = root / f"tree-{files}x{size}"
    marker = tree / ".complete"
    if marker.exists():
        return tree
    shutil.rmtree(tree, ignore_errors=True)
    body = os.urandom(size)
    for i in range(files):
        d = tree / f"d{i // 1000:04d}"
        if i % 1000 == 0:
            d.mkdir(parents=True)
        (d / f"f{i:07d}.bin").write_bytes(body)
    marker.write_text("")
    return tree


def timed(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one run (CPU: the command and its children, e.g. find and sort)."""
    common.wait_quiet(QUIET_WAIT)
    t0, c0 = time.perf_counter(), common.children_cpu()
    with open(log, "ab") as out:
        rc = subprocess.run(cmd, env=env, cwd=common.PRODUCT, stdout=out, stderr=subprocess.STDOUT).returncode
    wall, cpu = time.perf_counter() - t0, common.children_cpu() - c0
    if rc != 0:
        raise RuntimeError(f"{cmd[:3]}… exited {rc}, see {log}")
    return wall, cpu


class Product:
    """The product on a fresh database, syncing SRC to one destination."""

    def __init__(self, db: common.FreshDatabase, tree: Path, destination: dict, work: Path, name: str):
        self.db, self.work = db, work
        self.config = work / f"{name}.json"
        self.config.write_text(json.dumps({"project": name, "source_dir": str(tree), "destination": destination,
                                           "upload_workers": WORKERS, "exclude": [".complete"]}))
        self.log = work / f"{name}.log"

    def sync(self) -> tuple[float, float]:
        cmd = [PYTHON, common.MANAGE, "upload", "--config", str(self.config), "--sync", "--no-progress"]
        return timed(cmd, self.db.env(), self.log)

    def db_bytes(self) -> int:
        return int(self._sql("size"))

    def file_rows(self) -> int:
        return int(self._sql("rows"))

    def _sql(self, what: str) -> str:
        code = (
            "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'uploader_site.settings'); "
            "django.setup(); from django.db import connection; from django.conf import settings\n"
            "if %r == 'rows':\n"
            "    with connection.cursor() as c: c.execute('SELECT COUNT(*) FROM sessions_app_fileupload'); "
            "print(c.fetchone()[0])\n"
            "elif connection.vendor == 'postgresql':\n"
            "    with connection.cursor() as c: c.execute('CHECKPOINT'); "
            "c.execute('SELECT pg_database_size(current_database())'); print(c.fetchone()[0])\n"
            "else:\n"
            "    print(os.path.getsize(settings.DATABASES['default']['NAME']))\n"
        ) % what
        return subprocess.run([PYTHON, "-c", code], env=self.db.env(), cwd=common.PRODUCT, capture_output=True, text=True,
                              check=True).stdout.strip().splitlines()[-1]


def run_local(tree: Path, args, work: Path) -> tuple[Side, Side]:
    ours, peer = Side("upload --sync"), Side("rsync -a")
    db = common.FreshDatabase(args.database_url, work).create()
    try:
        db.migrate(work / "migrate.log")
        firsts: list[tuple[float, float]] = []
        peer_firsts: list[tuple[float, float]] = []
        for i in range(args.first_repeat):  # each round a new destination folder and a new project
            product = Product(db, tree, {"type": "local", "path": str(work / f"dest-ours-{i}")}, work,
                              f"resync-local-{i}")
            rsync = ["rsync", "-a", "--exclude", ".complete", f"{tree}/", f"{work / f'dest-rsync-{i}'}/"]
            for who in (("peer", "ours") if i % 2 == 0 else ("ours", "peer")):
                if who == "peer":
                    peer_firsts.append(timed(rsync, os.environ.copy(), work / "rsync.log"))
                else:
                    size0 = product.db_bytes()
                    firsts.append(product.sync())
                    ours.first_bytes = ours.first_bytes or product.db_bytes() - size0
                if i < args.first_repeat - 1:  # the last round's copies stay for the no-op re-syncs
                    # Each copy goes once timed: every copy of the tree left in /dev/shm slowed the next
                    # ones of both sides (rsync alone: 6.8 / 6.4 / 11.6 / 19.4 s for the 1st..4th copy kept,
                    # 6.0–6.6 s each with the one before removed).
                    side = "rsync" if who == "peer" else "ours"
                    shutil.rmtree(work / f"dest-{side}-{i}", ignore_errors=True)
        ours.first, ours.first_cpu = min(firsts)
        peer.first, peer.first_cpu = min(peer_firsts)
        ours.firsts, peer.firsts = firsts, peer_firsts
        for i in range(args.repeat):
            for who in (("peer", "ours") if i % 2 == 0 else ("ours", "peer")):
                if who == "peer":
                    peer.add(timed(rsync, os.environ.copy(), work / "rsync.log"))
                else:
                    size0, rows0 = product.db_bytes(), product.file_rows()
                    ours.add(product.sync())
                    ours.growth.append(product.db_bytes() - size0)
                    ours.rows.append(product.file_rows() - rows0)
    finally:
        db.drop()
    return ours, peer


def run_s3(tree: Path, args, work: Path) -> tuple[Side, Side]:
    import boto3

    ours, peer = Side("upload --sync"), Side("aws s3 sync")
    moto = common.Moto(work / "moto.log").start()
    proxy = FaultProxy("127.0.0.1", moto.port)
    env = common.aws_env()
    admin = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name=common.REGION,
                         aws_access_key_id="testing", aws_secret_access_key="testing")
    for bucket in ("ours", "peer"):
        admin.create_bucket(Bucket=bucket)
    aws = ["aws", "s3", "sync", "--only-show-errors", "--exclude", ".complete", "--endpoint-url",
           proxy.endpoint_url, str(tree), f"s3://{'peer' if args.s3_peer_first else 'ours'}/data"]
    db = common.FreshDatabase(args.database_url, work).create()
    try:
        db.migrate(work / "migrate.log")
        product = Product(db, tree, {"type": "s3", "bucket": "ours", "prefix": "data",
                                     "endpoint_url": proxy.endpoint_url, "region": common.REGION}, work, "resync-s3")
        if args.s3_peer_first:
            peer.first, peer.first_cpu = timed(aws, env, work / "aws.log")
        size0 = product.db_bytes()
        ours.first, ours.first_cpu = product.sync()
        ours.first_bytes = product.db_bytes() - size0
        if not args.s3_peer_first:
            peer.first, peer.first_cpu = float("nan"), float("nan")  # not timed: the peer's no-ops use our prefix
        for i in range(args.repeat):
            for who in (("peer", "ours") if i % 2 == 0 else ("ours", "peer")):
                proxy.reset()
                if who == "peer":
                    peer.add(timed(aws, env, work / "aws.log"))
                    side = peer
                else:
                    size0, rows0 = product.db_bytes(), product.file_rows()
                    ours.add(product.sync())
                    ours.growth.append(product.db_bytes() - size0)
                    ours.rows.append(product.file_rows() - rows0)
                    side = ours
                side.lists.append(proxy.count("GET", "list-type=2"))
                side.puts.append(proxy.count("PUT"))
    finally:
        db.drop()
        proxy.close()
        moto.stop()
    return ours, peer


def report(dest: str, ours: Side, peer: Side, files: int, rsync_noop: tuple[float, float] | None = None) -> list[str]:
    """Markdown rows: wall (CPU) of each side, the ratios of both. On a shared machine the CPU ratio
    is the steadier one: other jobs stretch the wall time of whichever side they overlap."""
    best, best_cpu = min(ours.noop), min(ours.noop_cpu)
    peer_best, peer_cpu = min(peer.noop), min(peer.noop_cpu)
    vs_rsync = (f"; vs `rsync -a`'s no-op {best / rsync_noop[0]:.2f}× wall, {best_cpu / rsync_noop[1]:.2f}× CPU"
                if rsync_noop else "")
    listing = (f"; LIST ours {max(ours.lists)} / peer {max(peer.lists)}, PUT ours {max(ours.puts)} / peer "
               f"{max(peer.puts)}" if ours.lists else "")
    rounds = (f"; best of {len(ours.firsts)}, alternating: ours " + " / ".join(f"{w:.1f}" for w, _ in ours.firsts)
              + " s, peer " + " / ".join(f"{w:.1f}" for w, _ in peer.firsts) + " s") if len(ours.firsts) > 1 else ""
    if math.isnan(peer.first):
        peer_first, first_ratio = f"{peer.name}: not run (--s3-peer-first no)", "–"
    else:
        peer_first = f"{peer.name} {peer.first:.1f} s ({peer.first_cpu:.1f} s)"
        first_ratio = f"{ours.first / peer.first:.2f}× ({ours.first_cpu / peer.first_cpu:.2f}×)"
    return [
        f"| {dest} | first sync{' (best)' if rounds else ''} | {ours.first:.1f} s ({ours.first_cpu:.1f} s) | {peer_first} "
        f"| {first_ratio} "
        f"| DB +{ours.first_bytes / 2**20:.1f} MiB, {ours.first_bytes / files:.0f} bytes per file{rounds} |",
        f"| {dest} | no-op re-sync (best of {len(ours.noop)}) | {best:.2f} s ({best_cpu:.2f} s) | {peer.name} "
        f"{peer_best:.2f} s ({peer_cpu:.2f} s) | {best / peer_best:.2f}× ({best_cpu / peer_cpu:.2f}×) "
        f"| DB +{max(ours.growth) / 1024:.0f} KiB, +{max(ours.rows):,} file rows{listing}{vs_rsync} |",
    ]


QUIET_WAIT = 30.0
WORKERS = 16


def main() -> None:
    global QUIET_WAIT, WORKERS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=256, help="bytes per file")
    parser.add_argument("--data", default="/tmp/uploader-bench", help="where the tree is cached")
    parser.add_argument("--database-url", help="postgres://…/NAME: created fresh, dropped after (default SQLite)")
    parser.add_argument("--destinations", default="local,s3")
    parser.add_argument("--repeat", type=int, default=2, help="no-op re-syncs per side")
    parser.add_argument("--first-repeat", type=int, default=1,
                        help="first syncs per side (local), alternating, each into a new folder; the best is reported")
    parser.add_argument("--s3-peer-first", choices=("yes", "no"), default="yes",
                        help="no: the peer's first sync to S3 is not run; its no-ops use the product's prefix")
    parser.add_argument("--quiet-wait", type=float, default=QUIET_WAIT)
    parser.add_argument("--product", help="measure the code of this checkout (default: this one)")
    parser.add_argument("--workers", type=int, default=WORKERS, help="the product's upload_workers")
    args = parser.parse_args()
    WORKERS = args.workers
    args.s3_peer_first = args.s3_peer_first == "yes"
    common.install_cleanup()
    common.use_product(args.product)
    QUIET_WAIT = args.quiet_wait
    Path(args.data).mkdir(parents=True, exist_ok=True)
    tree = ensure_tree(Path(args.data), args.files, args.size)
    subprocess.run(["find", str(tree), "-type", "f"], stdout=subprocess.DEVNULL, check=True)  # warm the cache
    db_kind = "postgresql" if args.database_url else "sqlite"
    print(f"{common.machine()}\ntree: {args.files:,} × {args.size} B; database {db_kind}; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    rows, rsync_noop = [], None
    for dest in args.destinations.split(","):
        work = Path(tempfile.mkdtemp(prefix=f"bench-resync-{dest}-"))
        try:
            ours, peer = (run_local if dest == "local" else run_s3)(tree, args, work)
            if dest == "local":
                rsync_noop = (min(peer.noop), min(peer.noop_cpu))
            rows += report(dest, ours, peer, args.files, rsync_noop if dest != "local" else None)
            print("\n".join(rows[-2:]), flush=True)  # before the clean-up: deleting 400,000 files takes minutes
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average at end {os.getloadavg()[0]:.1f}; wall (CPU of the client processes)")
    print(f"| destination | what | product | peer | ratio | notes ({db_kind}) |\n|---|---|---:|---:|---:|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted: every process started here was stopped")
