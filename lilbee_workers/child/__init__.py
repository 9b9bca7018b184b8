"""The worker process runtime: everything here runs only inside a worker child.

Started as ``python -m lilbee_workers.child DATA_FD HEALTH_FD PARENT_PID`` (never
through ``multiprocessing``), so the parent's ``__main__`` is never re-imported and an
unguarded script or a notebook can start a supervisor.
"""
