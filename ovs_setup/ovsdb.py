"""One shared ovsdbapp connection per OVSDB URL, opened on first use."""

from __future__ import annotations

import logging
import threading
import time

from ovsdbapp.backend.ovs_idl import command, connection, idlutils
from ovsdbapp.schema.open_vswitch import impl_idl

LOG = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10

_apis: dict[str, impl_idl.OvsdbIdl] = {}
_lock = threading.Lock()


def get_api(db_url: str, timeout: int = DEFAULT_TIMEOUT) -> impl_idl.OvsdbIdl:
    """Return the ovsdbapp Open_vSwitch API for ``db_url``, connecting on first use."""
    with _lock:
        api = _apis.get(db_url)
        if api is None:
            idl = connection.OvsdbIdl.from_server(db_url, "Open_vSwitch")
            conn = connection.Connection(idl=idl, timeout=timeout)
            # ovsdbapp keeps the connection on the API class, so each server gets its own
            # subclass; otherwise every node in one process would share the first connection.
            cls = type("OvsdbIdlFor", (impl_idl.OvsdbIdl,), {"_ovsdb_connection": None})
            api = cls(conn)
            _apis[db_url] = api
            LOG.debug("connected to %s", db_url)
        return api


def close_api(db_url: str) -> None:
    """Stop the connection thread for ``db_url`` (before its ovsdb-server goes away)."""
    with _lock:
        api = _apis.pop(db_url, None)
    if api is not None:
        api.ovsdb_connection.stop(timeout=5)
        LOG.debug("disconnected from %s", db_url)


def close_all() -> None:
    """Stop every cached connection."""
    for db_url in list(_apis):
        close_api(db_url)


def commit(api, cmd) -> object:
    """Run one command in its own transaction (waits for ovs-vswitchd); return its result."""
    with api.transaction(check_error=True) as txn:
        txn.add(cmd)
    return cmd.result


def find_interface(api, name: str) -> dict | None:
    """Return a copy of the Interface row's columns we use, or None if there is no such row."""
    with api.ovsdb_connection.lock:
        row = idlutils.row_by_value(api.idl, "Interface", "name", name, None)
        if row is None:
            return None
        return {
            "ofport": row.ofport,
            "error": row.error,
            "bfd": dict(row.bfd),
            "bfd_status": dict(row.bfd_status),
            "mac_in_use": row.mac_in_use,
            "external_ids": dict(row.external_ids),
        }


def ofport_value(value) -> int | None:
    """Return an Interface.ofport column as a number, None when unset or failed (-1)."""
    if isinstance(value, list):
        value = value[0] if value else None
    return None if value in (None, -1) else int(value)


def wait_ofport(api, name: str, timeout: float = 5.0) -> int:
    """Wait for ovs-vswitchd to number an interface; raise with OVS's reason if it fails."""
    deadline = time.monotonic() + timeout
    while True:
        row = find_interface(api, name)
        if row is None:
            raise OvsPortError(f"port {name}: not in the database")
        ofport = ofport_value(row["ofport"])
        if ofport is not None:
            return ofport
        error = row["error"][0] if row["error"] else None
        if error or time.monotonic() > deadline:
            raise OvsPortError(f"port {name}: {error or 'ovs-vswitchd gave it no ofport'}")
        time.sleep(0.02)


class EnsureBridge(command.BaseCommand):
    """Create or update a bridge and its controllers in one transaction."""

    def __init__(
        self,
        api,
        name: str,
        datapath_type: str,
        columns: dict,
        other_config: dict[str, str],
        controllers: list[str] | None,
        controller_columns: dict,
    ):
        super().__init__(api)
        self.name = name
        self.datapath_type = datapath_type
        self.columns = columns
        self.other_config = other_config
        self.controllers = controllers
        self.controller_columns = controller_columns

    def run_idl(self, txn):
        tables = self.api.tables
        bridge = idlutils.row_by_value(self.api.idl, "Bridge", "name", self.name, None)
        created = bridge is None
        if created:
            bridge = txn.insert(tables["Bridge"])
            bridge.name = self.name
            iface = txn.insert(tables["Interface"])
            iface.name = self.name
            iface.type = "internal"
            port = txn.insert(tables["Port"])
            port.name = self.name
            port.interfaces = [iface]
            bridge.ports = [port]
            self.api._ovs.addvalue("bridges", bridge)
        _set_columns(bridge, {"datapath_type": self.datapath_type, **self.columns})
        for key, value in self.other_config.items():
            bridge.setkey("other_config", key, value)
        if self.controllers is not None:
            self._ensure_controllers(txn, bridge, created)
        self.result = created

    def _ensure_controllers(self, txn, bridge, created: bool) -> None:
        current = {row.target: row for row in getattr(bridge, "controller", [])}
        if sorted(current) != sorted(self.controllers):
            if not created and not current:
                # OVS flushes every flow and group when the controller list becomes non-empty.
                LOG.warning(
                    "bridge %s had no controller: setting one flushes its flows", self.name
                )
            rows = []
            for target in self.controllers:
                row = current.get(target) or txn.insert(self.api.tables["Controller"])
                row.target = target
                rows.append(row)
            bridge.controller = rows
            current = {row.target: row for row in rows}
        for row in current.values():
            _set_columns(row, self.controller_columns)


class EnsurePort(command.BaseCommand):
    """Create or update a one-interface port on a bridge; refuse one on another bridge."""

    def __init__(
        self,
        api,
        bridge: str,
        name: str,
        iface_columns: dict,
        port_columns: dict | None = None,
        may_exist: bool = True,
    ):
        super().__init__(api)
        self.bridge = bridge
        self.name = name
        self.iface_columns = iface_columns
        self.port_columns = port_columns or {}
        self.may_exist = may_exist

    def run_idl(self, txn):
        tables = self.api.tables
        bridge = idlutils.row_by_value(self.api.idl, "Bridge", "name", self.bridge)
        port = idlutils.row_by_value(self.api.idl, "Port", "name", self.name, None)
        if port is not None:
            if not self.may_exist:
                raise PortExists(f"port {self.name} exists")
            if port not in bridge.ports:
                raise PortExists(f"port {self.name} exists on another bridge")
            iface = port.interfaces[0]
        else:
            iface = txn.insert(tables["Interface"])
            iface.name = self.name
            port = txn.insert(tables["Port"])
            port.name = self.name
            port.interfaces = [iface]
            bridge.addvalue("ports", port)
        _set_columns(iface, self.iface_columns)
        _set_columns(port, self.port_columns)
        self.result = iface.uuid


class OvsPortError(RuntimeError):
    """OVS could not create or configure a port; the message carries its reason."""


class PortExists(RuntimeError):
    """A port of that name is already there (and may not be reused)."""


def _set_columns(row, columns: dict) -> None:
    """Write only the columns whose value differs, so a repeated ensure changes nothing."""
    for column, value in columns.items():
        current = getattr(row, column, None)  # a row inserted in this txn has no columns yet
        # Optional columns read back as a 0/1-element list.
        if isinstance(current, list) and not isinstance(value, list) and len(current) <= 1:
            current = current[0] if current else None
        if current != value:
            setattr(row, column, value)
