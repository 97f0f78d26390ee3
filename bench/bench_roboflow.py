"""Benchmark: Roboflow upload and import through the product against the roboflow SDK's own loops,
all on the Roboflow-compatible test server (tests/servers/roboflow_api.py) run in its own process
on loopback.

Run from the repository root:
    .venv/bin/python bench/bench_roboflow.py
    .venv/bin/python bench/bench_roboflow.py --images 500 --repeat 3
    .venv/bin/python bench/bench_roboflow.py --database-url postgres://postgres@127.0.0.1:5432/bench

Data: N small JPEGs (24x16 px, all different), each with a YOLO label, in train/valid/test folders
(images/ + labels/) with a data.yaml, generated once under --data.
  upload  product  `manage.py upload --config` with a real qcluster (--upload-tasks tasks, 2 by default as
                   the product's own default, sharing --workers transfers) into a fresh Roboflow project
          sdk      Workspace.upload_dataset(folder, project, num_workers=--workers) in this process
                   (its per-image prints sent to /dev/null), into another fresh project
  import  product  `manage.py import_roboflow --concurrency --import-concurrency` with a real qcluster,
                   from a project seeded with the same number of images, into a local folder and into
                   moto S3 (images/<split>/<name> + annotations/<split>/<stem>.json)
          sdk      the SDK has no import into storage; the reference is a bare loop of SDK calls:
                   search_all for the ids, then ThreadPoolExecutor(--import-concurrency) of
                   project.image(id) + the JSON + a streamed GET of the original, written into a file
                   (import->local) or put into the same moto with one shared boto3 client (import->s3)
--only upload,import-local,import-s3 picks the pairs to run; --product PATH measures another
checkout's code (e.g. the code before a change) against the same SDK; --py-spy DIR records the
cluster during the product's runs (slows them: for finding costs, not for figures).
Figures: images/s by the session's own start/end (product) or the call's wall (sdk), the product
command's wall too, client CPU ms per image (qcluster tree + command, or this process), and the CPU
the test server spent.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402
from common import PYTHON, REPO  # noqa: E402

WORKSPACE, KEY_ENV = "acme", "ROBOFLOW_API_KEY"
IMPORT_PROJECT = "bench-import"
SPLITS = ("train", "valid", "test")
SUMMARY = re.compile(r"(\d+) found, (\d+) uploaded, (\d+) skipped, (\d+) failed.* in ([\d.]+)s")


@dataclass
class Result:
    what: str
    side: str
    images: int
    wall: float  # seconds the work took (session start to end, or the SDK call)
    cpu: float  # client CPU seconds
    server_cpu: float
    command_wall: float = 0.0
    note: str = ""

    def line(self) -> str:
        command = f"  (command {self.command_wall:5.2f} s)" if self.command_wall else ""
        return (f"  {self.what:<14} {self.side:<8} {self.images} images in {self.wall:6.2f} s = "
                f"{self.images / self.wall:7.1f} images/s   client CPU {self.cpu / self.images * 1000:5.2f} ms/image   "
                f"server CPU {self.server_cpu:5.2f} s{command} {self.note}")


# -- the test server, in its own process -----------------------------------------------------------
def serve(seed: int, projects: list[str]) -> None:
    from tests.servers.roboflow_api import RoboflowAPI, _Server

    api = RoboflowAPI()
    server = _Server(api)
    api.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    for name in projects:
        api.add_project(WORKSPACE, name)
    api.seed(WORKSPACE, IMPORT_PROJECT, seed)
    print(f"ready at {api.base_url}", flush=True)
    server.serve_forever()


class Server:
    def __init__(self, log: Path, seed: int, projects: list[str]):
        self.log = log
        self.proc = common.spawn([PYTHON, __file__, "serve", "--seed", str(seed), "--projects", ",".join(projects)],
                                 log=log, env=common.aws_env(), cwd=REPO)
        self.url = common.wait_for(self._ready, 120, "the Roboflow test server")

    def _ready(self) -> str:
        if self.proc.poll() is not None:
            raise RuntimeError(f"test server exited:\n{self.log.read_text()[-3000:]}")
        found = re.search(r"ready at (\S+)", self.log.read_text())
        return found.group(1) if found else ""

    def cpu(self) -> float:
        return common.tree_cpu(self.proc.pid)


# -- data ---------------------------------------------------------------------------------------
def ensure_data(root: Path, n: int) -> Path:
    from tests.servers.roboflow_api import make_image

    def fill(path: Path) -> None:
        for i in range(n):
            split = SPLITS[i % 3]
            (path / split / "images").mkdir(parents=True, exist_ok=True)
            (path / split / "labels").mkdir(parents=True, exist_ok=True)
            (path / split / "images" / f"img{i:05d}.jpg").write_bytes(make_image(i, "JPEG"))
            (path / split / "labels" / f"img{i:05d}.txt").write_text(f"{i % 2} 0.5 0.5 0.25 0.25\n")
        (path / "data.yaml").write_text("names: [cat, dog]\nnc: 2\n")

    return common.made_once(root / f"roboflow-yolo-{n}", fill)


# -- the product --------------------------------------------------------------------------------
class Product:
    """A fresh database, migrated, and a qcluster on it, for the runs of one repeat."""

    def __init__(self, args, server: Server, work: Path, tag: str):
        self.dir = Path(tempfile.mkdtemp(prefix=f"product-{tag}-", dir=work))
        self.db = common.FreshDatabase(args.database_url, self.dir).create()
        self.db.migrate(self.dir / "migrate.log")
        self.env = self.db.env(API_URL=server.url, Q_WORKERS="3", LOG_LEVEL="INFO", **{KEY_ENV: _api_key()})
        log = self.dir / "qcluster.log"
        self.cluster = common.spawn([PYTHON, common.MANAGE, "qcluster"], env=self.env, cwd=common.PRODUCT, log=log)
        common.wait_for(lambda: b"running." in log.read_bytes(), 60, "qcluster to report running")
        time.sleep(1.0)  # workers forked, first broker polls done
        self.py_spy = Path(args.py_spy) if args.py_spy else None

    def run(self, server: Server, what: str, *command: str) -> Result:
        out = self.dir / f"{what}.log"
        spy = self._spy(what)
        q0, s0, c0, t0 = common.tree_cpu(self.cluster.pid), server.cpu(), common.children_cpu(), time.perf_counter()
        with open(out, "wb") as f:
            code = subprocess.run([PYTHON, common.MANAGE, *command, "--no-progress"], env=self.env,
                                  cwd=common.PRODUCT, stdout=f, stderr=subprocess.STDOUT).returncode
        wall = time.perf_counter() - t0
        if spy is not None:
            common.stop(spy, grace=20, sig=signal.SIGINT)  # SIGINT: py-spy writes its output
        cpu = common.tree_cpu(self.cluster.pid) - q0 + common.children_cpu() - c0
        text = out.read_text()
        match = SUMMARY.search(text)
        if code != 0 or match is None:
            raise RuntimeError(f"{what}: exit {code}\n{text[-3000:]}")
        found, uploaded, skipped, failed, seconds = match.groups()
        seconds = self.session_seconds() or seconds  # the summary line rounds to 0.1 s: 6 % of a 1.6 s run
        note = "" if int(uploaded) + int(skipped) == int(found) and not int(failed) else f"FAILED {failed}"
        note += f"(CPU: command {common.children_cpu() - c0:.2f} s + cluster {common.tree_cpu(self.cluster.pid) - q0:.2f} s)"
        return Result(what, "product", int(uploaded), float(seconds), cpu, server.cpu() - s0, wall, note)

    def session_seconds(self) -> float | None:
        """The last session's own duration (started_at to finished_at), to the millisecond (after the
        measurement: this process's CPU is not counted)."""
        code = ("from sessions_app.models import SyncSession; s = SyncSession.objects.latest('pk'); "
                "print(s.duration.total_seconds() if s.finished_at else '')")
        out = subprocess.run([PYTHON, common.MANAGE, "shell", "-v", "0", "-c", code], env=self.env, cwd=common.PRODUCT,
                             capture_output=True, text=True)
        return float(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None

    def _spy(self, what: str) -> subprocess.Popen | None:
        """A py-spy recording of the cluster's processes (collapsed stacks), while `what` runs. The
        sampler takes CPU of its own on these 2 cores: figures of such a run are for finding costs only."""
        if self.py_spy is None:
            return None
        self.py_spy.mkdir(parents=True, exist_ok=True)
        out = self.py_spy / f"{what.replace('>', '')}-{self.dir.name}.txt"
        spy = common.spawn([shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy"), "record", "--pid",
                            str(self.cluster.pid), "--subprocesses", "--nonblocking", "--threads", "--rate", "200",
                            "--format", "raw", "--output", str(out)], log=self.dir / "py-spy.log")
        time.sleep(1.0)  # attached to every process
        return spy

    def create_project(self, name: str, destination: dict, **fields) -> None:
        raw = {"project": name, "source_dir": str(self.dir), "destination": destination, **fields}
        code = ("import json, os; from projects import config; "
                "config.apply(config.validate(json.loads(os.environ['BENCH_PROJECT'])), 'command_line', 'bench')")
        subprocess.run([PYTHON, common.MANAGE, "shell", "-c", code],
                       env={**self.env, "BENCH_PROJECT": json.dumps(raw)}, cwd=common.PRODUCT, check=True,
                       capture_output=True)

    def close(self, keep: bool) -> None:
        common.stop(self.cluster, grace=15)
        self.db.drop()
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def product_upload(product: Product, server: Server, data: Path, n: int, workers: int, i: int, tasks: int = 1) -> Result:
    """`tasks` upload tasks (worker processes) of workers // tasks transfers each: the same in flight."""
    cfg = product.dir / f"upload-{i}.json"
    cfg.write_text(json.dumps({
        "project": f"bench-upload-{i}", "source_dir": str(data), "upload_workers": max(1, workers // tasks),
        "upload_tasks": tasks,
        "destination": {"type": "roboflow", "workspace": WORKSPACE, "project": f"rf-product-{i}",
                        "api_key_env": KEY_ENV},
    }))
    result = product.run(server, "upload", "upload", "--config", str(cfg))
    if result.images != n:
        result.note += f" ONLY {result.images} OF {n} UPLOADED"
    return result


def product_import(product: Product, server: Server, into: str, destination: dict, n: int, concurrency: int,
                   i: int, bucket: common.Moto | None = None) -> Result:
    name = f"bench-import-{into}-{i}"
    if bucket is not None:
        _make_bucket(bucket, destination["bucket"])
    product.create_project(name, destination)
    result = product.run(server, f"import->{into}", "import_roboflow", "--workspace", WORKSPACE, "--project",
                         IMPORT_PROJECT, "--into", name, "--api-key-env", KEY_ENV, "--concurrency", str(concurrency))
    if result.images != n:
        result.note += f" ONLY {result.images} OF {n} IMPORTED"
    return result


# -- the SDK ------------------------------------------------------------------------------------
def _api_key() -> str:
    from tests.servers.roboflow_api import API_KEY

    return API_KEY


def sdk_upload(server: Server, data: Path, n: int, workers: int, i: int) -> Result:
    import roboflow

    with contextlib.redirect_stdout(io.StringIO()) as chatter:  # a line per image
        workspace = roboflow.Roboflow(api_key=_api_key()).workspace(WORKSPACE)
        s0, c0, t0 = server.cpu(), time.process_time(), time.perf_counter()
        workspace.upload_dataset(str(data), f"rf-sdk-{i}", num_workers=workers)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    uploaded = chatter.getvalue().count("[UPLOADED]")
    note = "" if uploaded == n else f" ONLY {uploaded} OF {n} UPLOADED: {chatter.getvalue()[-500:]}"
    return Result("upload", "sdk", uploaded, wall, cpu, server.cpu() - s0, note=note)


def sdk_import(server: Server, into: str, target: Path | str, n: int, concurrency: int,
               moto: common.Moto | None = None) -> Result:
    """search_all for the ids, then a pool of project.image(id) + the annotation's JSON + a streamed
    GET of the original, written to a local folder or put to S3 (one shared boto3 client, the
    botocore settings of the product: one attempt, checksums when required, unsigned streamed body)."""
    import requests
    import roboflow

    put = _local_writer(Path(target)) if into == "local" else _s3_writer(moto, str(target), concurrency)
    s0, c0, t0 = server.cpu(), time.process_time(), time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # "loading Roboflow workspace..."
        project = roboflow.Roboflow(api_key=_api_key()).workspace(WORKSPACE).project(IMPORT_PROJECT)
    hits = [hit for page in project.search_all(limit=100, fields=["id", "name", "split"]) for hit in page]
    local = threading.local()

    def fetch(hit: dict) -> int:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        details = project.image(hit["id"])
        stem = Path(hit["name"]).stem
        put(f"annotations/{hit['split']}/{stem}.json", json.dumps(details.get("annotation")).encode(), None)
        with session.get(details["urls"]["original"], stream=True, timeout=60) as response:
            response.raise_for_status()
            put(f"images/{hit['split']}/{hit['name']}", response.raw, int(response.headers["Content-Length"]))
        return 1

    with ThreadPoolExecutor(concurrency) as pool:
        done = sum(pool.map(fetch, hits))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return Result(f"import->{into}", "sdk", done, wall, cpu, server.cpu() - s0,
                  note="" if done == n else f" ONLY {done} OF {n}")


def _local_writer(target: Path):
    shutil.rmtree(target, ignore_errors=True)

    def put(key: str, body, size: int | None) -> None:
        path = target / key
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            if isinstance(body, bytes):
                f.write(body)
            else:
                shutil.copyfileobj(body, f, 1024 * 1024)

    return put


def _s3_writer(moto: common.Moto, bucket: str, concurrency: int):
    import boto3
    from botocore.config import Config

    _make_bucket(moto, bucket)
    client = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name=common.REGION, config=Config(
        max_pool_connections=concurrency, retries={"total_max_attempts": 1, "mode": "standard"},
        s3={"payload_signing_enabled": False}, request_checksum_calculation="when_required",
        response_checksum_validation="when_required"))

    def put(key: str, body, size: int | None) -> None:
        client.put_object(Bucket=bucket, Key=key, Body=body, ContentLength=len(body) if size is None else size)

    return put


# -- main ---------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    srv = sub.add_parser("serve", help="(internal) run the test server")
    srv.add_argument("--seed", type=int, default=0)
    srv.add_argument("--projects", default="")
    parser.add_argument("--data", default="/tmp/uploader-bench", help="where generated images are cached")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--workers", type=int, default=10, help="upload concurrency of both sides (SDK default 10)")
    parser.add_argument("--import-concurrency", type=int, default=20)
    parser.add_argument("--upload-tasks", type=int, default=2,
                        help="the product's upload tasks for the upload pair (processes; --workers is split among "
                             "them, so as many transfers are in flight as the SDK's): 2, the product's default")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--database-url", help="postgres://...: created fresh, dropped after (default SQLite)")
    parser.add_argument("--skip-s3", action="store_true", help="no import into moto S3")
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--only", default="upload,import-local,import-s3",
                        help="comma-separated: upload, import-local, import-s3 (each run on both sides)")
    parser.add_argument("--product", help="measure the code of this checkout (default: this one)")
    parser.add_argument("--py-spy", metavar="DIR", help="record the cluster with py-spy (collapsed stacks) into DIR")
    args = parser.parse_args()
    if args.command == "serve":
        return serve(args.seed, [p for p in args.projects.split(",") if p])
    common.use_product(args.product)
    only = set(args.only.split(","))

    common.install_cleanup()
    work = Path(tempfile.mkdtemp(prefix="bench-roboflow-"))
    data = ensure_data(Path(args.data), args.images)
    projects = [f"rf-{side}-{i}" for side in ("product", "sdk") for i in range(args.repeat)]
    server = Server(work / "server.log", args.images, projects)
    os.environ.update(common.aws_env())
    from tests.servers.roboflow_api import point_sdk_at

    point_sdk_at(server.url)  # the SDK reads API_URL when imported, and it already is
    moto = None if args.skip_s3 or "import-s3" not in only else common.Moto(work / "moto.log").start()
    print(f"{common.machine()}\ntest server {server.url}; {args.images} images of 24x16 px with YOLO labels; "
          f"upload concurrency {args.workers}, import concurrency {args.import_concurrency}; product DB: "
          f"{args.database_url or 'SQLite (fresh file)'}", flush=True)
    results: list[Result] = []
    try:
        for i in range(args.repeat):
            print(f"\n== run {i + 1} of {args.repeat} ==", flush=True)
            product = Product(args, server, work, str(i))
            try:
                runs = []
                if "upload" in only:
                    runs += [lambda: product_upload(product, server, data, args.images, args.workers, i, args.upload_tasks),
                             lambda: sdk_upload(server, data, args.images, args.workers, i)]
                if "import-local" in only:
                    runs += [lambda: product_import(product, server, "local", {"type": "local", "path": str(
                                 work / f"import-local-{i}")}, args.images, args.import_concurrency, i),
                             lambda: sdk_import(server, "local", work / f"sdk-import-{i}", args.images,
                                                args.import_concurrency)]
                if moto is not None and "import-s3" in only:
                    runs += [lambda: product_import(product, server, "s3", {
                                 "type": "s3", "bucket": f"import-{i}", "endpoint_url": moto.endpoint_url},
                                 args.images, args.import_concurrency, i, bucket=moto),
                             lambda: sdk_import(server, "s3", f"sdk-import-{i}", args.images,
                                                args.import_concurrency, moto)]
                for run in runs:
                    common.wait_quiet(30)
                    results.append(run())
                    print(results[-1].line(), flush=True)
            finally:
                product.close(args.keep_logs)
        report(results)
    finally:
        if moto is not None:
            moto.stop()
        common.finish(work, args.keep_logs)


def _make_bucket(moto: common.Moto, bucket: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=moto.endpoint_url, region_name=common.REGION).create_bucket(Bucket=bucket)


def report(results: list[Result]) -> None:
    """Best run of each (other jobs on the machine only ever slow a run down)."""
    print("\n| what | side | images/s (best) | runs (images/s) | client CPU ms/image (best) | server CPU s |")
    print("|---|---|---:|---|---:|---:|")
    for key in dict.fromkeys((r.what, r.side) for r in results):
        runs = [r for r in results if (r.what, r.side) == key]
        rates = [r.images / r.wall for r in runs]
        cpu = min(r.cpu / r.images * 1000 for r in runs)
        print(f"| {key[0]} | {key[1]} | {max(rates):.1f} | {', '.join(f'{x:.1f}' for x in rates)} | {cpu:.2f} | "
              f"{min(r.server_cpu for r in runs):.2f} |")


if __name__ == "__main__":
    main()
