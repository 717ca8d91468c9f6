"""Test-session settings shared by every test module."""

import multiprocessing

# nnU-Net's planning creates multiprocessing pools with the platform default, which is "fork" on Linux.
# Forking a process that already runs threads (decoder thread pools, Holoscan's scheduler, torch) can
# leave the child waiting forever on a lock held by a thread that does not exist in it, and earlier
# tests in the session start such threads. "spawn" starts children clean.
multiprocessing.set_start_method("spawn", force=True)
