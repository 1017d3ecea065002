"""Profiles of the service under load: ``py-spy record`` (sampling, no code change), and a
summary of its collapsed stacks by self and inclusive time.

``python -m benchmarks.profiler FILE [--top N] [--grep app.]``
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def recording(directory: str | None, pid: int, name: str) -> Iterator[Path | None]:
    """Record ``pid`` while the block runs; no-op without ``directory`` or without py-spy."""
    tool = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if directory is None or not Path(tool).exists():
        yield None
        return
    out = Path(directory) / f"service-{name}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(  # noqa: S603 (py-spy from our virtualenv)
        [
            tool,
            "record",
            "--pid",
            str(pid),
            "--rate",
            "250",
            "--nonblocking",
            "--format",
            "raw",
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield out
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def summarise(path: Path, top: int = 25, contains: str = "") -> str:
    """Top frames by self samples and by inclusive samples from a collapsed-stack file."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            if contains in frame:
                inclusive[frame] += count
    lines = [f"{total} samples", "", "self:"]
    lines += [f"{100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines += ["", f"inclusive ({contains or 'all'}):"]
    lines += [f"{100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profiler")
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--grep", default="")
    args = parser.parse_args(argv)
    sys.stdout.write(summarise(args.file, args.top, args.grep) + "\n")


if __name__ == "__main__":
    main()
