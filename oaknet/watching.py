"""The watch endpoint's common part: query arguments, the long poll and its JSON answer."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from flask import Response, jsonify

from oaknet.feed import Feed
from oaknet.store import Change
from oaknet.web import bad_request, int_field


def watch_params(
    args: Mapping[str, str], default_timeout: float, max_timeout: float
) -> tuple[int, float]:
    """``(since, timeout)`` from ``?since=REV&timeout=S``; 400 naming the bad one."""
    since = int_field(dict(args), "since", required=False, low=0) or 0
    raw = args.get("timeout")
    if raw in (None, ""):
        return since, min(default_timeout, max_timeout)
    try:
        timeout = float(raw)
    except ValueError:
        raise bad_request("timeout must be a number of seconds", "timeout") from None
    if not 0 <= timeout <= 3600:
        raise bad_request("timeout must be within 0..3600", "timeout")
    return since, min(timeout, max_timeout)


def watch_response(
    feed: Feed,
    since: int,
    timeout: float,
    select: Callable[[list[Change]], list[Change]],
    resync_docs: Callable[[], list[dict]],
) -> Response:
    """Long-poll ``feed``; ``{revision, resync, changes}`` plus ``services`` on a resync.

    On a resync the revision is read before the state, so a watcher continuing from it may
    see a change again but never misses one. Changes are encoded once per feed, not once per
    watcher: a hundred watchers woken by one change share its JSON.
    """
    result = feed.wait(since, timeout, select=select)
    if result.resync:
        revision = feed.store.head()
        return jsonify(revision=revision, resync=True, changes=[], services=resync_docs())
    changes = b",".join(feed.change_json(c) for c in result.changes)
    body = b'{"revision":%d,"resync":false,"changes":[%s]}\n' % (result.revision, changes)
    return Response(body, mimetype="application/json")
