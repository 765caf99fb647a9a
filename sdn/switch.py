"""The os-ken side of the agent: reconcile the switch, send deltas as bundles, reject packets.

os-ken 4.2 runs on its native thread hub: the app's handlers run in the app's event thread,
so nothing there waits for the switch. A worker thread does the waiting (dumps, bundle
commits) and the handlers only hand replies over to it.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import queue
import threading
import time
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

from sdn import ofcodec, ofmsg, reject, spec
from sdn.agent import Agent
from sdn.delta import Delta
from sdn.logic_text import group_text

LOG = logging.getLogger(__name__)

OFPGC_ADD_OR_MOD = 0x8000  # OVS extension: add a group or replace an existing one
REPLY_TIMEOUT = 30.0
MAX_LOGGED = 20  # changed groups logged one by one at a reconcile
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
        self._worker = threading.Thread(target=self._run, name="switch-worker", daemon=True)
        self._worker.start()
        self.resolver = None  # sdn.resolver.Resolver in cluster mode: unknown addresses
        self.peer_seen = None  # cluster mode: a node's BFD reached the any-peer port
        ofcodec.use_raw_stats_parsers()
        agent.sink = self

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
            item = self._queue.get()
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

    def _sync_or_retry(self) -> None:
        try:
            self._sync()
        except Exception:
            LOG.exception("switch reconcile failed; retrying in 1 s")
            if self.dp is not None:
                time.sleep(1)
                self._need_sync.set()
                self._queue.put(("sync", None))

    def _sync(self) -> None:
        """Read the switch's flows and groups and apply only the difference (one bundle)."""
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
            g for g in want_groups if have_groups.get(g.group_id) != ofmsg.group_image(g)
        ]
        changed = [g for g in delta.put_groups if g.group_id in have_groups]
        for g in changed[:MAX_LOGGED]:
            LOG.info("group %#x differs on the switch; setting %s", g.group_id, group_text(g))
        wanted_ids = {g.group_id for g in want_groups}
        delta.del_groups = [gid for gid in have_groups if gid not in wanted_ids]
        msgs = self._messages(dp, delta, stale)
        if msgs:
            self._commit(dp, msgs, delta)
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

    def _apply(self, delta: Delta) -> None:
        dp = self.dp
        msgs = self._messages(dp, delta, [(f.cookie, f.table) for f in delta.del_flows])
        if msgs:
            self._commit(dp, msgs, delta)
            self.applied += 1
            LOG.debug("applied %s", delta.summary())

    @staticmethod
    def _messages(dp, delta: Delta, stale_flows) -> list:
        """Bundle order: groups set, old flows out, new flows in, then unused groups out."""
        msgs = [ofmsg.group_mod(dp, g, OFPGC_ADD_OR_MOD) for g in delta.put_groups]
        msgs += [ofmsg.flow_delete_cookie(dp, cookie, table) for cookie, table in stale_flows]
        msgs += [ofmsg.flow_add(dp, f) for f in delta.add_flows]
        msgs += [ofmsg.group_delete(dp, gid) for gid in delta.del_groups]
        return msgs

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
            part_msgs = self._messages(dp, part, [(f.cookie, f.table) for f in part.del_flows])
            try:
                self._bundle(dp, part_msgs)
            except BundleError as exc:
                LOG.error("owner %s: switch refused its flows/groups: %s", owner, exc)
                if self.dp is not dp:
                    return

    def _bundle(self, dp, msgs: list) -> None:
        bundle_id = next(self._bundle_ids) & 0xFFFFFFFF
        parts = ofmsg.bundle(dp, bundle_id, msgs)
        pending = _Pending()
        with self._send_lock:
            for m in parts:
                dp.set_xid(m)
        pending.final_xid = parts[-1].xid
        with self._plock:
            for m in parts:
                self._pending[m.xid] = pending
        # The lock is taken per message: a packet-out may go between two bundle parts
        # instead of waiting seconds for a large bundle.
        sent = True
        for m in parts:
            with self._send_lock:
                sent = sent and self.dp is dp and dp.send_msg(m)
        ok = sent and pending.done.wait(REPLY_TIMEOUT)
        with self._plock:
            for m in parts:
                self._pending.pop(m.xid, None)
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
        }


def _ipv4(value) -> str | None:
    """An IPv4 address from a 32-bit register value (None for 0 or None)."""
    if not value:
        return None
    return str(ipaddress.IPv4Address(value if isinstance(value, int) else value[0]))


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
