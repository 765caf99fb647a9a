"""A JSON Lines table file: one service per line, only new lines decoded, errors by line."""

import json
import random

import pytest

from oaknet.model import Instance, Service, ServiceIP
from sdn.table import TableError, TableFile, load_table, parse_lines

pytestmark = pytest.mark.unit


def svc(name: str, ip: str, *instances: str) -> dict:
    """A service dict as the table file holds it (instances placed on 192.0.2.2)."""
    return {
        "name": name,
        "service_ips": [{"policy": "round-robin", "ipv4": ip}],
        "instances": [
            {"number": n, "instance_ip": addr, "node_ip": "192.0.2.2"}
            for n, addr in enumerate(instances)
        ],
    }


A = svc("a.b.c.d", "10.30.0.1", "10.30.1.1")
B = svc("e.f.g.h", "10.30.0.2", "10.30.1.2")
C = svc("i.j.k.l", "10.30.0.3")


def write(path, *lines: str) -> None:
    """Replace the file with these lines (dicts are written as one JSON line each)."""
    text = "".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines)
    path.write_text(text)


def test_lines_comments_and_blank_lines(tmp_path):
    path = tmp_path / "t.jsonl"
    write(path, "# generated table", A, "", "   ", "  # indented comment", B)
    table = TableFile(str(path)).read()
    assert list(table) == ["a.b.c.d", "e.f.g.h"]
    assert table["a.b.c.d"] == Service(
        "a.b.c.d",
        service_ips=[ServiceIP("round-robin", "10.30.0.1")],
        instances=[Instance(0, "10.30.1.1", node_ip="192.0.2.2")],
    )
    assert load_table(str(path)) == table
    # Windows line ends and surrounding blanks change nothing.
    path.write_bytes(b"  " + json.dumps(A).encode() + b" \r\n\r\n" + json.dumps(B).encode())
    assert load_table(str(path)) == table
    path.write_text("# nothing yet\n")
    assert load_table(str(path)) == {}


def test_changed_line_is_parsed_and_unchanged_lines_are_reused(tmp_path, monkeypatch):
    path = tmp_path / "t.jsonl"
    write(path, A, B, C)
    watched = TableFile(str(path))
    first = watched.read()
    assert watched.changed() is None

    decoded = []
    real_loads = json.loads
    monkeypatch.setattr(json, "loads", lambda text: decoded.append(text) or real_loads(text))
    moved = svc("e.f.g.h", "10.30.0.2", "10.30.1.2", "10.30.1.9")
    write(path, A, moved, C)
    second = watched.changed()
    assert decoded == [json.dumps(moved).encode()]  # the one changed line, nothing else
    assert second["a.b.c.d"] is first["a.b.c.d"] and second["i.j.k.l"] is first["i.j.k.l"]
    assert [i.instance_ip for i in second["e.f.g.h"].instances] == ["10.30.1.2", "10.30.1.9"]

    # Moving lines around and adding comments decodes nothing.
    decoded.clear()
    write(path, C, "# moved", A, moved)
    third = watched.changed()
    assert decoded == [] and sorted(third) == ["a.b.c.d", "e.f.g.h", "i.j.k.l"]
    assert all(third[n] is second[n] for n in third)

    # A removed line is forgotten: writing it back decodes it again.
    write(path, A, moved)
    assert sorted(watched.changed()) == ["a.b.c.d", "e.f.g.h"]
    write(path, A, moved, C)
    decoded.clear()
    assert sorted(watched.changed()) == ["a.b.c.d", "e.f.g.h", "i.j.k.l"]
    assert decoded == [json.dumps(C).encode()]


def test_a_bad_line_is_named_and_changes_nothing(tmp_path):
    path = tmp_path / "t.jsonl"
    write(path, A, B)
    watched = TableFile(str(path))
    first = watched.read()
    cases = [
        ((A, "# c", '{"name": "e.f.g.h", '), r"t\.jsonl: line 3, column \d+: not valid JSON"),
        ((A, "", '["a.b.c.d"]'), r"t\.jsonl: line 3: service: must be an object"),
        ((A, {**B, "name": "bad"}), r"t\.jsonl: line 2: job_name: 'bad' is not"),
        ((A, {**B, "instances": [{"number": 0, "colour": 1}]}), r"line 2: service: .*colour"),
        ((A, svc("e.f.g.h", "10.30.0.2", "fdff::1")), r"line 2: instance_ip: fdff::1 is not"),
        ((A, B, "", {**A, "job_id": "x"}), r"line 4: service a\.b\.c\.d is listed twice \(fir"),
        ((A, B, A), r"line 3: service a\.b\.c\.d is listed twice \(first on line 1\)"),
    ]
    for lines, error in cases:
        write(path, *lines)
        with pytest.raises(TableError, match=error):
            watched.changed()
        assert watched.changed() is None  # the same bad file is not read again
    path.write_bytes(json.dumps(A).encode() + b"\n\xff\xfe\n")
    with pytest.raises(TableError, match="line 2"):
        watched.changed()

    # The next good file is read against the last good one: unchanged lines are reused.
    write(path, B, A)
    again = watched.changed()
    assert again["a.b.c.d"] is first["a.b.c.d"] and again["e.f.g.h"] is first["e.f.g.h"]


