"""The os-ken side of the agent: reconcile the switch, send deltas as bundles, reject packets.

os-ken 4.2 runs on its native thread hub: the app's handlers run in the app's event thread,
so nothing there waits for the switch. A worker thread does the waiting (dumps, bundle
commits) and the handlers only hand replies over to it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import itertools
import logging
import queue
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import (
    CONFIG_DISPATCHER,
    DEAD_DISPATCHER,
    MAIN_DISPATCHER,
    set_ev_cls,
)
from os_ken.ofproto import ofproto_v1_5 as ofp

from sdn import ofcodec, ofmsg, ofwire, reject, spec
from sdn.agent import Agent, paused_gc
from sdn.delta import Delta
from sdn.logic_text import flow_text, group_text

LOG = logging.getLogger(__name__)

OFPGC_ADD_OR_MOD = 0x8000  # OVS extension: add a group or replace an existing one
REPLY_TIMEOUT = 30.0
MAX_LOGGED = 20  # changed groups logged one by one at a reconcile
SEND_CHUNK = 256 * 1024  # bytes per socket write of a bundle: packet-outs can go in between
TRIM_AFTER = 10_000  # messages in one bundle after which freed memory goes back to the system
_ANY_STATE = [CONFIG_DISPATCHER, MAIN_DISPATCHER]


@dataclass
class _Pending:
    """A request waiting for its reply (all parts of a multipart one) or for its error."""

    body: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    final_xid: int | None = None  # the xid whose error (or reply) ends the request


class BundleError(RuntimeError):
    """The switch refused a bundle; nothing of it was applied."""


class Switch:
    """The agent's connection to its bridge (implements ``sdn.agent.SwitchSink``)."""

    def __init__(self, agent: Agent):
        self.agent = agent
        self.dp = None
        self.synced_at: float | None = None
        self.last_sync: dict = {}
        self.last_error: str | None = None
        self.applied = 0
        self._queue: queue.Queue = queue.Queue()
        self._need_sync = threading.Event()
        self._pending: dict[int, _Pending] = {}
        self._plock = threading.Lock()
        self._send_lock = threading.Lock()
        self._bundle_ids = itertools.count(1)
        self._stop = False
        self.resolver = None  # sdn.resolver.Resolver in cluster mode: unknown addresses
        self.peer_seen = None  # cluster mode: a node's BFD reached the any-peer port
        ofcodec.use_raw_stats_parsers()
        agent.sink = self
        self.audit_s = agent.cfg.audit_interval_s or None
        self.last_audit: dict = {}
        self.drift_repairs = 0
        # Started last: the worker reads the attributes above at once.
        self._worker = threading.Thread(target=self._run, name="switch-worker", daemon=True)
        self._worker.start()

    # -- SwitchSink ------------------------------------------------------------------------

    def submit(self, delta: Delta) -> threading.Event:
        """Queue ``delta``; the returned event is set once it was applied (or dropped)."""
        done = threading.Event()
        self._queue.put((delta, done))
        return done

    def connected(self) -> bool:
        """Whether the bridge is connected and was reconciled."""
        return self.dp is not None and self.synced_at is not None

    def stop(self, timeout: float = 3.0) -> None:
        """Let the worker apply what is queued (up to ``timeout`` s), then stop it."""
        self._queue.put(None)
        self._worker.join(timeout)
        self._stop = True

    # -- events from the os-ken app --------------------------------------------------------

    def on_connect(self, dp, dpid: int) -> None:
        """A (re)connected switch: reconcile before anything else."""
        LOG.info("switch %016x connected (OpenFlow 0x%02x)", dpid, dp.ofproto.OFP_VERSION)
        self.dp = dp
        self.synced_at = None
        self._need_sync.set()
        self._queue.put(("sync", None))

    def on_disconnect(self, dp) -> None:
        """The switch went away; its state is re-read on the next connection."""
        if self.dp is dp:
            LOG.warning("switch %016x disconnected", dp.id or 0)
            self.dp = None
            self.synced_at = None
            with self._plock:
                for pending in self._pending.values():
                    pending.errors.append("disconnected")
                    pending.done.set()
                self._pending.clear()

    def on_reply(self, msg, last: bool = True) -> None:
        """A (part of a) reply to one of our requests."""
        with self._plock:
            pending = self._pending.get(msg.xid)
            if pending is None:
                return
            if isinstance(getattr(msg, "body", None), list):
                pending.body.extend(msg.body)
            if last:
                pending.done.set()

    def on_error(self, msg) -> None:
        """An OFPT_ERROR: fail the request it answers, or log it."""
        text = f"type={msg.type} code={msg.code}"
        with self._plock:
            pending = self._pending.get(msg.xid)
            if pending is not None:
                pending.errors.append(text)
                if pending.final_xid in (None, msg.xid):
                    pending.done.set()
                return
        LOG.error("switch error for xid %#x: %s", msg.xid, text)

    def on_packet_in(self, msg) -> None:
        """A packet the pipeline punted: resolve an unknown address (cluster mode), or reject
        it (no instance, unknown address offline)."""
        kind = self.agent.punt_kind(msg.cookie)
        if kind is None:
            LOG.debug("packet-in with foreign cookie %#x ignored", msg.cookie)
            return
        in_port = msg.match.get("in_port")
        if in_port is None:
            return
        if kind == "unknown" and self.resolver is not None:
            self.resolver.on_unknown(bytes(msg.data), in_port)
            return
        if kind == "peer":
            ip = msg.match.get("tun_ipv4_src") or _ipv4(msg.match.get("reg7"))
            if ip and self.peer_seen is not None:
                self.peer_seen(ip)
            return
        LOG.debug("packet-in (%s) on port %d: rejected", kind, in_port)
        self.reject(bytes(msg.data), in_port)

    def reject(self, frame: bytes, in_port: int) -> None:
        """Answer ``frame`` with a RST / ICMP unreachable out of the port it came in on."""
        answer = reject.reject_reply(frame)
        dp = self.dp
        if answer is not None and dp is not None:
            self._send(ofmsg.packet_out(dp, answer, in_port))

    def reinject(self, frame: bytes, in_port: int) -> None:
        """Run ``frame`` through the pipeline again as if it had just come in on ``in_port``."""
        dp = self.dp
        if dp is not None:
            self._send(ofmsg.packet_out(dp, frame, spec.TABLE, in_port=in_port))

    def flow_counts(self, cookie: int, cookie_mask: int) -> dict[int, int]:
        """Packet counters of the flows whose cookie matches: cookie -> packets."""
        if self.dp is None:
            raise RuntimeError("switch not connected")
        body = self._request(
            ofmsg.flow_desc_request(self.dp, cookie=cookie, cookie_mask=cookie_mask)
        )
        return {f.cookie: f.packet_count or 0 for f in body}

    # -- worker ----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop:
            try:
                item = self._queue.get(timeout=self.audit_s)
            except queue.Empty:
                self._audit()
                continue
            if item is None:
                break
            if self._need_sync.is_set():
                self._need_sync.clear()
                self._release(item)
                self._drop_queued()
                self._sync_or_retry()
                continue
            if item[0] == "sync":
                continue
            delta, done = item
            try:
                if self.connected():
                    self._apply(delta)
            except Exception:
                LOG.exception("switch worker: applying %s failed", delta.summary())
            finally:
                done.set()

    @staticmethod
    def _release(item) -> None:
        if item[0] != "sync":
            item[1].set()

    def _drop_queued(self) -> None:
        """Deltas queued before a full sync are in the snapshot it takes; release them."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is None:
                self._stop = True
            else:
                self._release(item)

    def _audit(self) -> None:
        """Re-read an idle switch and repair whatever differs from the agent's state.

        Something outside the agent (an operator's ovs-ofctl, a restarted ovs-vswitchd that
        kept its database, a bug) may have changed the tables; nothing else would notice. It
        runs only when no change is being computed or queued, so every difference is drift.
        """
        if not self.connected():
            return
        with self.agent.quiet() as quiet:
            if not quiet or not self._queue.empty():
                return
            try:
                with paused_gc():
                    self._sync(audit=True)
            except Exception:
                LOG.exception("switch audit failed")

    def _sync_or_retry(self) -> None:
        try:
            with paused_gc():  # a dump of 70k flows is 70k more records to collect
                self._sync()
        except Exception:
            LOG.exception("switch reconcile failed; retrying in 1 s")
            if self.dp is not None:
                time.sleep(1)
                self._need_sync.set()
                self._queue.put(("sync", None))

    def _sync(self, audit: bool = False) -> None:
        """Read the switch's flows and groups and apply only the difference (one bundle).

        ``audit``: the switch should already hold everything; name each difference found.
        """
        dp = self.dp
        if dp is None:
            return
        started = time.monotonic()
        flows = self._request(ofmsg.flow_desc_request(dp))
        groups = self._request(ofmsg.group_desc_request(dp))
        want_flows, want_groups = self.agent.desired()

        delta = Delta()
        have = {(f.cookie, f.table_id) for f in flows}
        want = {(f.cookie, f.table): f for f in want_flows}
        delta.add_flows = [f for key, f in want.items() if key not in have]
        stale = sorted(key for key in have if key not in want)
        have_groups = {g.image.group_id: g.image for g in groups}
        delta.put_groups = [
            g for g in want_groups if have_groups.get(g.group_id) != ofwire.group_image(g)
        ]
        changed = [g for g in delta.put_groups if g.group_id in have_groups]
        for g in changed[:MAX_LOGGED]:
            LOG.info("group %#x differs on the switch; setting %s", g.group_id, group_text(g))
        wanted_ids = {g.group_id for g in want_groups}
        delta.del_groups = [gid for gid in have_groups if gid not in wanted_ids]
        msgs = self._messages(delta, stale)
        if audit:
            self._report_drift(delta, stale, len(flows), len(groups))
        if msgs:
            self._commit(dp, msgs, delta)
        if audit:
            return
        self.synced_at = time.time()
        self.last_sync = {
            "had_flows": len(flows),
            "had_groups": len(groups),
            "added_flows": len(delta.add_flows),
            "deleted_flows": len(stale),
            "set_groups": len(delta.put_groups),
            "deleted_groups": len(delta.del_groups),
        }
        LOG.info(
            "switch reconciled in %.2fs: had %d flows/%d groups, %s, %d stale flows",
            time.monotonic() - started,
            len(flows),
            len(groups),
            delta.summary(),
            len(stale),
        )

    def _report_drift(self, delta: Delta, stale: list, had_flows: int, had_groups: int) -> None:
        """Log what an audit found different (and is about to repair), one line per item."""
        self.last_audit = {
            "at": time.time(),
            "had_flows": had_flows,
            "had_groups": had_groups,
            "missing_flows": len(delta.add_flows),
            "stale_flows": len(stale),
            "set_groups": len(delta.put_groups),
            "deleted_groups": len(delta.del_groups),
        }
        if not (delta or stale):
            LOG.debug("switch audit: %d flows, %d groups as expected", had_flows, had_groups)
            return
        self.drift_repairs += 1
        LOG.warning(
            "switch audit: drift found and repaired: %d flows missing, %d stale flows, "
            "%d groups set, %d groups deleted",
            len(delta.add_flows),
            len(stale),
            len(delta.put_groups),
            len(delta.del_groups),
        )
        for f in delta.add_flows[:MAX_LOGGED]:
            LOG.warning("switch audit: missing flow of %s: %s", f.owner, flow_text(f))
        for cookie, table in stale[:MAX_LOGGED]:
            LOG.warning("switch audit: stale flow cookie %#x in table %d", cookie, table)

    def _apply(self, delta: Delta) -> None:
        dp = self.dp
        msgs = self._messages(delta, [(f.cookie, f.table) for f in delta.del_flows])
        if msgs:
            self._commit(dp, msgs, delta)
            self.applied += 1
            LOG.debug("applied %s", delta.summary())

    @staticmethod
    def _messages(delta: Delta, stale_flows) -> _Messages:
        """Bundle order: groups set, old flows out, new flows in, then unused groups out."""
        return _Messages(delta, list(stale_flows))

    def _commit(self, dp, msgs: list, delta: Delta) -> None:
        """Send ``msgs`` as one atomic bundle; on refusal retry owner by owner."""
        try:
            self._bundle(dp, msgs)
            return
        except BundleError as exc:
            self.last_error = str(exc)
            if self.dp is not dp:
                LOG.warning("bundle of %s lost: %s", delta.summary(), exc)
                return  # the next connection's reconcile takes over
            LOG.error("bundle of %s refused (%s); retrying per owner", delta.summary(), exc)
        for owner, part in _split(delta).items():
            part_msgs = self._messages(part, [(f.cookie, f.table) for f in part.del_flows])
            try:
                self._bundle(dp, part_msgs)
            except BundleError as exc:
                LOG.error("owner %s: switch refused its flows/groups: %s", owner, exc)
                if self.dp is not dp:
                    return

    def _bundle(self, dp, msgs: _Messages) -> None:
        """Send ``msgs`` as one bundle and wait for its commit."""
        bundle_id = next(self._bundle_ids) & 0xFFFFFFFF
        count = len(msgs) + 2
        with self._send_lock:
            first = _reserve_xids(dp, count)
        xids = [(first + i) & 0xFFFFFFFF for i in range(count)]
        pending = _Pending(final_xid=xids[-1])
        with self._plock:
            self._pending.update(dict.fromkeys(xids, pending))
        # Messages are encoded while earlier chunks are on their way (the switch works on
        # those meanwhile), and go out without a barrier in between; the lock is taken per
        # chunk so that a packet-out may go between two chunks of a large bundle.
        sent, opened = True, False
        parts = ofwire.bundle_parts(bundle_id, msgs, first)
        try:
            with paused_gc(count > TRIM_AFTER):
                for chunk in _chunks(parts, SEND_CHUNK):
                    with self._send_lock:
                        sent = self.dp is dp and dp.send(chunk)
                    if not sent:
                        break
                    opened = True
        except (ValueError, struct.error) as exc:  # a record with no OpenFlow encoding
            with self._send_lock:
                discard = ofwire.bundle_ctrl(bundle_id, ofp.OFPBCT_DISCARD_REQUEST, xids[-1])
                if opened and self.dp is dp:
                    dp.send(discard)
            with self._plock:
                for xid in xids:
                    self._pending.pop(xid, None)
            raise BundleError(f"not encodable: {exc}") from None
        ok = sent and pending.done.wait(REPLY_TIMEOUT)
        with self._plock:
            for xid in xids:
                self._pending.pop(xid, None)
        if count > TRIM_AFTER:
            _trim_heap()
        if not sent:
            raise BundleError("switch disconnected")
        if not ok:
            raise BundleError("no commit reply")
        if pending.errors:
            raise BundleError(", ".join(pending.errors))

    def _request(self, msg) -> list:
        """Send a multipart request and return the bodies of all reply parts."""
        pending = _Pending()
        with self._send_lock:
            self.dp.set_xid(msg)
            with self._plock:
                self._pending[msg.xid] = pending
            self.dp.send_msg(msg)
        ok = pending.done.wait(REPLY_TIMEOUT)
        with self._plock:
            self._pending.pop(msg.xid, None)
        if not ok or pending.errors:
            raise RuntimeError(
                f"request {type(msg).__name__} failed: {', '.join(pending.errors) or 'timeout'}"
            )
        return pending.body

    def _send(self, msg) -> None:
        with self._send_lock:
            msg.datapath.send_msg(msg)

    def status(self) -> dict:
        """Connection facts for the health endpoint."""
        dp = self.dp
        return {
            "connected": dp is not None,
            "dpid": f"{dp.id:016x}" if dp and dp.id else None,
            "reconciled": self.synced_at is not None,
            "reconciled_at": self.synced_at,
            "last_reconcile": self.last_sync,
            "deltas_applied": self.applied,
            "last_error": self.last_error,
            "last_audit": self.last_audit,
            "drift_repairs": self.drift_repairs,
        }


def _ipv4(value) -> str | None:
    """An IPv4 address from a 32-bit register value (None for 0 or None)."""
    if not value:
        return None
    return str(ipaddress.IPv4Address(value if isinstance(value, int) else value[0]))


def _load_libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _load_libc()


def _trim_heap() -> None:
    """Hand the heap that a large change freed (table parse, encoding) back to the system:
    glibc keeps it otherwise, ~10 MB of resident memory after 10k services."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _reserve_xids(dp, count: int) -> int:
    """Take ``count`` consecutive xids from the datapath's counter; return the first."""
    first = (dp.xid + 1) & 0xFFFFFFFF
    dp.xid = (dp.xid + count) & 0xFFFFFFFF
    return first


