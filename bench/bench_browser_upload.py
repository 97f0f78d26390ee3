"""Browser uploads, both phases, against the peers a user would pick instead, in the same run.

Phase 1 (bytes in): N photos of 4-12 MP sent through the API with `tuspy` (manifest, then one tus
upload per file) vs a plain `curl -T` PATCH of the same bytes to the same server, one file at a
time each, alternating which side goes first per round. MB/s and the ratio.

Phase 2 (processing): a real `qcluster` checks, thumbnails and sends the received photos to a local
folder (the product) vs a bare Pillow loop making the same thumbnails from the same files (draft,
EXIF transpose, thumbnail, WebP), alternating. Thumbnails/s and the ratio.

Memory: peak RSS (VmHWM) of the web server (`manage.py runserver`) and of the qcluster's processes
after the photos, and again after one big file (default 2 GiB) went through both phases: it must
not grow with file count or size.

    .venv/bin/python bench/bench_browser_upload.py --files 1000 --rounds 2 --big-mb 2048
    .venv/bin/python bench/bench_browser_upload.py --files 200 --database-url postgres://postgres@127.0.0.1:5432/bench
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import PYTHON, FreshDatabase, free_port, spawn, stop, wait_for  # noqa: E402

MIB = 1024 * 1024
THUMB = 256


# -- data ------------------------------------------------------------------------------------
def make_photos(folder: Path, n: int) -> list[Path]:
    """n JPEGs of 4-12 MP (smooth noise: photo-like sizes, ~1-3 MB), made once and cached."""
    from PIL import Image

    marker = folder.with_suffix(".complete")
    paths = [folder / f"IMG_{i:05d}.jpg" for i in range(n)]
    if marker.exists():
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    for i, path in enumerate(paths):
        mp = rng.uniform(4, 12)
        w = int((mp * 1e6 * 4 / 3) ** 0.5)
        h = int(w * 3 / 4)
        bands = [Image.effect_noise((w // 24, h // 24), 60 + 10 * c).resize((w, h), Image.BICUBIC) for c in range(3)]
        fine = Image.effect_noise((w, h), 12)
        bands = [Image.blend(b, fine, 0.15) for b in bands]
        Image.merge("RGB", bands).save(path, "JPEG", quality=88)
        if i % 50 == 0:
            print(f"    made {i + 1}/{n} photos", flush=True)
    marker.touch()
    return paths


def make_big(path: Path, mb: int) -> Path:
    if path.exists() and path.stat().st_size == mb * MIB:
        return path
    with open(path, "wb") as f:
        for _ in range(mb):
            f.write(os.urandom(MIB))
    return path


# -- the product -----------------------------------------------------------------------------
class Site:
    """A fresh database, a project with a local destination, its token, and `runserver`."""

    def __init__(self, db: FreshDatabase, work: Path):
        self.db, self.work = db, work
        self.staging, self.dest = work / "staging", work / "dest"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = db.env(UPLOAD_STAGING_DIR=str(self.staging), THUMBNAIL_DIR=str(work / "thumbs"),
                          QUEUE_LINGER_SECONDS="1", Q_WORKERS="2", Q_POLL="0.1")
        self.web = self.cluster = None
        self.token = ""

    def start(self) -> Site:
        self.db.create()
        self.db.migrate(self.work / "migrate.log")
        config = {"project": "bench", "source_dir": str(self.work), "destination": {"type": "local",
                                                                                     "path": str(self.dest)}}
        code = ("from projects import config; import json; "
                f"p, _ = config.apply(config.validate(json.loads({json.dumps(json.dumps(config))})), 'api', 'bench'); "
                "print(p.issue_api_token())")
        self.token = subprocess.run([PYTHON, common.MANAGE, "shell", "-c", code], env=self.env, cwd=common.PRODUCT,
                                    check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        self.web = spawn([PYTHON, common.MANAGE, "runserver", f"127.0.0.1:{self.port}", "--noreload"],
                         log=self.work / "web.log", env=self.env, cwd=common.PRODUCT)
        wait_for(self._answers, 60, "runserver")
        return self

    def _answers(self) -> bool:
        try:
            return requests.options(f"{self.url}/api/uploads/", timeout=2).status_code == 204
        except requests.RequestException:
            return False

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def manifest(self, files: list[Path], prefix: str) -> tuple[int, list[str]]:
        r = requests.post(f"{self.url}/api/projects/bench/uploads/", headers=self.auth, timeout=600,
                          json={"files": [{"path": f"{prefix}/{p.name}", "size": p.stat().st_size} for p in files]})
        r.raise_for_status()
        body = r.json()
        assert not body["refused"], body["refused"][:3]
        return body["session"], [f["upload_url"] for f in body["files"]]

    def status(self, session: int) -> dict:
        return requests.get(f"{self.url}/api/sessions/{session}/", headers=self.auth, timeout=30).json()

    def cancel(self, session: int) -> None:
        code = ("from sessions_app import lifecycle; from sessions_app.models import SyncSession; "
                f"lifecycle.cancel(SyncSession.objects.get(pk={session}))")
        subprocess.run([PYTHON, common.MANAGE, "shell", "-c", code], env=self.env, cwd=common.PRODUCT, check=True)
        subprocess.run(["rm", "-rf", str(self.staging / str(session))], check=True)

    def process(self, session: int) -> tuple[float, dict[int, int]]:
        """Start a qcluster, wait for the session to end; seconds, and peak RSS (KiB) per process."""
        t0 = time.monotonic()
        self.cluster = spawn([PYTHON, common.MANAGE, "qcluster"], log=self.work / "qcluster.log", env=self.env,
                             cwd=common.PRODUCT)
        peaks: dict[int, int] = {}

        def done() -> bool:
            for pid in common.tree_pids(self.cluster.pid):
                peaks[pid] = max(peaks.get(pid, 0), hwm_kib(pid))
            return self.status(session)["phase"] == "done"
        wait_for(done, 3600, f"session {session} processed", interval=0.25)
        elapsed = time.monotonic() - t0
        stop(self.cluster)
        return elapsed, peaks

    def span(self, session: int) -> float:
        """Seconds from the first file claimed to the session's end: processing without the cluster's start."""
        code = ("from django.db.models import Min; from sessions_app.models import SyncSession; "
                f"s = SyncSession.objects.get(pk={session}); "
                "print((s.finished_at - s.files.aggregate(t=Min('claimed_at'))['t']).total_seconds())")
        out = subprocess.run([PYTHON, common.MANAGE, "shell", "-c", code], env=self.env, cwd=common.PRODUCT,
                             check=True, capture_output=True, text=True).stdout
        return float(out.strip().splitlines()[-1])

    def stop(self) -> None:
        for proc in (self.cluster, self.web):
            if proc is not None:
                stop(proc)
        self.db.drop()


def hwm_kib(pid: int) -> int:
    """Peak resident set (VmHWM) of a process, KiB; 0 once it is gone."""
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# -- phase 1 ---------------------------------------------------------------------------------
def send_tuspy(site: Site, files: list[Path], prefix: str) -> tuple[int, float]:
    from tusclient import client

    session, urls = site.manifest(files, prefix)
    tus = client.TusClient(f"{site.url}/api/uploads/", headers=site.auth)
    t0 = time.monotonic()
    for path, url in zip(files, urls):
        tus.uploader(str(path), url=url, chunk_size=16 * MIB).upload()
    return session, time.monotonic() - t0


def send_curl(site: Site, files: list[Path], prefix: str) -> tuple[int, float]:
    session, urls = site.manifest(files, prefix)
    headers = ["-H", f"Authorization: Bearer {site.token}", "-H", "Tus-Resumable: 1.0.0", "-H", "Upload-Offset: 0",
               "-H", "Content-Type: application/offset+octet-stream", "-H", "Expect:"]
    t0 = time.monotonic()
    for path, url in zip(files, urls):
        subprocess.run(["curl", "-sS", "--fail", "-o", "/dev/null", "-X", "PATCH", *headers, "-T", str(path), url],
                       check=True)
    return session, time.monotonic() - t0


# -- phase 2's peer --------------------------------------------------------------------------
PILLOW_LOOP = r'''
import sys, time
from pathlib import Path
from PIL import Image, ImageOps
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
files = sys.argv[2:]
t0 = time.monotonic()
for i, name in enumerate(files):
    with Image.open(name) as im:
        im.draft("RGB", (%d, %d))
        im = ImageOps.exif_transpose(im)
        im.thumbnail((%d, %d))
        im.save(out / f"{i}.webp", "WEBP", quality=80)
print(time.monotonic() - t0)
''' % (THUMB, THUMB, THUMB, THUMB)


def pillow_loop(files: list[Path], out: Path) -> tuple[float, int]:
    """Seconds, and the loop's peak RSS (KiB)."""
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", PYTHON, "-c", PILLOW_LOOP, str(out), *map(str, files)],
                          capture_output=True, text=True, check=True)
    return float(proc.stdout.strip()), int(proc.stderr.strip().splitlines()[-1])


