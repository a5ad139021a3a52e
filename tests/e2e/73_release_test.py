#!/usr/bin/env python3
"""Layer 73: idle origin release (upstream.release_idle).

An HTTP/1.1 client connection quiet for release_idle_after between
exchanges gives its origin connection back to the pool; its next request
takes one again. A scriptable Python TLS origin counts its connections and
answers with the index of the connection that served each request, so each
check knows which origin connection carried what. Covered:

  release, then the next request retakes the same connection from the pool
  (no new origin connection; metrics released/retaken; the connection line
  says upstream_released / upstream_reattached);
  the pool dropped it meanwhile (reuse_idle_timeout): the next request
  connects, handshakes and verifies a new one (reconnected);
  the origin's certificate stopped verifying meanwhile: the request gets a
  502 page naming the reason, the origin never sees it, the client
  connection ends (failed, origin_reattach_failed in the log);
  a client that closes while released costs no new origin connection;
  NTLM authentication pins: that connection's origin leg is never released
  while a later-idle neighbour's is;
  release_idle = false keeps the origin leg;
  the origin refuses connections: 502 naming the connect failure.
"""

import os
import socket
import ssl
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

H11 = ["http/1.1"]


BIG = b"x" * (8 << 20)


def app(conn):
    """Answers every request with the index of this origin connection;
    /big with 8 MiB."""
    def respond(conn, head, _body):
        conn.send(h.http_response(200, BIG if head.target.startswith("/big") else b"conn %d\n" % conn.index))
        return True
    h.serve_http1(conn, respond)


def finished(proxy, w, since):
    w.sock.close()
    ev = h.connection_line(proxy, w.client, since=since)
    assert ev is not None, "no connection line for %s" % w.client
    return ev