def test_parse_lines_without_a_file():
    data = ("\n".join(json.dumps(s) for s in (A, B)) + "\n").encode()
    assert list(parse_lines(data)) == ["a.b.c.d", "e.f.g.h"]
    assert parse_lines(data.rstrip(b"\n")) == parse_lines(data)
    assert parse_lines(b"") == parse_lines(b"\n\n# empty\n") == {}
    with pytest.raises(TableError, match="line 1"):
        parse_lines(b"{}\n")


def test_random_edits_read_like_the_whole_file(tmp_path):
    """Whatever the edit (lines added, removed, changed, moved, blank, comments, CRLF, a last
    line without newline), the re-read table equals a fresh read of the file, and every line
    that is still there keeps its service object."""
    rng = random.Random(7)
    pool = [svc(f"s.ns.x{i}.ns", f"10.30.0.{i + 1}", f"10.30.1.{i + 1}") for i in range(40)]
    variants = [
        *(json.dumps(s) for s in pool),
        *(json.dumps({**s, "job_id": "v2"}) for s in pool[:10]),
        # Other names holding an address of the pool: refused while the owner is there.
        json.dumps(svc("s.ns.dup.ns", "10.30.0.1")),
        json.dumps(svc("s.ns.dupi.ns", "10.30.0.250", "10.30.1.2")),
        "",
        "# comment",
        "  ",
    ]
    path = tmp_path / "t.jsonl"
    lines = [json.dumps(s) for s in pool[:20]]
    watched = TableFile(str(path))
    previous: dict[str, Service] = {}
    for step in range(300):
        for _ in range(rng.randint(1, 3)):
            op = rng.choice(("add", "drop", "change", "move"))
            at = rng.randint(0, len(lines))
            if op == "add" or not lines:
                lines.insert(at, rng.choice(variants))
            elif op == "drop":
                del lines[min(at, len(lines) - 1)]
            elif op == "change":
                lines[min(at, len(lines) - 1)] = rng.choice(variants)
            else:
                lines.insert(at, lines.pop(rng.randrange(len(lines))))
        end = rng.choice(("\n", "\r\n"))
        text = end.join(lines) + rng.choice((end, ""))
        path.write_bytes(text.encode())
        if not text:  # zero bytes: refused, the last good table stays
            with pytest.raises(TableError, match="the file is empty"):
                watched.read()
            continue
        try:
            expected = parse_lines(text.encode())
        except TableError as exc:
            with pytest.raises(TableError) as raised:
                watched.read()
            assert str(raised.value) == f"{path}: {exc}", step
            continue
        got = watched.read()
        assert got == expected, step
        for name, service in got.items():
            if name in previous and previous[name] == service:
                assert service is previous[name], (step, name)
        previous = got


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".yaml"])
def test_an_emptied_file_keeps_the_last_table_and_an_empty_table_is_explicit(tmp_path, suffix):
    """Zero bytes is what a writer leaves between truncating and writing: refused. A table
    without services says so (a comment line, or [] in JSON)."""
    path = tmp_path / f"t{suffix}"
    path.write_text(json.dumps(A) + "\n" if suffix == ".jsonl" else json.dumps([A]))
    watched = TableFile(str(path))
    assert list(watched.read()) == ["a.b.c.d"]
    path.write_bytes(b"")
    with pytest.raises(TableError, match=rf"t\{suffix}: the file is empty"):
        watched.changed()
    path.write_text("[]" if suffix == ".json" else "# no services\n")
    assert watched.changed() == {}
    path.unlink()
    with pytest.raises(TableError) as missing:
        watched.changed()
    assert str(missing.value) == f"{path}: No such file or directory"


def test_an_address_two_services_hold_is_refused_with_both_lines(tmp_path):
    path = tmp_path / "t.jsonl"
    write(path, A, B, C)
    watched = TableFile(str(path))
    first = watched.read()
    taken_sip = svc("m.n.o.p", "10.30.0.2")  # B's service IP
    taken_inst = svc("m.n.o.p", "10.30.0.9", "10.30.1.1")  # A's instance IP
    for lines, error in (
        ((A, B, C, taken_sip), r"line 4: address 10\.30\.0\.2 is e\.f\.g\.h's already \(line 2\)"),
        (
            (A, B, C, taken_inst),
            r"line 4: address 10\.30\.1\.1 is a\.b\.c\.d's already \(line 1\)",
        ),
    ):
        write(path, *lines)
        with pytest.raises(TableError, match=error):
            watched.changed()
    # The address moves when its holder lets it go in the same change.
    write(path, A, C, taken_sip)
    moved = watched.changed()
    assert (
        sorted(moved) == ["a.b.c.d", "i.j.k.l", "m.n.o.p"] and moved["a.b.c.d"] is first["a.b.c.d"]
    )
    # IPv6 has several spellings of one address; JSON tables are checked too.
    six = {**C, "service_ips": [{"policy": "round-robin", "ipv6": "fdff:2000::1"}]}
    other = {
        **svc("q.r.s.t", "10.30.0.7"),
        "service_ips": [{"policy": "round-robin", "ipv6": "fdff:2000:0::0:1"}],
    }
    write(path, A, six, other)
    with pytest.raises(TableError, match="address fdff:2000::1 is i.j.k.l's already"):
        watched.changed()
    doc = tmp_path / "t.json"
    doc.write_text(json.dumps([A, six, other]))
    with pytest.raises(TableError, match=r"service #2: address fdff:2000::1 is i\.j\.k\.l's"):
        load_table(str(doc))