# -- the run -----------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--big-mb", type=int, default=2048, help="size of the big file (0: skip)")
    ap.add_argument("--data", default="/tmp/uploader-bench")
    ap.add_argument("--database-url", help="a PostgreSQL database to drop, create and drop (default: SQLite)")
    args = ap.parse_args()
    common.install_cleanup()
    data = Path(args.data)
    print(common.machine(), "|", common.revision(), flush=True)
    photos = make_photos(data / f"photos-{args.files}", args.files)
    total_mb = sum(p.stat().st_size for p in photos) / 1e6
    print(f"{len(photos)} photos, {total_mb:.0f} MB", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-browser-", dir=data) as tmp:
        work = Path(tmp)
        site = Site(FreshDatabase(args.database_url, work), work).start()
        try:
            rows = []
            for r in range(args.rounds):
                common.wait_quiet(15)
                sides = [("tuspy", send_tuspy), ("curl", send_curl)]
                if r % 2:
                    sides.reverse()
                took, sessions = {}, {}
                for name, send in sides:
                    sessions[name], took[name] = send(site, photos, f"r{r}-{name}")
                site.cancel(sessions["curl"])  # its bytes were only to time curl
                web_hwm = hwm_kib(site.web.pid)
                common.wait_quiet(15)
                order = ["pillow", "product"] if r % 2 == 0 else ["product", "pillow"]
                for side in order:
                    if side == "pillow":
                        pillow_s, pillow_rss = pillow_loop(photos, work / f"pillow-{r}")
                    else:
                        product_s, peaks = site.process(sessions["tuspy"])
                span = site.span(sessions["tuspy"])
                status = site.status(sessions["tuspy"])
                assert (status["uploaded"], status["failed"]) == (len(photos), 0), status
                rows.append((r, took["tuspy"], took["curl"], product_s, pillow_s, web_hwm, max(peaks.values()),
                             pillow_rss))
                print(f"round {r}: phase 1 tuspy {total_mb / took['tuspy']:.1f} MB/s, curl "
                      f"{total_mb / took['curl']:.1f} MB/s (ratio {took['tuspy'] / took['curl']:.2f}x time); "
                      f"phase 2 product {len(photos) / product_s:.1f} thumbnails/s from the cluster's start, "
                      f"{len(photos) / span:.1f}/s from the first claim, Pillow loop "
                      f"{len(photos) / pillow_s:.1f}/s (ratio {product_s / pillow_s:.2f}x time); peak RSS web "
                      f"{web_hwm / 1024:.0f} MiB, worker max {max(peaks.values()) / 1024:.0f} MiB, Pillow loop "
                      f"{pillow_rss / 1024:.0f} MiB", flush=True)
            if args.big_mb:
                big = make_big(data / f"big-{args.big_mb}.bin", args.big_mb)
                session, secs = send_tuspy(site, [big], "big")
                web_after = hwm_kib(site.web.pid)
                big_s, big_peaks = site.process(session)
                print(f"big file {args.big_mb} MiB: phase 1 {big.stat().st_size / 1e6 / secs:.1f} MB/s, phase 2 "
                      f"{big_s:.1f} s; peak RSS web {web_after / 1024:.0f} MiB (after the photos "
                      f"{rows[-1][5] / 1024:.0f}), worker max {max(big_peaks.values()) / 1024:.0f} MiB "
                      f"(photos {rows[-1][6] / 1024:.0f})", flush=True)
        finally:
            site.stop()


if __name__ == "__main__":
    main()
