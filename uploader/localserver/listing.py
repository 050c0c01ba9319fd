"""The knowledge-base file listing and the DRF pagination every listed call shares: page sizes
by dialect or knob, the listing's order, and the knobs that make it drift (list_shift,
list_count, filename_list_rate)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from yarl import URL

from uploader.localserver.state import Entry, ServerState
from uploader.localserver.wire import answer, csv_set, detail


def page_url(url: URL, page: int) -> str:
    """DRF drops the page parameter for the first page."""
    return str(url.without_query_params("page") if page == 1 else url.update_query(page=page))


class Listing(ServerState):
    """Pagination and the listing of a knowledge base's files."""

    def _page_request(self, request: web.Request) -> tuple[int, int]:
        """Page number (0 when invalid) and size, DRF-style: an invalid size falls back to the
        default, a big one is clamped to the maximum, unknown spellings are ignored."""
        try:
            page = int(request.query.get("page", "1"))
        except ValueError:
            page = 0
        default, maximum = self._shape("page_size_default"), self._shape("page_size_max")
        size = default
        for param in csv_set(self._shape("page_size_params")):
            raw = request.query.get(param)
            if raw is None:
                continue
            try:
                asked = int(raw)
            except ValueError:
                continue
            if asked > 0:
                size = min(asked, maximum)
        return page, size

    def _page(
        self,
        request: web.Request,
        count: int,
        rows: Callable[[int, int], list[Any]],
        said: int | None = None,
    ) -> web.Response:
        """A paginated answer; `rows(start, stop)` gives the results of that slice; `said`
        is the count the answer claims (the true one unless a knob lies)."""
        page, size = self._page_request(request)
        start = (page - 1) * size
        if page < 1 or (start >= count and page > 1):
            return detail(404, "Invalid page.")
        stop = min(start + size, count)
        return answer(
            {
                "count": count if said is None else said,
                "next": page_url(request.url, page + 1) if stop < count else None,
                "previous": page_url(request.url, page - 1) if page > 1 else None,
                "results": rows(start, stop),
            }
        )

    def _ordered(self, kb: str) -> list[Entry]:
        """The entries of `kb` in a fixed arbitrary order, stable until the next change."""
        version, seed = self._versions[kb], self.faults.seed
        cached = self._shuffled.get(kb)
        if cached is None or cached[:2] != (version, seed):
            order = list(self._lists[kb])
            random.Random(seed).shuffle(order)
            cached = (version, seed, order)
            self._shuffled[kb] = cached
        return cached[2]

    async def _list(self, request: web.Request) -> web.Response:
        kb = request.match_info["kb"]
        if kb not in self._lists:
            return detail(404, "Not found.")
        entries = self._lists[kb]
        order = self.faults.list_order
        count = len(entries)
        render, now = self._render(), time.monotonic()
        rate = self.faults.filename_list_rate

        def rows(start: int, stop: int) -> list[dict[str, Any]]:
            if order == "newest":  # page 1 is the tail of the list
                chunk = entries[count - stop : count - start]
                chunk.reverse()
            elif order == "oldest":
                chunk = entries[start:stop]
            else:
                chunk = self._ordered(kb)[start:stop]
            views = [self._public(entry, now, render) for entry in chunk]
            if rate > 0:
                for view in views:
                    if self._chance(rate) and "filename" in view:
                        view["filename"] = [view["filename"]]
            return views

        answer = self._page(request, count, rows, self.faults.list_count or count)
        if self.faults.list_shift > 0:
            self._fill(kb, self.faults.list_shift, "shift")
        return answer
