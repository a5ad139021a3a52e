#!/usr/bin/env python3
"""Layer 72: origin connection reuse (upstream.reuse).

A scriptable Python TLS origin counts its connections and records every byte
it reads, so each check knows exactly which origin connection served which
client connection. Covered:

  a client connection that ends between exchanges leaves its origin
  connection parked; the next client connection to the same target with the
  same SNI and ALPN offer takes it (no new origin connection; the connection
  lines say upstream_parked / upstream_reused; the metrics count it);
  a client's "Connection: close" is hop-by-hop: the origin gets the request
  without that option (other options kept), the client gets the response
  with "Connection: close" and the proxy ends its connection, the origin
  connection stays for the next client;
  another SNI or another ALPN offer never gets that connection (a client
  without ALPN, HTTP/1.1 sniffed, gets its own kept connection);
  an origin that answers "Connection: close" is not kept; an origin that
  closes a parked connection: it is dropped (origin_closed) and the next
  client gets a fresh connection; reuse_idle_timeout: a parked connection
  expires (expired) and the next client gets a fresh one;
  a parked connection to the target but a policy bypass for the client's
  SNI: the proxy connects late and splices (the client sees the origin's
  own certificate); a late connect that fails: the client's handshake
  completes with the error page (502, the reason); the parked connection
  still serves a client whose key matches;
  an origin whose certificate failed verification (forward-untrusted) is
  never kept; upstream.reuse = false: one origin connection per client
  connection and "Connection: close" reaches the origin unchanged;
  a static listener reuses too.
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


CLOSE_NOW = threading.Event()


def app(conn):
    """Serves requests until the client closes: /ok answers with the index
    of this origin connection, /bye answers with Connection: close and
    closes, /ok-close-later answers, then closes the connection once the
    test sets CLOSE_NOW (an origin's keep-alive timeout, at a moment the
    test chooses)."""
    while True:
        try:
            head = conn.read_head()
        except EOFError:
            return
        conn.read_body(head)
        path = head.target.split("?")[0]
        body = b"conn %d\n" % conn.index
        if path == "/bye":
            conn.send(h.http_response(200, body, headers=[("Connection", "close")]))
            conn.close_now()
            return False
        conn.send(h.http_response(200, body))
        if path == "/ok-close-later":
            CLOSE_NOW.wait(30)
            conn.close_now()
            return False


def main(t):
    pki = t.pki()
    origin = h.TlsOrigin(pki, app)
    target = "localhost:%d" % origin.port
    static_port = h.free_port()
    pol = os.path.join(t.dir, "policy.toml")
    with open(pol, "w") as f:
        # dst rules are decided with the address connected to: for a reused
        # connection, the parked connection's.
        f.write('[policy]\ndefault = "inspect"\nauto_bypass = false\n\n'
                '[[rule]]\nname = "bypass-origin-test"\naction = "bypass"\ndomains = ["bypass.test"]\n\n'
                '[[rule]]\nname = "blocked-name"\naction = "block"\ndomains = ["blocked.test"]\n\n'
                '[[rule]]\nname = "block-by-dst"\naction = "block"\ndomains = ["dstblock.test"]\n'
                'dst = ["127.0.0.0/8"]\n\n'
                '[[rule]]\nname = "inspect-by-dst"\naction = "inspect"\ndomains = ["localhost"]\n'
                'dst = ["127.0.0.0/8"]\n')
    # A hook consumer (PCAP files) runs for every intercepted connection,
    # refused ones included.
    extra = ('[[listener]]\naddress = "127.0.0.1:%d"\nmode = "static"\ntarget = "localhost:%d"\n\n'
             '[policy]\nfiles = ["%s"]\n\n[pcap]\ndir = "%s"\n'
             % (static_port, origin.port, pol, os.path.join(t.dir, "pcap")))
    proxy = t.start_proxy(pki, extra=extra)

    def client(alpn=H11, sni="localhost", tgt=target):
        return h.tls_tunnel(proxy.port, tgt, pki.root, alpn=alpn, server_hostname=sni)

    def finished(w, since):
        """Closes the client and returns its connection line."""
        w.sock.close()
        ev = h.connection_line(proxy, w.client, since=since)
        assert ev is not None, "no connection line for %s" % w.client
        return ev

    with t.check("a finished client connection parks its origin connection; the next one takes it",
                 fatal=True):
        m = proxy.mark()
        w = client()
        head, body = h.http_get(w, target)
        assert head.status == 200 and body == b"conn 0\n", "%r %r" % (head.start, body)
        ev = finished(w, m)
        assert ev.get("upstream_parked") is True, "first connection line: %r" % ev
        assert ev.get("upstream_tls", {}).get("version") == "TLSv1.3", ev.get("upstream_tls")
        w = client()
        head, body = h.http_get(w, target, "/ok?again")
        assert body == b"conn 0\n", "second client served by %r" % body
        assert origin.count() == 1, "origin connections: %d" % origin.count()
        ev = finished(w, m)
        assert ev.get("upstream_reused") == 2, "second connection line: %r" % ev
        assert ev.get("upstream_verdict") == "ok" and ev.get("action") == "intercept", ev
        assert "inspect-by-dst" in (ev.get("policy") or ""), \
            "the dst rule did not see the parked connection's address: policy %r" % ev.get("policy")

    with t.check("metrics: parked and reused counted, one connection idle"):
        h.wait_origin_event(proxy, "pool_events", "parked", 2)
        got = h.origin_metrics(proxy)
        assert got.get('sightline_origin_pool_events_total{event="reused"}') == 1, got
        assert got.get("sightline_origin_pool_idle_connections") == 1, got

    with t.check("Connection: close is hop-by-hop: the origin never sees it, the client gets it "
                 "and the proxy closes; the origin connection stays"):
        oc = origin.wait_conn(0)
        before = len(oc.received)
        m = proxy.mark()
        w = client()
        head, body = h.http_get(w, target, "/ok?close", "Connection: close, X-Trace\r\nX-Trace: 1\r\n")
        assert body == b"conn 0\n", "served by %r" % body
        assert head.has_token("connection", "close"), "no Connection: close to the client: %r" % head.raw
        h.expect_close(w)
        ev = finished(w, m)
        assert ev.get("upstream_parked") is True, "connection line: %r" % ev
        req = bytes(oc.received[before:])
        want = ("GET /ok?close HTTP/1.1\r\nHost: %s\r\nConnection: X-Trace\r\nX-Trace: 1\r\n\r\n"
                % target).encode()
        assert req == want, "origin received %r, expected %r" % (req, want)
        w = client()
        _, body = h.http_get(w, target, "/ok?after-close")
        finished(w, m)
        assert body == b"conn 0\n" and origin.count() == 1, "%r, %d connections" % (body, origin.count())

    with t.check("another SNI or another ALPN offer gets its own origin connection"):
        m = proxy.mark()
        n = origin.count()
        w = client(sni="origin.test")  # also in the origin's certificate
        _, body = h.http_get(w, target)
        w.sock.close()
        assert body == b"conn %d\n" % n and origin.count() == n + 1, \
            "SNI origin.test served by %r, %d new connections" % (body, origin.count() - n)
        w = client(alpn=None)
        _, body = h.http_get(w, target)
        finished(w, m)
        assert body == b"conn %d\n" % (n + 1) and origin.count() == n + 2, \
            "no ALPN served by %r, %d new connections" % (body, origin.count() - n)
        # Without ALPN (HTTP/1.1 sniffed) the connection is kept under its own key.
        w = client(alpn=None)
        _, body = h.http_get(w, target, "/ok?no-alpn-again")
        ev = finished(w, m)
        assert body == b"conn %d\n" % (n + 1) and ev.get("upstream_reused") == 2, \
            "second no-ALPN client served by %r, connection line %r" % (body, ev)

    with t.check("an origin that answers Connection: close is not kept"):
        m = proxy.mark()
        w = client()
        _, body = h.http_get(w, target, "/bye")
        first = body
        ev = finished(w, m)
        assert "upstream_parked" not in ev, "parked after Connection: close: %r" % ev
        n = origin.count()
        w = client()
        _, body = h.http_get(w, target)
        finished(w, m)
        assert body != first, "the closed connection served again (%r)" % body

    with t.check("an origin that closes a parked connection: dropped, the next client gets a fresh one"):
        closed = h.origin_event(proxy, "pool_events", "origin_closed")
        parked = h.origin_event(proxy, "pool_events", "parked")
        m = proxy.mark()
        w = client()
        _, body = h.http_get(w, target, "/ok-close-later")
        gone = body
        finished(w, m)
        h.wait_origin_event(proxy, "pool_events", "parked", parked + 1)
        CLOSE_NOW.set()
        h.wait_origin_event(proxy, "pool_events", "origin_closed", closed + 1)
        for i in range(3):  # whatever is still parked, none is the closed one
            w = client()
            head, body = h.http_get(w, target, "/ok?%d" % i)
            finished(w, m)
            assert head.status == 200 and body != gone, "served by the closed connection %r" % body

    with t.check("policy bypass for the client's SNI while a connection to the target is parked: "
                 "late connect, spliced to the origin's own certificate"):
        m = proxy.mark()
        w = client()
        h.http_get(w, target)
        finished(w, m)
        assert h.origin_metrics(proxy).get("sightline_origin_pool_idle_connections", 0) >= 1, "nothing parked"
        s, code, _ = h.connect_tunnel(proxy.port, target)
        assert code == 200
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # bypass.test is not in the origin's certificate
        ctx.set_alpn_protocols(H11)
        ss = ctx.wrap_socket(s, server_hostname="bypass.test")
        w = h.Wire(ss)
        client_addr = "%s:%d" % ss.getsockname()[:2]
        issuer = h.cert_field(ssl.DER_cert_to_PEM_cert(ss.getpeercert(True)), "issuer")
        _, body = h.http_get(w, "bypass.test:%d" % origin.port)
        ss.close()
        assert body.startswith(b"conn "), body
        ev = h.connection_line(proxy, client_addr, since=m)
        assert ev and ev.get("action") == "bypass", "connection line %r" % ev
        assert issuer != pki.ca_subject, "a forged certificate (issuer %r)" % issuer

    with t.check("a parked connection to the target, and the client's SNI is blocked by name or by "
                 "dst: the error page names the rule, hooks on, the proxy keeps serving"):
        for sni, rule in (("blocked.test", "blocked-name"), ("dstblock.test", "block-by-dst")):
            m = proxy.mark()
            w = client()
            h.http_get(w, target)
            finished(w, m)  # parked
            w = client(sni=sni)
            head, body = h.http_get(w, target)
            w.sock.close()
            assert head.status == 403 and rule.encode() in body, "%s: %r %r" % (sni, head.start, body)
        w = client()
        head, _ = h.http_get(w, target)
        w.sock.close()
        assert head.status == 200 and proxy.alive(), "the proxy stopped serving"

    with t.check("static listener: the second client connection reuses the origin connection"):
        m = proxy.mark()
        n = origin.count()
        parked = h.origin_event(proxy, "pool_events", "parked")
        for i in range(2):
            cp = h.curl(["--cacert", pki.root, "--http1.1", "--resolve",
                         "localhost:%d:127.0.0.1" % static_port,
                         "https://localhost:%d/ok?static%d" % (static_port, i)])
            assert cp.returncode == 0 and cp.stdout.startswith(b"conn "), h.curl_err(cp)
            if i == 0:
                h.wait_origin_event(proxy, "pool_events", "parked", parked + 1)
        ev = proxy.wait_event(lambda e: e.get("event") == "connection" and e.get("upstream_reused"),
                              since=m)
        assert ev is not None, "no static connection reused an origin connection"
        assert origin.count() <= n + 1, "%d new origin connections" % (origin.count() - n)

    with t.check("a late connect that fails: the error page names the reason; a parked "
                 "connection still serves a matching client"):
        m = proxy.mark()
        w = client()
        h.http_get(w, target)
        finished(w, m)  # one parked for (target, localhost, http/1.1)
        origin.lsock.shutdown(socket.SHUT_RDWR)  # no new connections from now on
        origin.lsock.close()
        w = client(sni="fresh.test")  # another key: the proxy must connect, and cannot
        head, body = h.http_get(w, target)
        w.sock.close()
        assert head.status == 502, "status %r" % head.start
        assert b"connect to %s failed" % target.encode() in body, body
        w = client()
        head, body = h.http_get(w, target, "/ok?still")
        finished(w, m)
        assert head.status == 200 and body.startswith(b"conn "), "%r %r" % (head.start, body)

    # ---- a proxy with a short idle timeout, and one with reuse off
    origin2 = h.TlsOrigin(pki, app)
    t2 = "localhost:%d" % origin2.port
    short = t.start_proxy(pki, name="short", upstream={"reuse_idle_timeout": "300ms"})
    with t.check("reuse_idle_timeout: a parked connection expires; the next client gets a fresh one"):
        w = h.tls_tunnel(short.port, t2, pki.root, alpn=H11)
        _, first = h.http_get(w, t2)
        w.sock.close()
        h.wait_origin_event(short, "pool_events", "expired", 1)
        w = h.tls_tunnel(short.port, t2, pki.root, alpn=H11)
        _, second = h.http_get(w, t2)
        w.sock.close()
        assert first != second and origin2.count() == 2, "%r %r, %d connections" % (
            first, second, origin2.count())

    # Without dst rules the ClientHello is decided before any connection:
    # a refusal then has no origin leg at all.
    pol2 = os.path.join(t.dir, "policy-names.toml")
    with open(pol2, "w") as f:
        f.write('[policy]\ndefault = "inspect"\nauto_bypass = false\n\n'
                '[[rule]]\nname = "blocked-name"\naction = "block"\ndomains = ["blocked.test"]\n')
    named = t.start_proxy(pki, name="named", extra='[policy]\nfiles = ["%s"]\n\n[pcap]\ndir = "%s"\n'
                          % (pol2, os.path.join(t.dir, "pcap2")))
    with t.check("no dst rules: a client blocked by name while a connection is parked gets the error "
                 "page before any origin connection (hooks on); the proxy keeps serving"):
        n = origin2.count()
        m = named.mark()
        w = h.tls_tunnel(named.port, t2, pki.root, alpn=H11)
        h.http_get(w, t2)
        w.sock.close()
        assert h.connection_line(named, w.client, since=m).get("upstream_parked") is True
        w = h.tls_tunnel(named.port, t2, pki.root, alpn=H11, server_hostname="blocked.test")
        head, body = h.http_get(w, t2)
        w.sock.close()
        assert head.status == 403 and b"blocked-name" in body, "%r %r" % (head.start, body)
        w = h.tls_tunnel(named.port, t2, pki.root, alpn=H11)
        head, _ = h.http_get(w, t2)
        w.sock.close()
        assert head.status == 200 and named.alive(), "the proxy stopped serving"
        assert origin2.count() == n + 1, "%d origin connections" % (origin2.count() - n)

    bad = h.TlsOrigin(pki, app, cert="expired")
    tb = "localhost:%d" % bad.port
    untrusted = t.start_proxy(pki, name="untrusted", upstream={"on_invalid": "forward-untrusted"})
    with t.check("an origin that failed verification (forward-untrusted) is never kept"):
        for _ in range(2):
            s, code, _ = h.connect_tunnel(untrusted.port, tb)
            assert code == 200
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(H11)
            w = h.Wire(ctx.wrap_socket(s, server_hostname="localhost"))
            h.http_get(w, tb)
            w.sock.close()
        assert bad.count() == 2, "origin connections: %d" % bad.count()
        assert h.origin_event(untrusted, "pool_events", "parked") == 0, h.origin_metrics(untrusted)

    origin3 = h.TlsOrigin(pki, app)
    t3 = "localhost:%d" % origin3.port
    off = t.start_proxy(pki, name="off", upstream={"reuse": False})
    with t.check("upstream.reuse = false: one origin connection per client, Connection: close unchanged"):
        for i in range(2):
            w = h.tls_tunnel(off.port, t3, pki.root, alpn=H11)
            _, body = h.http_get(w, t3, "/ok", "Connection: close\r\n" if i else "")
            w.sock.close()
            assert body == b"conn %d\n" % i, "client %d served by %r" % (i, body)
        oc = origin3.wait_conn(1)
        assert b"Connection: close\r\n" in bytes(oc.received), bytes(oc.received)
        # The connection line names the origin leg's TLS whatever state the
        # SSL is in when the connection ends.
        ev = h.connection_line(off, w.client)
        assert (ev.get("upstream_tls") or {}).get("version") == "TLSv1.3", ev
        assert "sightline_origin_pool_idle_connections" in h.origin_metrics(off)


if __name__ == "__main__":
    h.run_test("72_reuse", main)
