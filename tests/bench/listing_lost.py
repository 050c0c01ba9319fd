"""Case 11: the listing under lost register answers on a knowledge base that is not new.

A lost answer leaves a doubt that only the listing settles; its cost must be bounded by what
is new in the knowledge base, not by its size. The same files go once with no answer lost and
once with 5% lost, each against a fresh server holding the same pre-filled entries.
"""

from __future__ import annotations

import json
import urllib.request

from .cases import Figures, Options, case, rnd, run_bare, run_ok, upload_figures, verdict
from .harness import KB, KIB, Measured, Server, Traffic, Uploader, make_files, serve, workspace

LATENCY = 0.020
WORKERS = 10
LOST = 0.05
FILL_AGE = 3600.0


def _fill(server: Server, entries: int) -> None:
    """Entries an hour old, as a knowledge base that is not new holds (made the instant before
    the run, they would sit inside the margin a refresh reads below a doubt)."""
    body = json.dumps({"kb": KB, "count": entries, "age": FILL_AGE}).encode()
    request = urllib.request.Request(
        server.origin + "/_control/fill", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60):
        pass


def _bare(folder: str, entries: int) -> tuple[Measured, Traffic]:
    """The bare client on the same files, against a server of its own holding the same
    entries (it loses no answer: it could not settle one)."""
    with serve(LATENCY) as server:
        _fill(server, entries)
        return run_bare(server, folder, WORKERS)


def _one(
    root: str,
    folder: str,
    files: int,
    entries: int,
    lost: float,
    bare: tuple[Measured, Traffic] | None = None,
) -> tuple[Figures, str | None, dict[str, int]]:
    with serve(LATENCY, lost_register_rate=lost, seed=7) as server:
        _fill(server, entries)
        up = Uploader(root, server)
        up.enqueue(folder)
        before = server.stats()
        # one file per register call: each lost answer is one doubt, as the issue measured
        run, traffic = up.run("--workers", str(WORKERS), "--register-batch", "1")
        after = server.stats()
        calls = {k: after[k] - before[k] for k in ("list", "register", "register_lost", "get")}
        if bare is None:
            figures = upload_figures(files, run, traffic, None, 0)
        else:
            figures = upload_figures(files, run, traffic, bare[0], bare[0].json()["files"], bare[1])
        return figures, run_ok(run, up.states(), files), calls


@case("11", "listing under 5% lost answers, 20,000 entries already in the knowledge base")
def case_11(opts: Options) -> Figures:
    files, entries = (300, 2000) if opts.quick else (3000, 20000)
    with workspace() as root:
        folder = make_files(root, files, KIB)
        bare = _bare(folder, entries)
        clean, problem_clean, clean_calls = _one(root + "/clean", folder, files, entries, 0.0)
        figures, problem, calls = _one(root + "/lost", folder, files, entries, LOST, bare)
    lost = calls["register_lost"]
    per_lost = calls["list"] / lost if lost else None
    speed = figures["files_per_s"] / clean["files_per_s"] if clean["files_per_s"] else None
    figures.update(
        entries=entries,
        clean_files_per_s=clean["files_per_s"],
        ratio_to_clean=rnd(speed),
        lost_answers=lost,
        list_calls=calls["list"],
        clean_list_calls=clean_calls["list"],
        list_calls_per_lost_answer=rnd(per_lost, 2),
        register_calls=calls["register"],
    )
    ok = (speed or 0) >= 0.8 and per_lost is not None and per_lost <= 3 + 10 / max(lost, 1)
    target = ">= 0.8 x the rate without lost answers, <= 3 listing calls per lost answer + 10"
    return verdict(figures, target, ok, problem_clean or problem)
