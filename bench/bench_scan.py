"""Benchmark: scanning a tree of 1,000,000 files, alone and with planning into the database.

Run from the repository root:
    .venv/bin/python bench/bench_scan.py
    .venv/bin/python bench/bench_scan.py --database-url postgres://postgres@127.0.0.1:5432/bench
    .venv/bin/python bench/bench_scan.py --folders 100 --per-folder 1000      # a 100,000-file tree

Measures (warm page cache; every measurement in a fresh subprocess, whose peak RSS is ru_maxrss):
  (i)   `find DIR -type f | wc -l`
  (ii)  projects.scanning.scan alone: method find and scandir, sort on and off
  (iii) pipeline.scan_session(start_uploads=False) for a new session of a project with an empty local
        destination (so nothing is skipped): scan + plan + insert of every row, into a fresh database
        (a SQLite file by default; a PostgreSQL database, created and dropped, with --database-url).
  (iv)  the peer of (iii) on PostgreSQL: `find DIR -type f -printf … | psql -c "COPY …"`, the same rows
        into the same table (sessions_app_fileupload, its indexes and foreign keys) of a fresh database.
--product PATH measures (ii) and (iii) with another checkout's code (e.g. the code before a change).
The tree (empty files, --folders x --per-folder) is generated once under --data and kept.
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
from common import PYTHON  # noqa: E402

# Runs in a fresh interpreter: the scanner alone (no Django needed).
SCAN_ONLY = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from projects import scanning
root, method, sort = sys.argv[2], sys.argv[3], sys.argv[4] == "1"
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
problems = []
t0, c0 = time.perf_counter(), time.process_time()
n = 0
for entry in scanning.scan(root, scanning.ScanFilter(), method=method, sort=sort,
                           on_problem=lambda p, m: problems.append(p)):
    n += 1
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"files": n, "seconds": wall, "cpu": cpu, "problems": len(problems),
                  "base_rss_kib": base, "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "children_rss_kib": kids.ru_maxrss, "children_cpu": kids.ru_utime + kids.ru_stime}))
"""

# Runs in a fresh interpreter with the product's settings: scan + plan + insert.
SCAN_INTO_DB = r"""
import json, os, resource, sys, time
sys.path.insert(0, sys.argv[1])
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "uploader_site.settings")
import django
django.setup()
from django.db import connection
from projects.models import Project
from sessions_app import pipeline, starting
from sessions_app.models import FileUpload, SyncSession
root, target = sys.argv[2], sys.argv[3]
project = Project.objects.create(name="bench-scan", source_dir=root, destination_kind="local",
                                 destination_options={"path": target})
session = starting.create_session(project, created_by="bench")

def server_cpu():
    # CPU of the PostgreSQL backend serving this connection (it does the index work)
    if connection.vendor != "postgresql":
        return 0.0
    with connection.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

server0 = server_cpu()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0, c0 = time.perf_counter(), time.process_time()
stats = pipeline.scan_session(session.pk, start_uploads=False)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
server = server_cpu() - server0
session.refresh_from_db()
rows = FileUpload.objects.filter(session=session).count()
pending = FileUpload.objects.filter(session=session, status="pending").count()
if connection.vendor == "postgresql":
    with connection.cursor() as cur:
        cur.execute("SELECT pg_database_size(current_database())")
        db_bytes = cur.fetchone()[0]
else:
    name = connection.settings_dict["NAME"]
    db_bytes = sum(os.path.getsize(p) for p in (name, name + "-wal") if os.path.exists(p))
print(json.dumps({"files": stats.files, "rows": rows, "pending": pending, "seconds": wall, "cpu": cpu,
                  "status": session.status, "found_count": session.found_count, "base_rss_kib": base,
                  "rss_kib": rss, "children_rss_kib": kids.ru_maxrss, "children_cpu": kids.ru_utime + kids.ru_stime,
                  "db_bytes": db_bytes, "server_cpu": server, "method": os.environ.get("SCAN_METHOD", "auto")}))
"""


def ensure_tree(root: Path, folders: int, per_folder: int) -> Path:
    def fill(tree: Path) -> None:
        print(f"generating {folders * per_folder:,} empty files under {tree} (once) ...", flush=True)
        t0 = time.perf_counter()
        flags = os.O_CREAT | os.O_WRONLY | os.O_EXCL
        for d in range(folders):
            folder = tree / f"d{d:04d}"
            folder.mkdir(parents=True)
            fd_dir = str(folder)
            for i in range(per_folder):
                os.close(os.open(f"{fd_dir}/f{i:05d}.dat", flags, 0o644))
            if (d + 1) % 100 == 0:
                print(f"  {(d + 1) * per_folder:,} files, {time.perf_counter() - t0:.0f} s", flush=True)

    return common.made_once(root / f"scan-{folders}x{per_folder}", fill)


QUIET_WAIT = 120.0