def main(t):
    pki = t.pki()
    origin = h.TlsOrigin(pki, app)
    target = "localhost:%d" % origin.port
    proxy = t.start_proxy(pki, upstream={"release_idle_after": "150ms"})

    def client(p=proxy, tgt=target):
        return h.tls_tunnel(p.port, tgt, pki.root, alpn=H11)

    with t.check("an idle client connection releases its origin connection; its next request "
                 "retakes it from the pool", fatal=True):
        m = proxy.mark()
        w = client()
        head, body = h.http_get(w, target)
        assert head.status == 200 and body == b"conn 0\n", "%r %r" % (head.start, body)
        h.wait_origin_event(proxy, "releases", "released", 1)
        got = h.origin_metrics(proxy)
        assert got.get("sightline_origin_pool_idle_connections") == 1, got
        head, body = h.http_get(w, target, "/ok?again")
        ev = finished(proxy, w, m)  # closed at once: no second idle spell
        assert head.status == 200 and body == b"conn 0\n", "%r %r" % (head.start, body)
        assert origin.count() == 1, "origin connections: %d" % origin.count()
        assert h.origin_event(proxy, "releases", "retaken") == 1, h.origin_metrics(proxy)
        assert ev.get("upstream_released") == 1 and ev.get("upstream_reattached") == 1, ev
        assert "upstream_reused" not in ev, ev

    with t.check("a client that closes while released costs no new origin connection"):
        m = proxy.mark()
        n = origin.count()
        released = h.origin_event(proxy, "releases", "released")
        w = client()
        h.http_get(w, target)
        h.wait_origin_event(proxy, "releases", "released", released + 1)
        ev = finished(proxy, w, m)
        assert ev.get("upstream_released") == 1 and "upstream_reattached" not in ev, ev
        assert origin.count() == n, "%d new origin connections" % (origin.count() - n)

    with t.check("NTLM pins the origin connection: never released, while a neighbour that went "
                 "idle later is"):
        released = h.origin_event(proxy, "releases", "released")
        m = proxy.mark()
        a = client()
        _, body_a = h.http_get(a, target, "/ntlm", "Authorization: NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAKAGFKAAAADw==\r\n")
        time.sleep(0.05)  # b goes idle strictly after a: a's release would come first
        b = client()
        h.http_get(b, target)
        h.wait_origin_event(proxy, "releases", "released", released + 1)
        head, body = h.http_get(a, target, "/ntlm-again")
        assert head.status == 200 and body == body_a, "a served by %r, then %r" % (body_a, body)
        assert h.origin_event(proxy, "releases", "released") == released + 1, h.origin_metrics(proxy)
        ev = finished(proxy, a, m)
        assert "upstream_released" not in ev and "upstream_parked" not in ev, ev
        b.sock.close()

    with t.check("a request head still arriving is not a pause: no release until it is complete"):
        released = h.origin_event(proxy, "releases", "released")
        m = proxy.mark()
        a = client()
        h.http_get(a, target)
        a.send(("GET /slow HTTP/1.1\r\nHost: %s\r\n" % target).encode())  # the rest comes later
        time.sleep(0.05)  # b goes idle strictly after a's partial head arrived
        b = client()
        h.http_get(b, target)
        h.wait_origin_event(proxy, "releases", "released", released + 1)
        assert h.origin_event(proxy, "releases", "released") == released + 1, h.origin_metrics(proxy)
        a.send(b"X-Late: 1\r\n\r\n")
        head = a.read_head()
        _, body, _ = a.read_body(head, "GET")
        assert head.status == 200 and body.startswith(b"conn "), "%r %r" % (head.start, body)
        # Released mid-head, the rest of it would have needed a reattachment.
        ev = finished(proxy, a, m)
        assert "upstream_reattached" not in ev, ev
        b.sock.close()

    # A short pool timeout: a released connection is gone by the next request.
    short = t.start_proxy(pki, name="short",
                          upstream={"release_idle_after": "100ms", "reuse_idle_timeout": "200ms"})
    with t.check("the pool dropped it meanwhile: the next request connects and verifies a new one"):
        m = short.mark()
        w = client(short)
        _, first = h.http_get(w, target)
        h.wait_origin_event(short, "releases", "released", 1)
        h.wait_origin_event(short, "pool_events", "expired", 1)
        n = origin.count()
        head, second = h.http_get(w, target)
        ev = finished(short, w, m)  # closed at once: no second idle spell
        assert head.status == 200 and second == b"conn %d\n" % n, "%r, expected conn %d" % (second, n)
        assert first != second and origin.count() == n + 1, origin.count()
        assert h.origin_event(short, "releases", "reconnected") == 1, h.origin_metrics(short)
        assert ev.get("upstream_released") == 1 and ev.get("upstream_reattached") == 1, ev

    # on_invalid = forward-untrusted completes the origin handshake even
    # with a bad certificate: only the reattachment's own check stops it.
    lax = t.start_proxy(pki, name="lax", upstream={"release_idle_after": "100ms",
                                                   "reuse_idle_timeout": "200ms",
                                                   "on_invalid": "forward-untrusted"})
    for p in (short, lax):
        with t.check("%s: the origin's certificate stopped verifying meanwhile: 502 naming the "
                     "reason, the origin never gets the request" % p.name):
            m = p.mark()
            w = client(p)
            head, _ = h.http_get(w, target)
            assert head.status == 200
            released, expired = h.origin_event(p, "releases", "released"), h.origin_event(p, "pool_events", "expired")
            h.wait_origin_event(p, "releases", "released", released + 1)
            h.wait_origin_event(p, "pool_events", "expired", expired + 1)
            good = origin.ctx
            bad = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            bad.load_cert_chain(pki.fullchain("expired"), pki.key("expired"))
            bad.set_alpn_protocols(H11)
            origin.ctx = bad
            try:
                n = origin.count()
                head, body = h.http_get(w, target, "/secret")
                assert head.status == 502, "status %r" % head.start
                assert b"certificate" in body and b"expired" in body, body
                h.expect_close(w)
            finally:
                origin.ctx = good
            assert origin.count() == n + 1, "%d new origin connections" % (origin.count() - n)
            with origin.cond:
                oc = origin.conns[n]
            assert oc.done.wait(10), "the proxy kept the failed origin connection open"
            assert b"/secret" not in bytes(oc.received), bytes(oc.received)
            assert h.origin_event(p, "releases", "failed") == 1, h.origin_metrics(p)
            ev = p.wait_event(lambda e: e.get("event") == "origin_reattach_failed", since=m)
            assert ev is not None and "expired" in ev.get("reason", ""), ev
            # The line describes the first origin connection; close_reason says why it ended.
            ev = h.connection_line(p, w.client, since=m)
            assert ev.get("upstream_reattach_failed") is True and ev.get("upstream_verdict") == "ok", ev
            assert "expired" in ev.get("close_reason", ""), ev

    # A blocking hook consumer over its limit holds relayed bytes; the
    # reattachment's origin handshake must still be read.
    pcap = t.start_proxy(pki, name="pcap", upstream={"release_idle_after": "100ms",
                                                     "reuse_idle_timeout": "200ms"},
                         extra='[pcap]\ndir = "%s"\nqueue_size = 65536\non_overflow = "block"\n'
                               % os.path.join(t.dir, "pcap"))
    with t.check("hook back-pressure during a reattachment: the request is served, not stalled"):
        stop = threading.Event()

        def bulk():  # keeps the PCAP writer's queue full; bounded by the check
            b = client(pcap)
            b.sock.settimeout(60)
            while not stop.is_set():
                h.http_get(b, target, "/big")
            b.sock.close()

        th = threading.Thread(target=bulk, daemon=True)
        th.start()
        try:
            for i in range(3):
                w = client(pcap)
                h.http_get(w, target)
                released, expired = h.origin_event(pcap, "releases", "released"), h.origin_event(pcap, "pool_events", "expired")
                h.wait_origin_event(pcap, "releases", "released", released + 1)
                h.wait_origin_event(pcap, "pool_events", "expired", expired + 1)
                w.sock.settimeout(30)
                head, body = h.http_get(w, target, "/after%d" % i)
                w.sock.close()
                assert head.status == 200 and body.startswith(b"conn "), "trial %d: %r %r" % (
                    i, head.start, body[:200])
        finally:
            stop.set()
            th.join(60)

    # dst rules see the address connected to: a reconnection that a new DNS
    # answer sends elsewhere must not escape them. origin.test (in the test
    # certificate) first resolves to 127.0.0.2, then to 127.0.0.3, where a
    # rule blocks it.
    with t.check("a reconnection that DNS sends under another dst rule is refused (502 naming the rule)"):
        o2 = h.TlsOrigin(pki, app, host="127.0.0.2")
        o3 = h.TlsOrigin(pki, app, host="127.0.0.3", port=o2.port)
        pol = os.path.join(t.dir, "dst.toml")
        with open(pol, "w") as f:
            f.write('[policy]\ndefault = "inspect"\nauto_bypass = false\n\n'
                    '[[rule]]\nname = "dst-block"\naction = "block"\ndomains = ["origin.test"]\n'
                    'dst = ["127.0.0.3/32"]\n')
        dns = t.start_proxy(pki, name="dns", upstream={"release_idle_after": "100ms",
                                                       "reuse_idle_timeout": "200ms"},
                            extra='[policy]\nfiles = ["%s"]\n' % pol)
        hosts = h.HostsEntry("origin.test", "127.0.0.2")
        try:
            tgt = "origin.test:%d" % o2.port
            w = h.tls_tunnel(dns.port, tgt, pki.root, alpn=H11, server_hostname="origin.test")
            head, body = h.http_get(w, tgt)
            assert head.status == 200 and body == b"conn 0\n" and o2.count() == 1, (head.start, body)
            h.wait_origin_event(dns, "releases", "released", 1)
            h.wait_origin_event(dns, "pool_events", "expired", 1)
            hosts.set("127.0.0.3")
            head, body = h.http_get(w, tgt, "/moved")
            assert head.status == 502 and b"dst-block" in body, "%r %r" % (head.start, body)
            h.expect_close(w)
            for c in list(o3.conns):
                c.done.wait(10)
                assert b"/moved" not in bytes(c.received), bytes(c.received)
        finally:
            hosts.kill()

    off = t.start_proxy(pki, name="off", upstream={"release_idle": False, "release_idle_after": "100ms"})
    with t.check("release_idle = false: the origin leg stays with its idle client"):
        m = off.mark()
        w = client(off)
        _, first = h.http_get(w, target)
        time.sleep(0.6)  # six times release_idle_after
        _, second = h.http_get(w, target)
        assert first == second, "%r then %r" % (first, second)
        ev = finished(off, w, m)
        assert "upstream_released" not in ev, ev
        assert h.origin_event(off, "releases", "released") == 0, h.origin_metrics(off)

    with t.check("the origin refuses connections: the next request gets a 502 naming the connect "
                 "failure"):
        w = client(short)
        h.http_get(w, target)
        released, expired = h.origin_event(short, "releases", "released"), h.origin_event(short, "pool_events", "expired")
        h.wait_origin_event(short, "releases", "released", released + 1)
        h.wait_origin_event(short, "pool_events", "expired", expired + 1)
        origin.lsock.shutdown(socket.SHUT_RDWR)
        origin.lsock.close()
        head, body = h.http_get(w, target)
        assert head.status == 502 and b"connect to %s failed" % target.encode() in body, \
            "%r %r" % (head.start, body)
        h.expect_close(w)
        assert short.alive()


if __name__ == "__main__":
    h.run_test("73_release", main)
