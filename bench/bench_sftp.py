"""Benchmark: SFTPDestination (N processes x T threads) against `rclone copy`, on a local sshd.

Run as root from the repository root (it starts sshd and uses the uploadtest user):
    .venv/bin/python bench/bench_sftp.py
    .venv/bin/python bench/bench_sftp.py --combos 2x1,4x1 --rclone-transfers 8 --skip-large
Needs the Debian packages openssh-server and rclone.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from django.conf import settings  # noqa: E402

from projects.destinations.sftp import SFTPDestination  # noqa: E402
from tests.servers.sshd import SSHServer, sftp_options, start_sshd  # noqa: E402

MiB = 1024 * 1024


@dataclass
class Result:
    name: str
    files: int
    size: int
    wall: float
    client_cpu: float
    server_cpu: float

    def line(self) -> str:
        return (
            f"{self.name:<34} {self.wall:7.2f} s {self.files / self.wall:7.0f} files/s "
            f"{self.size / self.wall / 1e6:7.1f} MB/s   CPU s: client {self.client_cpu:5.2f} server {self.server_cpu:5.2f}"
        )


def make_files(root: Path, count: int, size: int, folders: int) -> list[str]:
    """count files of random bytes in `folders` sub-folders; relative paths."""
    paths = []
    for i in range(count):
        rel = f"d{i % folders:03d}/f{i:06d}.bin"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        paths.append(rel)
    return paths


def _worker(options: dict, source: str, rels: list[str], threads: int) -> None:
    destination = SFTPDestination(options)
    with destination, ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(lambda rel: destination.upload(os.path.join(source, rel), rel), rels):
            pass


def run_destination(server: SSHServer, source: Path, rels: list[str], processes: int, threads: int) -> float:
    options = sftp_options(server)
    with SFTPDestination(options) as destination:
        destination.check()  # creates remote_dir once, outside the timing
    ctx = multiprocessing.get_context("fork")
    start = time.perf_counter()
    workers = [
        ctx.Process(target=_worker, args=(options, str(source), rels[i::processes], threads))
        for i in range(processes)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - start
    if any(w.exitcode != 0 for w in workers):
        raise SystemExit("a worker failed")
    verify(Path(options["remote_dir"]), source, rels)
    return wall


def run_rclone(server: SSHServer, source: Path, rels: list[str], transfers: int) -> float:
    remote_dir = server.data_dir / f"rclone-{uuid.uuid4().hex[:8]}"
    remote = (
        f":sftp,host={server.host},port={server.port},user={server.username},"
        f"key_file={server.client_key},known_hosts_file={server.known_hosts}:{remote_dir}"
    )
    cmd = [
        "rclone", "copy", str(source), remote, "--sftp-disable-hashcheck",
        "--transfers", str(transfers), "--checkers", str(max(8, transfers)), "-q",
    ]
    env = {**os.environ, "RCLONE_CONFIG": "/dev/null"}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    wall = time.perf_counter() - start
    verify(remote_dir, source, rels)
    return wall


def verify(remote_dir: Path, source: Path, rels: list[str]) -> None:
    for rel in rels:
        if (remote_dir / rel).stat().st_size != (source / rel).stat().st_size:
            raise SystemExit(f"bad upload: {remote_dir / rel}")
    shutil.rmtree(remote_dir)


class ServerCPU:
    """CPU seconds of sshd's session processes, sampled while they live: once a session
    ends, its privilege-separated child is often reparented to init, so the listener's
    cutime misses it."""

    def __init__(self, server: SSHServer, interval: float = 0.05):
        self.server, self.interval = server, interval
        self.seen: dict[int, float] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> ServerCPU:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()

    @property
    def seconds(self) -> float:
        return sum(self.seen.values())

    def _sample(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while not self.done.wait(self.interval):
            for pid in self.server.session_pids():
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                self.seen[pid] = (int(fields[11]) + int(fields[12])) / tick


def timed(name: str, server: SSHServer, files: int, size: int, run) -> Result:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with ServerCPU(server) as server_cpu:
        wall = run()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result = Result(name, files, size, wall, cpu, server_cpu.seconds)
    print(result.line(), flush=True)
    return result


def print_medians(results: list[Result]) -> None:
    """One line per variant with its median wall time: the machine is shared, single runs vary."""
    print(f"-- median of {len(results) // len({r.name for r in results})} runs --")
    for name in dict.fromkeys(r.name for r in results):
        runs = sorted((r for r in results if r.name == name), key=lambda r: r.wall)
        print(runs[len(runs) // 2].line())


def parse_combos(text: str) -> list[tuple[int, int]]:
    return [tuple(int(n) for n in combo.split("x")) for combo in text.split(",") if combo]  # type: ignore[misc]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small-count", type=int, default=2000)
    parser.add_argument("--small-size", type=int, default=4096)
    parser.add_argument("--large-count", type=int, default=4)
    parser.add_argument("--large-size-mib", type=int, default=64)
    parser.add_argument("--combos", default="1x1,1x2,2x1,2x2,4x1,4x2,8x1", help="processes x threads, comma separated")
    parser.add_argument("--rclone-transfers", default="4,8,16", help="values of rclone --transfers to try")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each variant (all are printed)")
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--skip-small", action="store_true")
    parser.add_argument("--skip-rclone", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-sftp-"))
    server = start_sshd()
    settings.configure(KEY_FILE_DIRS=[str(server.base_dir)])  # where its client key and known_hosts are
    try:
        sets = []
        if not args.skip_small:
            small = work / "small"
            sets.append(("small", small, make_files(small, args.small_count, args.small_size, 20), args.small_size))
        if not args.skip_large:
            large = work / "large"
            size = args.large_size_mib * MiB
            sets.append(("large", large, make_files(large, args.large_count, size, 1), size))
        print(f"sshd on {server.host}:{server.port}, {os.cpu_count()} CPUs", flush=True)
        for label, source, rels, size in sets:
            total = len(rels) * size
            print(f"\n== {len(rels)} x {size // 1024} KiB ({label}) ==", flush=True)
            results: list[Result] = []
            for _ in range(args.repeat):
                for processes, threads in parse_combos(args.combos):
                    results.append(timed(
                        f"SFTPDestination {processes} proc x {threads} thr",
                        server, len(rels), total,
                        lambda: run_destination(server, source, rels, processes, threads),
                    ))
                if not args.skip_rclone:
                    for transfers in (int(t) for t in args.rclone_transfers.split(",") if t):
                        results.append(timed(
                            f"rclone copy --transfers {transfers}",
                            server, len(rels), total,
                            lambda: run_rclone(server, source, rels, transfers),
                        ))
            if args.repeat > 1:
                print_medians(results)
    finally:
        server.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
