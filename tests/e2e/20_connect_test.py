#!/usr/bin/env python3
"""Layer 20: the explicit-proxy front end (HTTP CONNECT).

Origin-form non-CONNECT -> 405 (absolute-form http:// is proxied: see
75_plain_http), malformed -> 400, refused/unresolvable -> 502, connect
timeout -> 504 (provoked on loopback with a listener whose accept queue is
full, so the kernel drops further SYNs), and CONNECT to a name, an IPv4
literal and an [IPv6] literal -> 200 followed by an intercepted, verified
TLS session that returns the origin's bytes.
"""

import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def status_line(head):
    return head.split("\r\n", 1)[0] if head else "<no response>"


def expect_status(proxy, data, want):
    code, head = h.raw_exchange(proxy.port, data)
    assert code == want, "expected %d, got %r" % (want, status_line(head))
    return head


def main(t):
    pki = t.pki()
    origin = t.start_nginx(pki, certs=["valid-ec"])
    op4 = origin.port("valid-ec")
    op6 = origin.port("valid-ec", "v6")
    proxy = t.start_proxy(pki, timeouts={"connect": "2s"})

    with t.check("GET absolute-form http:// is proxied, not refused"):
        # The origin here speaks TLS only, so it answers the plain request
        # itself (nginx: 400): what matters is that the proxy forwarded it.
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        s.sendall(("GET http://127.0.0.1:%d/1k HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n"
                   % (op4, op4)).encode())
        code, head = h.read_response_head(s)
        s.close()
        assert code != 405, "the proxy refused a plain-HTTP request: %r" % head
        assert "via: 1.1 sightline" in head.lower(), "no Via from the proxy: %r" % head

    with t.check("POST origin-form -> 405"):
        expect_status(proxy, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405)

    with t.check("garbage request line -> 400"):
        expect_status(proxy, b"this is not http at all\r\n\r\n", 400)

    with t.check("CONNECT without a port -> 400"):
        expect_status(proxy, b"CONNECT localhost HTTP/1.1\r\nHost: localhost\r\n\r\n", 400)

    with t.check("CONNECT with an empty target -> 400"):
        expect_status(proxy, b"CONNECT  HTTP/1.1\r\n\r\n", 400)

    with t.check("binary junk (a raw TLS record) -> 400"):
        expect_status(proxy, b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00\r\n\r\n", 400)

    with t.check("CONNECT to a closed local port -> 502"):
        closed = h.free_port()
        expect_status(proxy, ("CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n"
                              % (closed, closed)).encode(), 502)

    with t.check("CONNECT to an unresolvable name (.invalid) -> 502"):
        expect_status(proxy, b"CONNECT no-such-host.invalid:443 HTTP/1.1\r\n"
                             b"Host: no-such-host.invalid:443\r\n\r\n", 502)

    with t.check("CONNECT to a closed port is logged with action reject"):
        m = proxy.mark()
        closed = h.free_port()
        target = "127.0.0.1:%d" % closed
        expect_status(proxy, ("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target)).encode(), 502)
        ev = proxy.conn_event(target, since=m)
        assert ev is not None, "no connection log line with target %s" % target
        assert ev.get("action") == "reject", "action is %r" % ev.get("action")
        assert ev.get("close_reason"), "close_reason empty: %r" % ev

    with t.check("connect timeout (full accept queue) -> 504"):
        # listen(0) + never accept: once the queue holds its connection(s),
        # the kernel drops new SYNs and connect() just retries until timeout.
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        fillers = []
        try:
            lst.bind(("127.0.0.1", 0))
            lst.listen(0)
            port = lst.getsockname()[1]
            for _ in range(4):
                c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                c.setblocking(False)
                c.connect_ex(("127.0.0.1", port))
                fillers.append(c)
            # confirm a fresh connect really hangs before blaming the proxy
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probe.settimeout(0.5)
            try:
                probe.connect(("127.0.0.1", port))
                hung = False
            except (socket.timeout, OSError):
                hung = True
            finally:
                probe.close()
            if not hung:
                raise h.Skip("kernel accepted the connect despite a full queue; cannot provoke a timeout")
            t0 = time.monotonic()
            head = expect_status(proxy, ("CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: x\r\n\r\n" % port).encode(), 504)
            took = time.monotonic() - t0
            assert took < 8, "504 took %.1fs with connect timeout 2s" % took
            assert took > 1.0, "504 after only %.2fs with connect timeout 2s" % took
        finally:
            for c in fillers:
                c.close()
            lst.close()

    targets = [
        ("name", "localhost:%d" % op4, "localhost"),
        ("IPv4 literal", "127.0.0.1:%d" % op4, "127.0.0.1"),
        ("IPv6 literal", "[::1]:%d" % op6, "::1"),
    ]
    for label, target, sni in targets:
        with t.check("CONNECT %s (%s) -> 200 + intercepted TLS, exact body" % (label, target)):
            m = proxy.mark()
            s, code, head = h.connect_tunnel(proxy.port, target)
            ss = None
            try:
                assert code == 200, "CONNECT answered %r" % status_line(head)
                ss = h.tls_over(s, h.client_context(pki.root), sni)
                ss.sendall(("GET /1k HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % target).encode())
                st, _, body = h.read_http_response(ss)
                assert st == 200, "origin status %d" % st
                assert body == open(origin.files["/1k"], "rb").read(), "body differs (%d bytes)" % len(body)
            finally:
                (ss or s).close()
            ev = proxy.conn_event(target, since=m)
            assert ev is not None, "no connection log line with target %r" % target
            assert ev.get("action") == "intercept", "logged action %r" % ev.get("action")

    with t.check("proxy still alive after all of the above"):
        assert proxy.alive(), "sightline exited with %r" % proxy.proc.returncode


if __name__ == "__main__":
    h.run_test("20_connect", main)
