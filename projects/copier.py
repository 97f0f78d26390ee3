"""A child process that copies small files into a local destination folder, a part at a time, for
a plan that sends them itself (`upload --sync`, sessions_app/sending.py). Its system calls and its
Python run on another core than the scan, the plan and the database writes, and never wait for
their interpreter lock: in one process, copying 200,000 small files took the scan thread 60–77 µs
of CPU a file, and 73–98 µs of its time.

The parent writes requests to the child's stdin and reads the answers from its stdout, in order,
one pickle each (both ends are this module): a request is (destination options, source folder,
follow symlinks, [(relative path, key, device, inode)]); its answer is the list of
`local.Copied`, one per file, from LocalDestination.copy_files. The child reads requests in a
thread of its own, so a request written while it copies never blocks the parent. It ends at the
end of its input (the parent closed it, or died) and leaves SIGINT to the parent.

    python -m projects.copier
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
from typing import Any, BinaryIO

from projects.destinations.local import Copied, LocalDestination

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where `projects` is imported from


class CopierError(Exception):
    """The child could not be started, or went away before answering."""


class Copier:
    """The parent's side: one child process, requests answered in the order they were sent."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
        try:
            self._proc = subprocess.Popen([sys.executable, "-m", "projects.copier"], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, cwd=ROOT, env=env)
        except OSError as exc:
            raise CopierError(f"cannot start the copier process: {exc.strerror or exc}") from exc
        self.asked = 0  # requests not answered yet

    @property
    def pid(self) -> int:
        return self._proc.pid

    def submit(self, options: dict[str, Any], source_dir: str, follow_symlinks: bool,
               items: list[tuple[str, str, int | None, int | None]]) -> None:
        try:
            pickle.dump((options, source_dir, follow_symlinks, items), self._proc.stdin, pickle.HIGHEST_PROTOCOL)
            self._proc.stdin.flush()
        except (OSError, ValueError) as exc:  # BrokenPipeError: the child is gone
            raise self._gone() from exc
        self.asked += 1

    def result(self) -> list[Copied]:
        """The answer to the oldest request not answered yet."""
        try:
            answer = pickle.load(self._proc.stdout)
        except (EOFError, OSError, pickle.UnpicklingError) as exc:
            raise self._gone() from exc
        self.asked -= 1
        return answer

    def close(self) -> None:
        """End the child (it finishes the request at hand) and wait for it."""
        for stream in (self._proc.stdin, self._proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def _gone(self) -> CopierError:
        code = self._proc.poll()
        return CopierError("the copier process ended" + (f" (exit code {code})" if code is not None else ""))


def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    """The child's loop: answer each request, in order, until the end of the input."""
    pending: queue.SimpleQueue = queue.SimpleQueue()
    end = object()

    def read() -> None:
        try:
            while True:
                pending.put(pickle.load(requests))
        except Exception:  # the end of the input, or a request cut off: the parent is gone or done
            pending.put(end)

    threading.Thread(target=read, name="copier-requests", daemon=True).start()
    destinations: dict[str, LocalDestination] = {}
    while (request := pending.get()) is not end:
        options, source_dir, follow_symlinks, items = request
        key = repr(sorted(options.items()))  # made once: it keeps the folders it made
        if key not in destinations:
            destinations[key] = LocalDestination(options)
        dest = destinations[key]
        pickle.dump(dest.copy_files(source_dir, items, follow_symlinks=follow_symlinks), answers,
                    pickle.HIGHEST_PROTOCOL)
        answers.flush()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the terminal is the parent's to handle
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever else prints goes to stderr, not into the answers
    try:
        serve(sys.stdin.buffer, out)
    except BrokenPipeError:  # the parent went away
        pass
