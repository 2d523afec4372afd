"""The netns harness: hosts made of network namespaces, real daemons in them, and captures of their wires.

Everything here cleans up after itself: namespaces and processes are registered when they are made and
torn down by their fixtures, and again by an exit hook should a run be interrupted (see `procs.py`).
"""
