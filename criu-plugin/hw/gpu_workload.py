#!/usr/bin/env python3
"""GPU workload for nvidia-check: holds a seeded tensor of N GiB on the GPU, then loops.

  gpu_workload.py --gib 2 --seed 1 --out DIR

Writes DIR/ready.<pid> ("<checksum> <digest>") when the tensor is filled, then loops: a small
kernel and a counter increment every 20 ms. When DIR/verify.<pid> appears it recomputes the
checksum and digest and writes DIR/result.<pid>: "ok <counter>" when both match the values at
start, "bad <details>" otherwise.
"""
import argparse
import hashlib
import os
import time

import torch


def measure(x):
    total = x.sum(dtype=torch.float64).item()
    sample = x[:: max(1, x.numel() // 65536)].cpu().numpy().tobytes()
    return f"{total!r}", hashlib.sha256(sample).hexdigest()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gib", type=float, required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    pid = os.getpid()
    n = int(a.gib * (1 << 30)) // 4
    g = torch.Generator(device="cuda")
    g.manual_seed(a.seed)
    x = torch.empty(n, dtype=torch.float32, device="cuda")
    x.normal_(generator=g)
    torch.cuda.synchronize()
    want = measure(x)
    with open(os.path.join(a.out, f"ready.{pid}.tmp"), "w") as f:
        f.write(" ".join(want) + "\n")
    os.rename(os.path.join(a.out, f"ready.{pid}.tmp"), os.path.join(a.out, f"ready.{pid}"))
    counter = 0
    trigger = os.path.join(a.out, f"verify.{pid}")
    while True:
        _ = x[:4096].mul(1.0).sum().item()
        counter += 1
        if os.path.exists(trigger):
            got = measure(x)
            verdict = f"ok {counter}" if got == want else f"bad want={want} got={got}"
            with open(os.path.join(a.out, f"result.{pid}"), "w") as f:
                f.write(verdict + "\n")
            os.unlink(trigger)
        time.sleep(0.02)


if __name__ == "__main__":
    main()
