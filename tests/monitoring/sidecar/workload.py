"""Processes with known resource use for the sidecar tests (run as a script, not imported by pytest).

  burn  --children N --cpu-seconds S --dir D   N children wait for D/go, burn S seconds of their own CPU,
                                               write D/done-<i> with the CPU they used (os.times), then idle.
  hold  --mib M --dir D                        write D/baseline (VmRSS before), hold M MiB of touched
                                               memory, write D/ready, then idle.
  idle  [--tag T] [--cpu-seconds S]            burn S seconds of CPU, then sleep; T only marks the cmdline.
  tree  --children N                           N sleeping children, so a group has a known size.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path


def burn_cpu(seconds: float) -> None:
    start = time.process_time()
    x = 0
    while time.process_time() - start < seconds:
        for _ in range(10_000):
            x += 1


def idle_forever() -> None:
    while True:
        time.sleep(3600)


def vm_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def burn_child(index: int, cpu_seconds: float, directory: Path) -> None:
    while not (directory / "go").exists():
        time.sleep(0.05)
    before = os.times()
    burn_cpu(cpu_seconds)
    after = os.times()
    used = (after.user - before.user) + (after.system - before.system)
    tmp = directory / f".done-{index}"
    tmp.write_text(repr(used))
    tmp.rename(directory / f"done-{index}")  # atomic: the test never reads half a file
    idle_forever()


def reap(*_: object) -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["burn", "hold", "idle", "tree"])
    parser.add_argument("--children", type=int, default=2)
    parser.add_argument("--cpu-seconds", type=float, default=0.0)
    parser.add_argument("--mib", type=int, default=200)
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--tag", default="")
    args = parser.parse_args()

    if args.mode in ("burn", "tree"):
        # Reap children as they die, as gunicorn and Locust do: their CPU then lands in
        # this process's children_user/children_system, which the sidecar must not add again.
        signal.signal(signal.SIGCHLD, reap)
        for index in range(args.children):
            if os.fork() == 0:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                try:
                    if args.mode == "burn":
                        burn_child(index, args.cpu_seconds, args.dir)
                    idle_forever()
                finally:
                    os._exit(0)
        idle_forever()
    elif args.mode == "hold":
        (args.dir / "baseline").write_text(str(vm_rss_bytes()))
        block = bytearray(b"\x01") * (args.mib * 1024 * 1024)  # filled, so every page is resident
        (args.dir / "ready").write_text(str(len(block)))
        idle_forever()
    else:
        burn_cpu(args.cpu_seconds)
        idle_forever()


if __name__ == "__main__":
    sys.exit(main())
