"""`make bench`: the figures behind the performance targets of issue 6.

Every case starts the local MaiAgent-compatible server as its own process, generates its files
in a temporary folder and runs the real `uploader` commands as subprocesses, so the CPU time and
peak memory it reports are the uploader's alone. Run `python -m tests.bench [--quick] [--case
ID]`; it prints one JSON line per case, then a table with PASS/FAIL per target.
"""
