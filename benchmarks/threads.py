"""torch threads on a busy machine: why `verify certify --threads` defaults to 1.

Times the certify pipeline's per-example attack (PGD, 100 steps x 2 restarts on one MNIST test
image, the AT CNN of the zoo) with 1 and with N torch threads, first on the machine as it is
(idle, or whatever else runs on it) and then next to one more busy process (a single-threaded
torch matmul loop: another job on one of the cores, like a training run or a second worker). Each timing runs in a fresh process. Writes JSON with
the ratio of N threads to 1 thread in each setting.

    python benchmarks/threads.py --data-dir ../shared/datasets --threads 2 --output /tmp/threads.json

On 2 cores with other jobs running, torch's thread pool waits for a core it cannot get. Measured
on this project's 2-core machine while two single-threaded training runs held both cores: 0.24 s
with 1 thread against 3.1 s with 2 (12.7x); with one more busy process, 0.53 s against 9.0 s (17x).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

ATTACK = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
from verify.formats import load_model
from verify.data import load_dataset
from verify.spec import LpBall
from verify.attacks import pgd_attack
net = load_model(sys.argv[2])
ds = load_dataset("mnist", split="test", data_dir=sys.argv[3])
ball = LpBall.make(ds.x[:1].to(torch.float64), 0.1, "inf")
pgd_attack(net, ball, ds.y[:1], steps=5, restarts=1, seed=0)  # warm-up
t = time.perf_counter()
pgd_attack(net, ball, ds.y[:1], steps=100, restarts=2, schedule="decay", seed=1)
print(time.perf_counter() - t)
"""

BUSY = """
import torch
torch.set_num_threads(1)
a = torch.randn(512, 512)
while True:
    a = torch.tanh(a @ a)
"""


def attack_seconds(threads: int, model: str, data_dir: str) -> float:
    out = subprocess.run([sys.executable, "-c", ATTACK, str(threads), model, data_dir], check=True,
                         capture_output=True, text=True, cwd=REPO, timeout=600)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "datasets"))
    ap.add_argument("--model", default=str(REPO / "models" / "mnist_cnn_small_at.mat"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="the N compared with 1")
    ap.add_argument("--output", default=None, help="JSON file (default: stdout)")
    args = ap.parse_args()
    results: dict[str, dict[str, float]] = {}
    for setting in ("as found", "plus one busy process"):
        busy = subprocess.Popen([sys.executable, "-c", BUSY]) if setting != "as found" else None
        try:
            if busy is not None:
                time.sleep(1.0)
            one = attack_seconds(1, args.model, args.data_dir)
            many = attack_seconds(args.threads, args.model, args.data_dir)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
        results[setting] = {"seconds_1_thread": one, f"seconds_{args.threads}_threads": many,
                            "ratio_n_over_1": many / one}
    out = {"benchmark": "PGD (100 steps x 2 restarts) on one MNIST image, AT CNN, by torch threads",
           "load_average_at_start": os.getloadavg()[0], "cores": os.cpu_count(), "machine": platform.machine(), "results": results}
    text = json.dumps(out, indent=1) + "\n"
    if args.output:
        Path(args.output).write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
