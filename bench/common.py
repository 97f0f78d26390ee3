"""Shared helpers of the benchmark scripts: child processes that are always cleaned up, CPU of a
process tree from /proc, fresh databases, and the environment of a product subprocess.

Not a test module and not imported by the product.
"""

from __future__ import annotations

import atexit
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.polling import wait_for  # noqa: E402  (one poll-with-deadline for tests and benchmarks)

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# The checkout whose product is measured: this one, or another (--product, e.g. the code before a change).
PRODUCT = REPO
MANAGE = str(PRODUCT / "manage.py")
CLK_TCK = os.sysconf("SC_CLK_TCK")
REGION = "us-east-1"


# -- child processes --------------------------------------------------------------------------
_children: list[subprocess.Popen] = []


def made_once(path: Path, fill: Callable[[Path], None]) -> Path:
    """A generated data set at `path`, made by fill(path) the first time only: a `<name>.complete`
    marker beside it says it is whole (a set cut off half-way is made again)."""
    marker = path.with_name(path.name + ".complete")
    if not marker.exists():
        shutil.rmtree(path, ignore_errors=True)
        fill(path)
        marker.write_text("")
    return path


def spawn(cmd: list[str], *, log: Path | None = None, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    """A long-running child in its own process group (Ctrl-C in the terminal does not reach it;
    we stop it, and everything it forked, ourselves)."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, **kw)
    finally:
        if log:
            out.close()
    _children.append(proc)
    return proc


def stop(proc: subprocess.Popen, grace: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Polite signal to the main process (qcluster shuts its workers down on SIGTERM), then
    SIGKILL to the whole group: a SIGKILL to qcluster's main process alone leaves its workers running."""
    try:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its group id is its pid (start_new_session)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
    finally:
        if proc in _children:
            _children.remove(proc)


def stop_all() -> None:
    for proc in list(reversed(_children)):
        stop(proc, grace=5.0)


def finish(work: Path, keep_logs: bool) -> None:
    """A bench's end: every child stopped, its work folder removed (or kept, and said so)."""
    stop_all()
    if keep_logs:
        print(f"logs kept under {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def _on_signal(signum, frame):
    stop_all()
    # Let the usual KeyboardInterrupt / exit path run (finally blocks, temp dirs).
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    compile_product()
    atexit.register(stop_all)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)


def use_product(path: str | None) -> None:
    """Measure the product of another checkout (its manage.py, run from its folder)."""
    global PRODUCT, MANAGE
    if path:
        PRODUCT = Path(path).resolve()
        MANAGE = str(PRODUCT / "manage.py")
    compile_product()


_compiled: set[Path] = set()


def compile_product() -> None:
    """The product's modules as an installed product has them: compiled once. With
    PYTHONDONTWRITEBYTECODE set (this machine's shell, the image's environment) nothing is cached,
    and every command measured would compile each of its modules again at start-up (~0.3-1 s)."""
    if PRODUCT not in _compiled:
        subprocess.run([PYTHON, "-m", "compileall", "-q", "-x", r"/(\.venv|node_modules)/", str(PRODUCT)],
                       stdout=subprocess.DEVNULL, check=False)
        _compiled.add(PRODUCT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- CPU of a process tree -------------------------------------------------------------------
def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, CPU seconds of itself + its reaped children)."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue  # gone meanwhile
        fields = data[data.rindex(b")") + 2:].split()
        # fields[0] is field 3 of proc(5): state; ppid is 4, utime..cstime are 14..17
        ppid = int(fields[1])
        ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        table[int(name)] = (ppid, ticks / CLK_TCK)
    return table


def tree_cpu(root_pid: int) -> float:
    """CPU seconds (user + system) of a process and all its descendants, living or reaped by a
    member of the tree. Workers that exit and are waited for move into their parent's cutime,
    so the sum never goes back; nothing is counted twice."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root_pid]
    while todo:
        pid = todo.pop()
        if pid in table:
            total += table[pid][1]
        todo.extend(children.get(pid, ()))
    return total


def snapshot() -> dict[int, tuple[str, float]]:
    """pid -> (short command line, CPU seconds) of every process now."""
    out = {}
    for pid, (_ppid, cpu) in _proc_table().items():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        out[pid] = (cmd, cpu)
    return out


def top_others(before: dict, after: dict, ours: set[int], n: int = 3) -> str:
    """The processes outside `ours` that burnt the most CPU between two snapshots (short-lived
    ones are missed: they show only in the machine's total)."""
    deltas = []
    for pid, (cmd, cpu) in after.items():
        if pid in ours or not cmd:
            continue
        d = cpu - before.get(pid, (cmd, 0.0))[1]
        if d >= 0.5:
            deltas.append((d, cmd))
    deltas.sort(reverse=True)
    return "; ".join(f"{d:.1f} s {_short(cmd)}" for d, cmd in deltas[:n])


def _short(cmd: str) -> str:
    parts = cmd.split()
    keep = [p.rsplit("/", 1)[-1] if p.startswith("/") else p for p in parts[:4]]
    return " ".join(keep)[:70]


def tree_pids(root_pid: int) -> list[int]:
    table = _proc_table()
    out, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(p for p, (pp, _) in table.items() if pp == pid)
    return out


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy (all cores, all processes) since boot; the part of
    a measurement's delta that is not ours says how noisy the machine was (other users' jobs)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = v[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def wait_quiet(max_wait: float, cores: float = 0.3, window: float = 2.0) -> float:
    """Wait (up to max_wait s) until the whole machine uses fewer than `cores` CPUs over `window`
    seconds: other users' jobs on a shared box swamp a 2-core measurement. Returns the last load."""
    start = time.monotonic()
    deadline = start + max_wait
    while True:
        b0, t0 = machine_busy(), time.monotonic()
        time.sleep(window)
        load = (machine_busy() - b0) / (time.monotonic() - t0)
        if load < cores or time.monotonic() >= deadline:
            if time.monotonic() - start > window * 1.5:
                print(f"    (waited {time.monotonic() - start:.0f} s for a quieter machine; now {load:.2f} CPUs busy)",
                      flush=True)
            return load


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


# -- moto -----------------------------------------------------------------------------------
class Moto:
    """moto's standalone S3 server on a free loopback port, in its own process group."""

    def __init__(self, log: Path):
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Moto:
        for _ in range(3):  # the probed port may be taken before moto binds it
            self.port = free_port()
            self.proc = spawn([PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                              log=self.log, env=aws_env())
            try:
                wait_for(self._answers, 30, f"moto on port {self.port}")
                return self
            except (RuntimeError, AssertionError):
                stop(self.proc)
        raise RuntimeError(f"moto did not start, see {self.log}")

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError("moto exited")
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def cpu(self) -> float:
        return tree_cpu(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


def aws_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Dummy credentials and nothing of the real user's AWS set-up."""
    env = {k: v for k, v in (base if base is not None else os.environ).items() if not k.startswith("AWS_")}
    empty = Path(tempfile.gettempdir()) / "uploader-bench-empty-aws"
    empty.write_text("")
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE=str(empty),
        AWS_SHARED_CREDENTIALS_FILE=str(empty),
        AWS_EC2_METADATA_DISABLED="true",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env.pop(name, None)
    return env


# -- databases ------------------------------------------------------------------------------
class FreshDatabase:
    """An empty database for one measurement: a SQLite file in a temp DATA_DIR (default), or a
    PostgreSQL database created (dropped first if it exists) from --database-url and dropped at the end."""

    def __init__(self, database_url: str | None, work: Path, keep: bool = False):
        self.url = database_url
        self.keep = keep
        self.data_dir = Path(tempfile.mkdtemp(prefix="db-", dir=work))
        self.created = False

    @property
    def kind(self) -> str:
        return "postgresql" if self.url else "sqlite"

    def _pg(self):
        import psycopg2

        u = urllib.parse.urlsplit(self.url)
        name = u.path.lstrip("/")
        conn = psycopg2.connect(host=u.hostname or "127.0.0.1", port=u.port or 5432, user=u.username or "postgres",
                                password=u.password or None, dbname="postgres")
        conn.autocommit = True
        return conn, name

    def create(self) -> FreshDatabase:
        if self.url:
            conn, name = self._pg()
            try:
                with conn.cursor() as cur:  # not `with conn`: that opens a transaction block
                    cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                    cur.execute(f'CREATE DATABASE "{name}"')
            finally:
                conn.close()
        self.created = True
        return self

    def drop(self) -> None:
        if self.url and self.created and not self.keep:
            conn, name = self._pg()
            try:
                with conn.cursor() as cur:
                    cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                conn.close()

    def env(self, **extra: str) -> dict[str, str]:
        env = aws_env()
        env.update(DATA_DIR=str(self.data_dir), DEBUG="0", SECRET_KEY="bench-secret-key", LOG_LEVEL="WARNING",
                   PYTHONUNBUFFERED="1")
        if self.url:
            env["DATABASE_URL"] = self.url
        else:
            env.pop("DATABASE_URL", None)
        env.update(extra)
        return env

    def migrate(self, log: Path) -> None:
        with open(log, "ab") as out:
            subprocess.run([PYTHON, MANAGE, "migrate", "--noinput"], env=self.env(), cwd=PRODUCT, check=True,
                           stdout=out, stderr=subprocess.STDOUT)


def revision() -> str:
    """The commit of the code under test, and whether files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PRODUCT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PRODUCT,
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "code: not a git checkout"
    return f"code: {PRODUCT} at {head}" + (" + uncommitted changes" if dirty else "")


def machine() -> str:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{time.strftime('%Y-%m-%d %H:%M')}; {os.cpu_count()} CPUs ({cpu}), {mem:.0f} GiB RAM, "
            f"Python {sys.version.split()[0]}, Linux {os.uname().release}; {revision()}")
