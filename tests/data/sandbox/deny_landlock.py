#!/usr/bin/env python3
"""Simulates a kernel without Landlock for the process tree it starts.

Usage: deny_landlock.py PROGRAM [ARGS...]

Installs a seccomp filter that makes landlock_create_ruleset, landlock_add_rule and
landlock_restrict_self fail with ENOSYS (what a kernel built without Landlock answers), then
execs PROGRAM. Every other syscall is allowed. Used by the sandbox tests to check that the
Landlock floor refuses to start and that `allow_degraded: [landlock]` runs and reports it.
"""
import ctypes
import os
import platform
import struct
import sys

PR_SET_NO_NEW_PRIVS = 38
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
ENOSYS = 38
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_RET_K = 0x06
SYS_SECCOMP = {"x86_64": 317, "aarch64": 277}[platform.machine()]
LANDLOCK = (444, 445, 446)  # same numbers on x86_64 and aarch64


def filter_program():
    ins = [(BPF_LD_W_ABS, 0, 0, 0)]  # A = seccomp_data.nr
    for i, nr in enumerate(LANDLOCK):
        ins.append((BPF_JEQ_K, len(LANDLOCK) - i, 0, nr))
    ins.append((BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    ins.append((BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | ENOSYS))
    return b"".join(struct.pack("HBBI", *i) for i in ins), len(ins)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        sys.exit("prctl(PR_SET_NO_NEW_PRIVS) failed")
    code, count = filter_program()
    buf = ctypes.create_string_buffer(code)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(count, ctypes.addressof(buf))
    libc.syscall.restype = ctypes.c_long
    if libc.syscall(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, 0, ctypes.byref(prog)) != 0:
        sys.exit("seccomp failed: errno %d" % ctypes.get_errno())
    os.execv(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
