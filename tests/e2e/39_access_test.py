#!/usr/bin/env python3
"""Layer 39: no open proxy (issue 11, docs/security.md).

With the real binary and its default [access] rules (only the ports are
widened where a loopback origin must be reachable):
- a client outside access.allow_clients gets 403, nothing is connected;
- CONNECT to a port outside access.connect_ports gets 403 before any DNS;
- loopback, a name resolving to loopback, the metadata address and the
  proxy's own admin port are refused (403) as destinations, for CONNECT and
  for plain HTTP, while an allow_destinations exception works;
- at limits.max_connections and limits.max_connections_per_client a new
  CONNECT gets a quick 503 with Retry-After while held connections and other
  clients keep working, and a slot freed is usable again;
- each refusal has its `cause` on the log line and in
  sightline_connection_failures_total;
- [process] user = "nobody": the proxy runs as nobody with no capabilities,
  no_new_privs and non-dumpable, and still intercepts; with a TPROXY
  listener that spoofs the source it keeps CAP_NET_ADMIN and nothing else.
"""

import os
import pwd
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

CAP_NET_ADMIN = 1 << 12


def connect_from(proxy_port, target, source="127.0.0.1", timeout=10.0):
    """CONNECT from a chosen loopback source address: (sock, code, head)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(("127.0.0.1", proxy_port))
    s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target)).encode())
    code, head = h.read_response_head(s)
    return s, code, head


def expect_refusal(proxy, target, code_wanted, cause, text):
    m = proxy.mark()
    s, code, head = connect_from(proxy.port, target)
    s.close()
    assert code == code_wanted, "CONNECT %s: expected %d, got %r" % (target, code_wanted, head[:200])
    ev = proxy.wait_event(lambda e: e.get("event") == "connection" and e.get("target") == target, since=m)
    assert ev is not None, "no connection line for %s" % target
    assert ev.get("cause") == cause, "cause %r, close_reason %r" % (ev.get("cause"), ev.get("close_reason"))
    assert text in ev.get("close_reason", ""), "close_reason %r lacks %r" % (ev.get("close_reason"), text)
    assert ev.get("upstream_addr", "") == "", "something was connected: %r" % ev.get("upstream_addr")
    return ev


def get_1k(s, pki):
    """GET /1k through an established tunnel, TLS with the forged certificate."""
    ss = h.tls_over(s, h.client_context(pki.ca_cert), "127.0.0.1")
    ss.sendall(b"GET /1k HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    status, _, body = h.read_http_response(ss)
    assert status == 200 and len(body) == 1024, (status, len(body))
    return ss


def proc_status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def task_caps(pid):
    """CapEff of every thread of pid."""
    caps = []
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    caps.append(int(line.split()[1], 16))
    return caps


def main(t):
    pki = t.pki()
    origin = t.start_nginx(pki, certs=["valid-ec"])
    op = origin.port("valid-ec")

    # Default destinations and clients; only the ports are opened up so the
    # loopback origin's port passes the port check.
    strict = t.start_proxy(pki, name="strict", extra='[access]\nconnect_ports = ["1-65535"]\n'
                                                      'http_ports = ["1-65535"]\n')

    with t.check("loopback destination refused (403, access_destination), nothing connected"):
        expect_refusal(strict, "127.0.0.1:%d" % op, 403, "access_destination", "deny_destinations")

    with t.check("a name resolving to loopback is refused like the address"):
        expect_refusal(strict, "localhost:%d" % op, 403, "access_destination", "deny_destinations")

    with t.check("the metadata address 169.254.169.254 is refused"):
        expect_refusal(strict, "169.254.169.254:443", 403, "access_destination", "169.254.169.254")

    with t.check("IPv6 loopback and an IPv4-mapped loopback are refused"):
        expect_refusal(strict, "[::1]:%d" % op, 403, "access_destination", "deny_destinations")
        expect_refusal(strict, "[::ffff:127.0.0.1]:%d" % op, 403, "access_destination", "deny_destinations")

    with t.check("plain HTTP to loopback: 403, not forwarded"):
        m = strict.mark()
        s = socket.create_connection(("127.0.0.1", strict.port), timeout=10)
        s.sendall(("GET http://127.0.0.1:%d/1k HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (op, op)).encode())
        code, head = h.read_response_head(s)
        s.close()
        assert code == 403, "expected 403, got %r" % head[:200]
        ev = strict.wait_event(lambda e: e.get("event") == "connection" and e.get("action") == "http", since=m)
        assert ev is not None and ev.get("cause") == "access_destination", ev

    with t.check("the proxy's own admin port is refused even when loopback is allowed"):
        own = t.start_proxy(pki, name="own", extra='[access]\nconnect_ports = ["1-65535"]\n'
                                                   'allow_destinations = ["127.0.0.0/8"]\n')
        expect_refusal(own, "127.0.0.1:%d" % own.admin_port, 403, "access_destination", "own listeners")
        expect_refusal(own, "127.0.0.1:%d" % own.port, 403, "access_destination", "own listeners")

    with t.check("an allow_destinations exception reaches the loopback origin"):
        s, code, head = connect_from(own.port, "127.0.0.1:%d" % op)
        try:
            assert code == 200, head[:200]
            get_1k(s, pki)
        finally:
            s.close()

    with t.check("default connect_ports: 443 and 8443 only (403 access_port, before any DNS)"):
        default = t.start_proxy(pki, name="default", extra="[access]\n")
        expect_refusal(default, "example.invalid:22", 403, "access_port", "access.connect_ports")
        expect_refusal(default, "127.0.0.1:%d" % op, 403, "access_port", "access.connect_ports")
        # 443 passes the port check and then meets the destination check.
        expect_refusal(default, "127.0.0.1:443", 403, "access_destination", "deny_destinations")

    with t.check("a client outside allow_clients gets 403 (access_client)"):
        closed = t.start_proxy(pki, name="closed", extra='[access]\nallow_clients = ["10.0.0.0/8"]\n'
                                                         'connect_ports = ["1-65535"]\n')
        m = closed.mark()
        s, code, head = connect_from(closed.port, "127.0.0.1:%d" % op)
        me = "127.0.0.1:%d" % s.getsockname()[1]
        s.close()
        assert code == 403, head[:200]
        ev = closed.wait_event(lambda e: e.get("event") == "connection" and e.get("client") == me, since=m)
        assert ev is not None and ev.get("cause") == "access_client", ev
        assert "allow_clients" in ev.get("close_reason", ""), ev

    with t.check("refusals are counted by cause"):
        counts = h.failure_counts(strict)
        assert counts.get("access_destination", 0) >= 6, counts
        assert h.failure_counts(default).get("access_port", 0) == 2, h.failure_counts(default)
        # The harness's readiness probe was refused too.
        assert h.failure_counts(closed).get("access_client", 0) >= 1, h.failure_counts(closed)

    limited = t.start_proxy(pki, name="limited", extra='[limits]\nmax_connections = 3\nmax_connections_per_client = 2\n')
    target = "127.0.0.1:%d" % op
    held = []
    try:
        with t.check("per-client limit: the third connection from one address gets 503", fatal=True):
            for _ in range(2):
                s, code, head = connect_from(limited.port, target)
                held.append(s)
                assert code == 200, head[:200]
            s, code, head = connect_from(limited.port, target)
            s.close()
            assert code == 503, "expected 503, got %r" % head[:200]
            assert "retry-after: 1" in head.lower(), head

        with t.check("another client address is still served up to the global limit"):
            s, code, head = connect_from(limited.port, target, source="127.0.0.2")
            held.append(s)
            assert code == 200, head[:200]

        with t.check("global limit: a fourth client gets a quick 503 (limit_connections)"):
            m = limited.mark()
            s, code, head = connect_from(limited.port, target, source="127.0.0.3", timeout=5)
            s.close()
            assert code == 503, head[:200]
            ev = limited.wait_event(lambda e: e.get("event") == "connection" and
                                    e.get("client", "").startswith("127.0.0.3:"), since=m)
            assert ev is not None and ev.get("cause") == "limit_connections", ev

        with t.check("held connections still work at the limit"):
            get_1k(held[0], pki).close()
            held.pop(0)

        with t.check("a freed slot is usable again"):
            def admitted():
                s, code, _ = connect_from(limited.port, target)
                if code == 200:
                    held.append(s)
                    return True
                s.close()
                return False
            assert h.wait_until(admitted, 10), "still refused after a connection closed"

        with t.check("limit refusals are counted by cause"):
            c = h.failure_counts(limited)
            assert c.get("limit_client", 0) >= 1 and c.get("limit_connections", 0) >= 1, c
    finally:
        for s in held:
            s.close()

    with t.check("[process] user = nobody: no root, no capabilities, still intercepting"):
        nobody = pwd.getpwnam("nobody")
        p = t.start_proxy(pki, name="dropped", extra='[process]\nuser = "nobody"\n')
        ev = p.wait_event(lambda e: e.get("event") == "privileges_dropped")
        assert ev is not None, "no privileges_dropped line: %s" % p.stderr_text()[-2000:]
        st = proc_status(p.pid)
        uids = st["Uid"].split()
        assert uids == [str(nobody.pw_uid)] * 4, st["Uid"]
        assert st["Gid"].split() == [str(nobody.pw_gid)] * 4, st["Gid"]
        assert int(st["CapEff"], 16) == 0 and int(st["CapPrm"], 16) == 0, (st["CapEff"], st["CapPrm"])
        assert st.get("NoNewPrivs") == "1", st.get("NoNewPrivs")
        assert all(c == 0 for c in task_caps(p.pid)), task_caps(p.pid)
        s, code, head = connect_from(p.port, target)
        try:
            assert code == 200, head[:200]
            get_1k(s, pki)
        finally:
            s.close()

    with t.check("TPROXY with spoof_source keeps CAP_NET_ADMIN only, in every thread"):
        tp = h.free_port()
        extra = ('[process]\nuser = "nobody"\n\n[[listener]]\naddress = "127.0.0.1:%d"\n'
                 'mode = "tproxy"\nspoof_source = true\n' % tp)
        p = t.start_proxy(pki, name="tproxy", extra=extra)
        ev = p.wait_event(lambda e: e.get("event") == "privileges_dropped")
        assert ev is not None and ev.get("cap_net_admin") is True, ev
        caps = task_caps(p.pid)
        workers = [c for c in caps if c]
        assert workers and all(c == CAP_NET_ADMIN for c in workers), ["%x" % c for c in caps]
        assert int(proc_status(p.pid)["Uid"].split()[0]) == pwd.getpwnam("nobody").pw_uid

    with t.check("[process] user naming no one stops startup"):
        rc, out, _ = h.run_sightline_expect_exit(t, h.make_config(pki, listen_port=h.free_port(),
                                                                  extra='[process]\nuser = "no-such-user-x"\n'))
        assert rc not in (None, 0), "rc=%r" % rc
        assert "no user 'no-such-user-x'" in out, out[-1000:]


if __name__ == "__main__":
    h.run_test("39_access", main)
