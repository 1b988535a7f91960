#!/usr/bin/env python3
"""A stand-in for NVIDIA's `cuda-checkpoint` utility, over the same CUDA driver API (ctypes).

CRIU's stock cuda plugin runs `cuda-checkpoint` from PATH. The GPU test machine has no copy of
NVIDIA's binary, so nvidia-check puts this shim there (through the `cuda-checkpoint` wrapper).
It implements what the plugin uses (plugins/cuda/cuda_plugin.c of CRIU 4.2.1):

  cuda-checkpoint -h                                  (the help must mention --action)
  cuda-checkpoint --get-restore-tid --pid P           prints the restore thread id
  cuda-checkpoint --get-state --pid P                 prints running|locked|checkpointed|failed
  cuda-checkpoint --action lock|checkpoint|restore|unlock --pid P [--timeout MS]

Exit status 0 on success, 1 with the driver's error text otherwise. The driver library is
$FERRY_CUDA_LIB or libcuda.so.1. A call that answers CUDA_ERROR_NOT_INITIALIZED is retried
once after cuInit(0).
"""
import argparse
import ctypes
import os
import sys

CUDA_ERROR_NOT_INITIALIZED = 3
STATES = {0: "running", 1: "locked", 2: "checkpointed", 3: "failed"}


class LockArgs(ctypes.Structure):
    _fields_ = [("timeoutMs", ctypes.c_uint), ("reserved0", ctypes.c_uint),
                ("reserved1", ctypes.c_uint64 * 7)]


class ReservedArgs(ctypes.Structure):
    _fields_ = [("reserved", ctypes.c_uint64 * 8)]


def usage():
    return ("usage: cuda-checkpoint [-h] [--get-restore-tid | --get-state | "
            "--action {lock,checkpoint,restore,unlock}] --pid PID [--timeout MS]\n"
            "  --action ACTION   lock, checkpoint, restore or unlock the CUDA process PID\n"
            "  --get-state       print the checkpoint state of PID\n"
            "  --get-restore-tid print the CUDA restore thread id of PID\n"
            "  --timeout MS      lock timeout in milliseconds (0: none)\n"
            "(ferry's shim over the CUDA driver API; not NVIDIA's utility)\n")


def parse(argv):
    p = argparse.ArgumentParser(prog="cuda-checkpoint", add_help=False)
    p.add_argument("-h", "--help", action="store_true")
    p.add_argument("--action", choices=["lock", "checkpoint", "restore", "unlock"])
    p.add_argument("--get-state", action="store_true")
    p.add_argument("--get-restore-tid", action="store_true")
    p.add_argument("--pid", type=int)
    p.add_argument("--timeout", type=int, default=0)
    a, rest = p.parse_known_args(argv)
    if rest:
        raise SystemExit(f"cuda-checkpoint: unknown arguments {rest}\n{usage()}")
    return a


class Driver:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        self.inited = False

    def error(self, rc):
        s = ctypes.c_char_p()
        if self.lib.cuGetErrorString(rc, ctypes.byref(s)) == 0 and s.value:
            return f"{s.value.decode(errors='replace')} ({rc})"
        return f"CUresult {rc}"

    def call(self, name, *args):
        rc = getattr(self.lib, name)(*args)
        if rc == CUDA_ERROR_NOT_INITIALIZED and not self.inited:
            self.inited = True
            self.lib.cuInit(0)
            rc = getattr(self.lib, name)(*args)
        if rc != 0:
            raise RuntimeError(f"{name} failed: {self.error(rc)}")


def tgid(pid):
    """CRIU's plugin asks for the state of the restore *thread*; the API takes a process id."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return pid


def main(argv):
    a = parse(argv)
    if a.help or (a.action is None and not a.get_state and not a.get_restore_tid):
        sys.stdout.write(usage())
        return 0
    if a.pid is None:
        sys.stdout.write("cuda-checkpoint: --pid is required\n")
        return 1
    d = Driver(os.environ.get("FERRY_CUDA_LIB") or "libcuda.so.1")
    try:
        if a.get_restore_tid:
            tid = ctypes.c_int(0)
            d.call("cuCheckpointProcessGetRestoreThreadId", a.pid, ctypes.byref(tid))
            print(tid.value)
        elif a.get_state:
            st = ctypes.c_int(-1)
            d.call("cuCheckpointProcessGetState", tgid(a.pid), ctypes.byref(st))
            print(STATES.get(st.value, f"unknown({st.value})"))
        elif a.action == "lock":
            args = LockArgs(timeoutMs=a.timeout)
            d.call("cuCheckpointProcessLock", a.pid, ctypes.byref(args))
        else:
            fn = {"checkpoint": "cuCheckpointProcessCheckpoint",
                  "restore": "cuCheckpointProcessRestore",
                  "unlock": "cuCheckpointProcessUnlock"}[a.action]
            d.call(fn, a.pid, ctypes.byref(ReservedArgs()))
    except RuntimeError as e:
        print(e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