@dataclass
class _Messages:
    """The messages of a delta in bundle order, encoded only while they are sent."""

    delta: Delta
    stale_flows: list

    def __len__(self) -> int:
        d = self.delta
        return len(d.put_groups) + len(self.stale_flows) + len(d.add_flows) + len(d.del_groups)

    def __iter__(self) -> Iterator[bytes]:
        for g in self.delta.put_groups:
            yield ofwire.group_mod(g, OFPGC_ADD_OR_MOD)
        for cookie, table in self.stale_flows:
            yield ofwire.flow_delete_cookie(cookie, table)
        for f in self.delta.add_flows:
            yield ofwire.flow_add(f)
        for gid in self.delta.del_groups:
            yield ofwire.group_delete(gid)


def _chunks(parts: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Concatenations of consecutive ``parts`` of about ``size`` bytes each."""
    buf: list[bytes] = []
    length = 0
    for part in parts:
        buf.append(part)
        length += len(part)
        if length >= size:
            yield b"".join(buf)
            buf, length = [], 0
    if buf:
        yield b"".join(buf)


def _split(delta: Delta) -> dict[str, Delta]:
    parts: dict[str, Delta] = {}
    for f in delta.add_flows:
        parts.setdefault(f.owner, Delta()).add_flows.append(f)
    for f in delta.del_flows:
        parts.setdefault(f.owner, Delta()).del_flows.append(f)
    for g in delta.put_groups:
        parts.setdefault(g.owner, Delta()).put_groups.append(g)
    if delta.del_groups:
        parts.setdefault("(groups)", Delta()).del_groups.extend(delta.del_groups)
    return parts


class OaknetApp(app_manager.OSKenApp):
    """The os-ken application: forwards switch events to the agent's ``Switch``."""

    OFP_VERSIONS = (ofp.OFP_VERSION,)

    def __init__(self, *args, switch: Switch | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.switch = switch

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def _features(self, ev):
        self.switch.on_connect(ev.msg.datapath, ev.msg.datapath_id)

    @set_ev_cls(ofp_event.EventOFPStateChange, DEAD_DISPATCHER)
    def _dead(self, ev):
        self.switch.on_disconnect(ev.datapath)

    @set_ev_cls(
        [ofp_event.EventOFPFlowDescStatsReply, ofp_event.EventOFPGroupDescStatsReply],
        MAIN_DISPATCHER,
    )
    def _stats(self, ev):
        self.switch.on_reply(ev.msg, last=not ev.msg.flags & ofp.OFPMPF_REPLY_MORE)

    @set_ev_cls(ofp_event.EventOFPBundleCtrlMsg, MAIN_DISPATCHER)
    def _bundle(self, ev):
        if ev.msg.type == ofp.OFPBCT_COMMIT_REPLY:
            self.switch.on_reply(ev.msg)

    @set_ev_cls(ofp_event.EventOFPErrorMsg, _ANY_STATE)
    def _error(self, ev):
        self.switch.on_error(ev.msg)

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _packet_in(self, ev):
        self.switch.on_packet_in(ev.msg)