def run_json(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    """Run a measuring child; its JSON answer plus `other_cpu`: what the rest of the machine burnt
    meanwhile (a 2-core box shared with other jobs is noisy)."""
    common.wait_quiet(QUIET_WAIT)
    b0, c0 = common.machine_busy(), common.children_cpu()
    p = subprocess.Popen(cmd, env=env, cwd=common.PRODUCT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    common._children.append(p)
    out, err = p.communicate()
    common._children.remove(p)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed ({p.returncode}):\n{err.decode()[-3000:]}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    result["other_cpu"] = (common.machine_busy() - b0) - (common.children_cpu() - c0)
    return result


# Runs in a fresh interpreter with the product's settings: the project and session rows the peer's
# COPY refers to (made by the product, so they follow its schema), and a `find -printf` format that
# writes a pending row of today's sessions_app_fileupload, every column given (Django sets no
# database defaults).
PEER_SETUP = r"""
import datetime, json, os, sys
sys.path.insert(0, sys.argv[1])
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "uploader_site.settings")
import django
django.setup()
from django.db import connection
from projects.models import Project
from sessions_app import starting
from sessions_app.models import FileUpload
project = Project.objects.create(name="peer", source_dir=sys.argv[2], destination_kind="local",
                                 destination_options={"path": "/nonexistent"})
session = starting.create_session(project, created_by="bench")
FIND = {"relative_path": "%P", "remote_key": "%P", "size": "%s", "mtime": "%T@"}
row = FileUpload(session=session, project=project, status="pending")
columns, formats = [], []
for f in FileUpload._meta.concrete_fields:
    if f.primary_key:
        continue
    v = getattr(row, f.attname)
    if f.attname in FIND:
        text = FIND[f.attname]
    elif v is None:
        text = "\\\\N"
    elif isinstance(v, bool):
        text = "t" if v else "f"
    elif isinstance(v, datetime.datetime):
        text = v.isoformat()
    elif isinstance(v, (dict, list)):
        text = json.dumps(v).replace("%", "%%")
    else:
        text = str(v).replace("%", "%%")
    columns.append(connection.ops.quote_name(f.column))
    formats.append(text)
print(json.dumps({"columns": ", ".join(columns), "printf": "\\t".join(formats) + "\\n"}))
"""


def find_and_copy(tree: Path, db: common.FreshDatabase) -> dict:
    """(iv): find's records straight into the table the product fills, by COPY; a project and a
    session row first, for the foreign keys."""
    peer = run_json([PYTHON, "-c", PEER_SETUP, str(common.PRODUCT), str(tree)], env=db.env())
    pipeline = (f"find {tree} -type f -printf '{peer['printf']}' | psql -q -v ON_ERROR_STOP=1 {db.url} "
                f"-c 'COPY sessions_app_fileupload ({peer['columns']}) FROM STDIN'")
    common.wait_quiet(QUIET_WAIT)
    t0, c0 = time.perf_counter(), common.children_cpu()
    subprocess.run(pipeline, shell=True, check=True)
    seconds, cpu = time.perf_counter() - t0, common.children_cpu() - c0
    count = ("SELECT COUNT(*), pg_database_size(current_database()) FROM sessions_app_fileupload")
    rows, size = subprocess.run(["psql", "-qtA", db.url, "-c", count], check=True, capture_output=True,
                                text=True).stdout.strip().split("|")
    return {"seconds": seconds, "cpu": cpu, "rows": int(rows), "db_bytes": int(size)}


def mib(kib: int) -> float:
    return kib / 1024


def main() -> None:
    global QUIET_WAIT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/tmp/uploader-bench", help="where the tree is cached")
    parser.add_argument("--folders", type=int, default=1000)
    parser.add_argument("--per-folder", type=int, default=1000)
    parser.add_argument("--database-url", help="postgres://user@host:port/name: created fresh, dropped after "
                                                "(default: a fresh SQLite file)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of (i) and (ii); the best is shown")
    parser.add_argument("--db-methods", default="auto", help="SCAN_METHOD values for (iii), comma separated")
    parser.add_argument("--skip-scan", action="store_true", help="only (iii)")
    parser.add_argument("--skip-db", action="store_true", help="only (i) and (ii)")
    parser.add_argument("--quiet-wait", type=float, default=QUIET_WAIT,
                        help="before each measurement, wait up to this many seconds for an idle machine (0: never)")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the PostgreSQL database")
    parser.add_argument("--product", help="measure the code of this checkout (default: this one)")
    parser.add_argument("--skip-peer", action="store_true", help="not (iv)")
    args = parser.parse_args()

    common.install_cleanup()
    common.use_product(args.product)
    QUIET_WAIT = args.quiet_wait
    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    tree = ensure_tree(data, args.folders, args.per_folder)
    n = args.folders * args.per_folder
    print(f"{common.machine()}\ntree: {tree} ({n:,} empty files in {args.folders} folders); "
          f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    subprocess.run(f"find {tree} -type f > /dev/null", shell=True, check=True)  # warm the cache

    rows: list[tuple[str, str, str, str, str]] = []  # what, seconds, peak RSS, CPU, note

    def add(what, seconds, rss="", cpu="", note=""):
        rows.append((what, seconds, rss, cpu, note))
        print(f"  {what:<52} {seconds:>9} {rss:>22} {cpu:>9}  {note}", flush=True)

    if not args.skip_scan:
        best = None
        for _ in range(args.repeat):
            common.wait_quiet(QUIET_WAIT)
            t0 = time.perf_counter()
            out = subprocess.run(f"find {tree} -type f | wc -l", shell=True, check=True, capture_output=True,
                                 text=True).stdout.strip()
            wall = time.perf_counter() - t0
            best = wall if best is None else min(best, wall)
        add(r"(i) `find DIR -type f \| wc -l`", f"{best:.2f} s", note=f"{int(out):,} files")
        for method, sort in (("find", True), ("find", False), ("scandir", True), ("scandir", False)):
            results = [run_json([PYTHON, "-c", SCAN_ONLY, str(common.PRODUCT), str(tree), method, "1" if sort else "0"])
                       for _ in range(args.repeat)]
            r = min(results, key=lambda x: x["seconds"])
            rss = f"{mib(r['rss_kib']):.0f} MiB (+{mib(r['rss_kib'] - r['base_rss_kib']):.0f})"
            if method == "find":
                rss += f"; find/sort {mib(r['children_rss_kib']):.0f}"
            note = f"{r['files']:,} files; other CPU {r['other_cpu']:.1f} s"
            if r["files"] != n:
                note += f" EXPECTED {n:,}"
            if method == "scandir":
                note += "; always in key order (the sort flag only affects find)"
            add(f"(ii) scan(method={method}, sort={'on' if sort else 'off'})", f"{r['seconds']:.2f} s", rss,
                f"{r['cpu'] + r['children_cpu']:.2f} s", note)

    ours: list[float] = []  # (iii)'s wall seconds, for the ratio to (iv)
    if not args.skip_db:
        for method in args.db_methods.split(","):
            work = Path(tempfile.mkdtemp(prefix="bench-scan-"))
            db = common.FreshDatabase(args.database_url, work, keep=args.keep_db).create()
            try:
                db.migrate(work / "migrate.log")
                target = work / "target"  # empty: nothing is skipped
                env = db.env(SCAN_METHOD=method)
                r = run_json([PYTHON, "-c", SCAN_INTO_DB, str(common.PRODUCT), str(tree), str(target)], env=env)
            finally:
                db.drop()
                shutil.rmtree(work, ignore_errors=True)
            rss = f"{mib(r['rss_kib']):.0f} MiB (+{mib(r['rss_kib'] - r['base_rss_kib']):.0f})"
            server = f"; PostgreSQL backend CPU {r['server_cpu']:.1f} s" if db.kind == "postgresql" else ""
            note = (f"{r['rows']:,} rows ({r['pending']:,} pending), {r['rows'] / r['seconds']:,.0f} rows/s, "
                    f"DB {r['db_bytes'] / 2**20:.0f} MiB, session {r['status']}{server}; other CPU {r['other_cpu'] - r['server_cpu']:.1f} s")
            if r["rows"] != n:
                note += f" EXPECTED {n:,}"
            ours.append(r["seconds"])
            add(f"(iii) scan_session into {db.kind} (SCAN_METHOD={method})", f"{r['seconds']:.1f} s", rss,
                f"{r['cpu'] + r['children_cpu']:.1f} s", note)

    if args.database_url and not args.skip_peer:
        work = Path(tempfile.mkdtemp(prefix="bench-scan-"))
        db = common.FreshDatabase(args.database_url, work, keep=args.keep_db).create()
        try:
            db.migrate(work / "migrate.log")
            r = find_and_copy(tree, db)
        finally:
            db.drop()
            shutil.rmtree(work, ignore_errors=True)
        note = f"{r['rows']:,} rows, {r['rows'] / r['seconds']:,.0f} rows/s, DB {r['db_bytes'] / 2**20:.0f} MiB"
        if r["rows"] != n:
            note += f" EXPECTED {n:,}"
        if ours:
            note += f"; (iii) / (iv) = {min(ours) / r['seconds']:.2f}×"
        add("(iv) `find -printf \\| psql COPY` into sessions_app_fileupload", f"{r['seconds']:.1f} s",
            cpu=f"{r['cpu']:.1f} s", note=note)

    print(f"\nload average at end: {os.getloadavg()[0]:.1f}")
    print("\n| measurement | seconds | peak RSS (increase during the scan) | CPU | notes |")
    print("|---|---:|---:|---:|---|")
    for what, seconds, rss, cpu, note in rows:
        print(f"| {what} | {seconds} | {rss} | {cpu} | {note} |")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted: every process started here was stopped")
