#!/usr/bin/env python3
"""Layer 70: the HTTP/1.1 codec on intercepted connections.

Raw sockets + Python ssl through CONNECT tunnels (ALPN http/1.1 or none), so
every byte is under the test's control. Origins: nginx (keep-alive, the
50 MiB download) and small Python TLS origins written here (everything that
needs an exact or misbehaving origin). Covered:

  keep-alive and pipelining (responses in order, byte-exact both ways);
  100-continue; HEAD with Content-Length, 204, 304 (no body); chunked bodies
  with extensions and trailers both ways, byte-exact; WebSocket (101, then
  frames both ways through the opaque tunnel); CONNECT answered 407 (still
  HTTP) then 200 (opaque tunnel); server-sent events (the first
  event reaches the client while the origin is still blocked: the origin
  only continues once the test has read that event);
  every request the strict parser must refuse -> the exact status,
  Connection: close, the connection ends, and the bad request never reaches
  the origin (a header-level error: the origin reads nothing at all; a
  chunk-level error: the head and the valid chunks before it are streamed
  ahead, but the invalid bytes and everything after them never arrive and
  the origin's connection is closed without a complete request);
  a garbage response / a response with conflicting lengths / an origin that
  closes before responding -> 502; a response cut short -> no 502 appended;
  50 MiB byte-exact both ways (download from nginx, CL and chunked upload);
  the access log (one "exchange" line per request, exact fields) and
  [log] exchanges = false; the "codec" field of the connection line
  (http/1.1 by ALPN, by sniffing without ALPN, opaque for other protocols);
  [limits] max_http_head.
"""

import base64
import hashlib
import json
import os
import random
import socket
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

H11 = ["http/1.1"]
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PHRASES = {400: "Bad Request", 431: "Request Header Fields Too Large", 501: "Not Implemented",
           505: "HTTP Version Not Supported", 502: "Bad Gateway"}


def chunk(data):
    return b"%x\r\n" % len(data) + data + b"\r\n"


def expect_eof(w, what="proxy"):
    """The peer must close: returns nothing more. A timeout means it kept the
    connection open."""
    try:
        rest = w.recv_all()
    except socket.timeout:
        raise AssertionError("%s did not close the connection" % what)
    except (ConnectionResetError, BrokenPipeError):
        rest = b""
    assert rest == b"", "%d unexpected bytes after the response: %r" % (len(rest), rest[:200])


def read_response(w, method="GET"):
    head = w.read_head()
    raw, body, trailers = w.read_body(head, method)
    return head, raw, body, trailers


class App:
    """Request router for a TlsOrigin. Each route is fn(conn, head) that
    reads the request body itself (if any), sends a response and returns
    False to end the request loop."""

    def __init__(self):
        self.routes = {}
        self.state = {}

    def route(self, path):
        def deco(fn):
            self.routes[path] = fn
            return fn
        return deco

    def __call__(self, conn):
        while True:
            try:
                head = conn.read_head()
            except EOFError:
                return
            fn = self.routes.get(head.target.split("?")[0])
            if fn is None:
                conn.read_body(head)
                conn.send(h.http_response(404, b"no route\n"))
                continue
            if fn(conn, head) is False:
                return


def build_app():
    app = App()
    st = app.state

    def simple(body, status=200, headers=()):
        def fn(conn, head):
            conn.read_body(head)
            extra = list(headers)
            close = head.has_token("connection", "close")
            if close:
                extra.append(("Connection", "close"))
            conn.send(h.http_response(status, body, headers=extra))
            if close:
                conn.close_now()
                return False
        return fn

    app.routes["/after"] = simple(b"after\n")
    app.routes["/ok"] = simple(b"ok\n")
    app.routes["/log/a"] = simple(bytes(range(256)) * 4)   # 1024 bytes
    app.routes["/log/c"] = simple(b"not here\n", 404)

    @app.route("/p1")
    def p1(conn, head):
        conn.send(h.http_response(200, b"first pipelined response\n", headers=[("X-Seq", "1")]))

    @app.route("/p2")
    def p2(conn, head):
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Seq: 2\r\n\r\n"
                  + chunk(b"second, ") + chunk(b"chunked\n") + b"0\r\n\r\n")

    @app.route("/p3")
    def p3(conn, head):
        conn.send(h.http_response(200, b"third and last\n",
                                  headers=[("X-Seq", "3"), ("Connection", "close")]))
        conn.close_now()
        return False

    @app.route("/log/b")
    def log_b(conn, head):
        _, body, _ = conn.read_body(head)
        st["log_b_body"] = body
        conn.send(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
                  + chunk(b"y" * 3000) + chunk(b"z" * 2000) + b"0\r\n\r\n")

    @app.route("/continue")
    def cont(conn, head):
        st["continue_expect"] = head.get("expect")
        if head.get("expect", "").lower() == "100-continue":
            conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        _, body, _ = conn.read_body(head)
        conn.send(h.http_response(200, hashlib.sha256(body).hexdigest().encode()))

    @app.route("/head")
    def head_route(conn, head):
        # Content-Length of the representation, no body (RFC 9110 9.3.2)
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12345\r\n\r\n")

    @app.route("/204")
    def r204(conn, head):
        conn.send(b"HTTP/1.1 204 No Content\r\nX-Empty: yes\r\n\r\n")

    @app.route("/304")
    def r304(conn, head):
        conn.send(b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 12345\r\n\r\n")

    @app.route("/trailers")
    def trailers(conn, head):
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum, X-Other\r\n\r\n"
                  + b"5;ext=1;name=\"quoted\"\r\nhello\r\n"
                  + chunk(b"abcdefghijklmnopqrstuvwxyz")
                  + b"0;last\r\nX-Checksum: abc123\r\nX-Other: 1\r\n\r\n")

    @app.route("/chunked-req")
    def chunked_req(conn, head):
        raw, body, trailers = conn.read_body(head)
        st["chunked_req"] = (head.raw + raw, body, trailers)
        conn.send(h.http_response(200, b"got %d\n" % len(body)))

    @app.route("/ws")
    def ws(conn, head):
        key = head.get("sec-websocket-key", "").encode()
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        conn.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        for _ in range(2):     # echo two masked frames, unmasked
            b0, b1 = conn.recv_exact(2)
            n = b1 & 0x7f
            if n == 126:
                n = int.from_bytes(conn.recv_exact(2), "big")
            mask = conn.recv_exact(4) if b1 & 0x80 else b"\0\0\0\0"
            payload = bytes(c ^ mask[i % 4] for i, c in enumerate(conn.recv_exact(n)))
            st.setdefault("ws_frames", []).append(((b1 & 0x80) != 0, payload))
            conn.send(ws_frame(payload, opcode=b0 & 0x0f, mask=None))
        return False

    @app.route("inner.test:443")
    def inner_connect(conn, head):
        # An origin that is itself a forward proxy: first CONNECT is refused
        # with a body, the second one becomes a raw echo tunnel.
        st["connects"] = st.get("connects", 0) + 1
        if st["connects"] % 2 == 1:
            conn.send(h.http_response(407, b"auth first\n", reason="Proxy Authentication Required",
                                      headers=[("Proxy-Authenticate", "Basic")]))
            return True
        conn.send(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        while True:
            b = conn.recv_some()
            if not b:
                return False
            conn.send(b)

    @app.route("/sse")
    def sse(conn, head):
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n" + chunk(b"event: one\ndata: first\n\n"))
        released = st["sse_release"].wait(30)
        st["sse_released"] = released
        conn.send(chunk(b"event: two\ndata: second\n\n") + b"0\r\n\r\n")

    @app.route("/sse-close")
    def sse_close(conn, head):
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
                  b"data: first\n\n")
        st["sse_released"] = st["sse_release"].wait(30)
        conn.send(b"data: second\n\n")
        conn.close_now()
        return False

    @app.route("/upload")
    def upload(conn, head):
        hasher = hashlib.sha256()
        n = [0]

        def sink(b):
            hasher.update(b)
            n[0] += len(b)
        conn.record = False
        _, _, trailers = conn.read_body(head, sink=sink)
        conn.record = True
        reply = json.dumps({"sha256": hasher.hexdigest(), "length": n[0],
                            "trailers": trailers}).encode()
        conn.send(h.http_response(200, reply, headers=[("Content-Type", "application/json")]))

    @app.route("/garbage")
    def garbage(conn, head):
        conn.send(b"THIS IS NOT HTTP\r\n\r\n")
        conn.close_now()
        return False

    @app.route("/two-lengths")
    def two_lengths(conn, head):
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")
        conn.close_now()
        return False

    @app.route("/close-early")
    def close_early(conn, head):
        conn.close_now(clean=False)     # TCP FIN, no close_notify
        return False

    @app.route("/close-early-clean")
    def close_early_clean(conn, head):
        conn.close_now(clean=True)      # close_notify, then FIN
        return False

    @app.route("/truncated")
    def truncated(conn, head):
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        conn.close_now(clean=False)
        return False

    @app.route("/big-head")
    def big_head(conn, head):
        st["big_head_len"] = len(head.raw)
        conn.send(h.http_response(200, b"fine\n"))

    return app


def ws_frame(payload, opcode=1, mask=None):
    b1 = 0x80 if mask is not None else 0
    n = len(payload)
    hdr = bytes([0x80 | opcode])
    hdr += bytes([b1 | n]) if n < 126 else bytes([b1 | 126]) + n.to_bytes(2, "big")
    if mask is None:
        return hdr + payload
    return hdr + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload))


# One strictness case: (label, bytes sent, status, valid prefix the origin may
# have received, the bad bytes it must never see)
def strict_cases(host):
    H = ("Host: %s\r\n" % host).encode()
    post_chunked = b"POST /up HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
    get = b"GET / HTTP/1.1\r\n" + H
    cases = [
        ("Content-Length + Transfer-Encoding", b"POST /up HTTP/1.1\r\n" + H
         + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, b"", None),
        ("Transfer-Encoding + Content-Length", b"POST /up HTTP/1.1\r\n" + H
         + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400, b"", None),
        ("two different Content-Length values", b"POST /up HTTP/1.1\r\n" + H
         + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400, b"", None),
        ("Content-Length: 5, 6", b"POST /up HTTP/1.1\r\n" + H
         + b"Content-Length: 5, 6\r\n\r\nhello!", 400, b"", None),
        ("chunk size 'zz'", post_chunked + b"zz\r\nhello\r\n0\r\n\r\n", 400, post_chunked, b"zz"),
        ("empty chunk size", post_chunked + b"\r\nhello\r\n0\r\n\r\n", 400, post_chunked, b"\r\nhello"),
        ("chunk size '-1'", post_chunked + b"-1\r\nhello\r\n0\r\n\r\n", 400, post_chunked, b"-1"),
        ("chunk size with 17 hex digits", post_chunked + b"00000000000000005\r\nhello\r\n0\r\n\r\n",
         400, post_chunked, b"00000000000000005"),
        ("invalid chunk size after a valid chunk", post_chunked + b"5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n",
         400, post_chunked + b"5\r\nhello\r\n", b"zz"),
        ("chunk data not followed by CRLF", post_chunked + b"5\r\nhelloXX0\r\n\r\n",
         400, post_chunked + b"5\r\nhello", b"XX"),
        ("obs-fold (continuation line starting with SP)", get + b"X-A: a\r\n b\r\n\r\n", 400, b"", None),
        ("obs-fold (continuation line starting with HTAB)", get + b"X-A: a\r\n\tb\r\n\r\n", 400, b"", None),
        ("bare CR in a header", get + b"X-A: a\rX-B: b\r\n\r\n", 400, b"", None),
        ("bare LF line endings", b"GET / HTTP/1.1\n" + H[:-2] + b"\n\n", 400, b"", None),
        ("one bare LF among CRLFs", get + b"X-A: a\nX-B: b\r\n\r\n", 400, b"", None),
        ("NUL byte in a header value", get + b"X-A: a\x00b\r\n\r\n", 400, b"", None),
        ("whitespace between header name and colon", b"POST /up HTTP/1.1\r\n" + H
         + b"Content-Length: 5\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400, b"", None),
        ("Transfer-Encoding: chunked, chunked", b"POST /up HTTP/1.1\r\n" + H
         + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400, b"", None),
        ("header section over 64 KiB", get + b"X-Big: " + b"a" * (65536 + 1000) + b"\r\n\r\n",
         431, b"", None),
        ("unsupported transfer coding", b"POST /up HTTP/1.1\r\n" + H
         + b"Transfer-Encoding: x-unknown-coding\r\n\r\n", 501, b"", None),
        ("HTTP/1.2 request", b"GET / HTTP/1.2\r\n" + H + b"\r\n", 505, b"", None),
        ("HTTP/2.0 request line over http/1.1", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505, b"", None),
    ]
    return cases


def exchanges_of(proxy, conn_id, since=0):
    return [e for e in proxy.events[since:]
            if e.get("event") == "exchange" and e.get("conn") == conn_id]


def main(t):
    pki = t.pki()
    ng = t.start_nginx(pki, certs=["valid-ec"], big=True)
    # Every check here expects its own origin connection and byte-exact heads
    # (a client's "Connection: close" included): origin connection reuse,
    # which rewrites that hop-by-hop option, is off (72_reuse covers it).
    proxy = t.start_proxy(pki, upstream={"reuse": False})
    ngt = "localhost:%d" % ng.port("valid-ec")
    one_k = open(ng.files["/1k"], "rb").read()

    app = build_app()
    origin = h.TlsOrigin(pki, app)
    apt = "localhost:%d" % origin.port
    recorder = h.TlsOrigin(pki, lambda conn: None)      # reads and records, never answers
    rect = "localhost:%d" % recorder.port
    st = app.state

    def tunnel(target, alpn=H11, timeout=10.0):
        return h.tls_tunnel(proxy.port, target, pki.root, alpn=alpn, timeout=timeout)

    def app_conn(alpn=H11):
        """Tunnel to the app origin -> (client wire, origin-side conn)."""
        n = origin.count()
        w = tunnel(apt, alpn)
        return w, origin.wait_conn(n)

    # ------------------------------------------------------------------ basics
    for label, alpn, codec_src in (("ALPN http/1.1", H11, "ALPN"), ("no ALPN", None, "sniffed")):
        with t.check("keep-alive to nginx (%s): 3 sequential requests on one tunnel, exact bodies, "
                     "codec http/1.1 (%s), 3 exchange lines" % (label, codec_src)):
            m = proxy.mark()
            w = tunnel(ngt, alpn)
            try:
                got_alpn = w.sock.selected_alpn_protocol()
                assert got_alpn == (alpn[0] if alpn else None), "client ALPN %r" % got_alpn
                for i in range(3):
                    w.send(("GET /1k?seq=%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (i, ngt)).encode())
                    head, _, body, _ = read_response(w)
                    assert head.status == 200, "request %d: %r" % (i + 1, head.start)
                    assert not head.has_token("connection", "close"), "request %d: Connection: close" % (i + 1)
                    assert body == one_k, "request %d: body differs (%d bytes)" % (i + 1, len(body))
            finally:
                w.sock.close()
            ev = h.connection_line(proxy, w.client, since=m)
            assert ev is not None, "no connection line"
            assert ev.get("codec") == "http/1.1", "codec %r" % ev.get("codec")
            exs = exchanges_of(proxy, ev["id"], m)
            assert [e.get("target") for e in exs] == ["/1k?seq=%d" % i for i in range(3)], \
                "exchange lines for conn %s: %r" % (ev["id"], [e.get("target") for e in exs])

    with t.check("pipelining: 3 requests in one write -> responses in order, byte-exact both ways"):
        w, oc = app_conn()
        reqs = b"".join(("GET /p%d HTTP/1.1\r\nHost: %s\r\nX-Req: %d\r\n%s\r\n"
                         % (i, apt, i, "Connection: close\r\n" if i == 3 else "")).encode()
                        for i in (1, 2, 3))
        try:
            w.send(reqs)
            got = w.recv_all()
        finally:
            w.sock.close()
        assert oc.done.wait(10), "origin connection still open"
        assert oc.error is None, "origin: %r" % oc.error
        assert bytes(oc.received) == reqs, "origin received %r, client sent %r" % (
            bytes(oc.received)[:300], reqs[:300])
        seqs = [line.split(b":")[1].strip() for line in got.split(b"\r\n") if line.startswith(b"X-Seq")]
        assert seqs == [b"1", b"2", b"3"], "responses in order %r" % seqs
        assert got == bytes(oc.sent), "client received %d bytes != %d the origin sent:\n%r\n%r" % (
            len(got), len(oc.sent), got[:400], bytes(oc.sent)[:400])

    with t.check("pipelined valid request then a smuggling attempt: 200 first, then 400 + close; "
                 "origin got only the valid request"):
        w, oc = app_conn()
        good = ("GET /ok HTTP/1.1\r\nHost: %s\r\n\r\n" % apt).encode()
        bad = ("POST /ok HTTP/1.1\r\nHost: %s\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
               "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n" % apt).encode()
        try:
            w.send(good + bad)
            head1, _, body1, _ = read_response(w)
            head2, _, body2, _ = read_response(w)
            expect_eof(w)
        finally:
            w.sock.close()
        assert head1.status == 200 and body1 == b"ok\n", "first response %r %r" % (head1.start, body1)
        assert head2.start == "HTTP/1.1 400 Bad Request", "second response %r" % head2.start
        assert head2.has_token("connection", "close"), "no Connection: close in %r" % head2.raw
        assert oc.done.wait(10), "origin connection still open"
        assert bytes(oc.received) == good, "origin received %r" % bytes(oc.received)[:300]

    with t.check("Expect: 100-continue: the 100 is relayed before the body is sent, then the final 200"):
        w, oc = app_conn()
        body = random.Random(100).randbytes(100000)
        try:
            w.send(("POST /continue HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n"
                    "Expect: 100-continue\r\n\r\n" % (apt, len(body))).encode())
            h100 = w.read_head()
            assert h100.status == 100, "first response %r (wanted 100 Continue)" % h100.start
            w.send(body)
            head, _, reply, _ = read_response(w)
        finally:
            w.sock.close()
        assert head.status == 200, "final %r" % head.start
        assert reply == hashlib.sha256(body).hexdigest().encode(), "origin hashed different bytes"
        assert st.get("continue_expect", "").lower() == "100-continue", \
            "origin saw Expect %r" % st.get("continue_expect")

    with t.check("HEAD with Content-Length, 204 and 304 (with Content-Length): no body; "
                 "same connection stays in sync, byte-exact"):
        w, oc = app_conn()
        try:
            w.send(("HEAD /head HTTP/1.1\r\nHost: %s\r\n\r\n" % apt).encode())
            hh = w.read_head()
            assert hh.status == 200 and hh.get("content-length") == "12345", "HEAD response %r" % hh.raw
            for path, code in (("/204", 204), ("/304", 304)):
                w.send(("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, apt)).encode())
                hx = w.read_head()
                assert hx.status == code, "%s -> %r" % (path, hx.start)
            w.send(("GET /after HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % apt).encode())
            ha, _, after, _ = read_response(w)
            assert ha.status == 200 and after == b"after\n", "response after them: %r %r" % (ha.start, after)
            expect_eof(w)
        finally:
            w.sock.close()
        assert oc.done.wait(10), "origin connection still open"
        assert bytes(w.received) == bytes(oc.sent), "client received %r != origin sent %r" % (
            bytes(w.received)[:500], bytes(oc.sent)[:500])

    with t.check("chunked response with extensions and trailers: relayed byte-exact"):
        w, oc = app_conn()
        try:
            w.send(("GET /trailers HTTP/1.1\r\nHost: %s\r\nTE: trailers\r\n\r\n" % apt).encode())
            head, raw, body, trailers = read_response(w)
            w.send(("GET /after HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % apt).encode())
            ha, _, after, _ = read_response(w)
            expect_eof(w)
        finally:
            w.sock.close()
        assert body == b"hello" + b"abcdefghijklmnopqrstuvwxyz", "decoded body %r" % body
        assert ("X-Checksum", "abc123") in trailers, "trailers %r" % trailers
        assert after == b"after\n", "next response body %r" % after
        assert oc.done.wait(10), "origin connection still open"
        assert bytes(w.received) == bytes(oc.sent), "client received %r != origin sent %r" % (
            bytes(w.received)[:500], bytes(oc.sent)[:500])

    with t.check("chunked request with extensions and trailers: reaches the origin byte-exact"):
        w, oc = app_conn()
        req = ("POST /chunked-req HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n"
               "Trailer: X-Req-Trailer\r\n\r\n" % apt).encode() \
            + b"4;x=y\r\nWiki\r\n" + chunk(b"pedia") + b"0\r\nX-Req-Trailer: yes\r\n\r\n"
        try:
            w.send(req)
            head, _, body, _ = read_response(w)
        finally:
            w.sock.close()
        assert head.status == 200 and body == b"got 9\n", "response %r %r" % (head.start, body)
        got = st.get("chunked_req")
        assert got is not None, "origin did not get the request"
        assert got[0] == req, "origin received %r\nclient sent %r" % (got[0], req)
        assert ("X-Req-Trailer", "yes") in got[2], "origin trailers %r" % (got[2],)

    with t.check("WebSocket: 101 relayed, then masked frames up and unmasked frames down, "
                 "HTTP-looking payloads untouched"):
        m = proxy.mark()
        w, oc = app_conn()
        key = base64.b64encode(os.urandom(16))
        msgs = [b"hello through sightline \xe2\x9c\x93",
                b"GET /not-a-request HTTP/1.1\r\nHost: x\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]
        try:
            w.send(b"GET /ws HTTP/1.1\r\nHost: " + apt.encode() + b"\r\nUpgrade: websocket\r\n"
                   b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
                   b"Sec-WebSocket-Version: 13\r\n\r\n")
            head = w.read_head()
            assert head.status == 101, "upgrade answered %r" % head.start
            want = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
            assert head.get("sec-websocket-accept") == want, "Sec-WebSocket-Accept %r" % head.get(
                "sec-websocket-accept")
            echoes = []
            for msg, mask in zip(msgs, (os.urandom(4), b"\0\0\0\0")):
                w.send(ws_frame(msg, mask=mask))
                b0, b1 = w.recv_exact(2)
                n = b1 & 0x7f
                if n == 126:
                    n = int.from_bytes(w.recv_exact(2), "big")
                assert b0 == 0x81 and not b1 & 0x80, "echo frame header %02x %02x" % (b0, b1)
                echoes.append(w.recv_exact(n))
        finally:
            w.sock.close()
        assert [p for _, p in st.get("ws_frames", [])] == msgs, "origin got frames %r" % st.get("ws_frames")
        assert all(masked for masked, _ in st["ws_frames"]), "frames arrived unmasked"
        assert echoes == msgs, "client got echoes %r" % echoes
        ev = h.connection_line(proxy, w.client, since=m)
        assert ev is not None, "no connection line"
        exs = exchanges_of(proxy, ev["id"], m)
        assert [(e.get("target"), e.get("status")) for e in exs] == [("/ws", 101)], \
            "exchange lines %r" % [(e.get("target"), e.get("status")) for e in exs]

    with t.check("CONNECT inside the tunnel: 407 (with body) keeps HTTP framing, then 200 "
                 "switches to an opaque tunnel (non-HTTP bytes echoed)"):
        m = proxy.mark()
        w, oc = app_conn()
        req = b"CONNECT inner.test:443 HTTP/1.1\r\nHost: inner.test:443\r\n\r\n"
        blob = b"\x16\x03\x01\x00\x05hello\r\n\r\nNOT HTTP \x00\xff" * 50
        try:
            w.send(req)
            h1, _, b1, _ = read_response(w, "CONNECT")
            assert h1.status == 407 and b1 == b"auth first\n", "first CONNECT: %r %r" % (h1.start, b1)
            w.send(req)
            h2 = w.read_head()
            assert h2.status == 200, "second CONNECT: %r" % h2.start
            w.send(blob)
            echo = w.recv_exact(len(blob))
            assert echo == blob, "echo differs"
        finally:
            w.sock.close()
        ev = h.connection_line(proxy, w.client, since=m)
        assert ev is not None, "no connection line"
        exs = [(e.get("method"), e.get("target"), e.get("status")) for e in exchanges_of(proxy, ev["id"], m)]
        assert exs == [("CONNECT", "inner.test:443", 407), ("CONNECT", "inner.test:443", 200)], \
            "exchange lines %r" % exs

    for path, label in (("/sse", "chunked"), ("/sse-close", "close-delimited")):
        with t.check("server-sent events (%s): first event reaches the client while the origin "
                     "is blocked; the rest follows byte-exact" % label):
            release = threading.Event()
            st["sse_release"] = release
            st.pop("sse_released", None)
            w, oc = app_conn()
            try:
                w.send(("GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n"
                        % (path, apt)).encode())
                head = w.read_head()
                assert head.status == 200, "status %r" % head.start
                try:
                    w.recv_until(b"data: first\n\n", 4096)
                except socket.timeout:
                    raise AssertionError("first event not delivered while the origin waits "
                                         "(the proxy holds it back)")
                # The origin cannot have finished: it waits for this event.
                assert "sse_released" not in st, "origin went on before the test released it"
                release.set()
                if path == "/sse":
                    w.recv_until(b"\r\n0\r\n\r\n", 4096)
                    w.send(("GET /after HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                            % apt).encode())
                    read_response(w)
                    expect_eof(w)
                else:
                    try:
                        w.recv_all()    # the body ends with the close
                    except socket.timeout:
                        raise AssertionError("proxy did not close after the origin did")
            finally:
                release.set()
                w.sock.close()
            assert st.get("sse_released") is True, "origin never released"
            assert oc.done.wait(10), "origin connection still open"
            assert bytes(w.received) == bytes(oc.sent), "client received %r != origin sent %r" % (
                bytes(w.received)[:400], bytes(oc.sent)[:400])

    # ------------------------------------------------------------- strictness
    for label, data, status, prefix, bad in strict_cases(rect):
        with t.check("refused: %s -> %d + Connection: close, origin never sees it" % (label, status)):
            n = recorder.count()
            w = tunnel(rect, timeout=5.0)    # an answer is immediate; bounds a failing run
            oc = recorder.wait_conn(n)
            try:
                try:
                    w.send(data)
                except (ConnectionResetError, BrokenPipeError):
                    pass   # the proxy may answer before reading all of a too-big head
                head, _, body, _ = read_response(w)
                expect_eof(w)
            finally:
                w.sock.close()
            assert head.start == "HTTP/1.1 %d %s" % (status, PHRASES[status]), "status line %r" % head.start
            assert head.has_token("connection", "close"), "no Connection: close in %r" % head.raw
            assert body.startswith(b"sightline: "), "body %r" % body
            assert oc.done.wait(10), "the origin's connection was not closed"
            rx = bytes(oc.received)
            if bad is None:
                assert rx == b"", "origin received %d bytes: %r" % (len(rx), rx[:200])
            else:
                # Chunk-level: what precedes the bad chunk was streamed ahead.
                assert prefix.startswith(rx), "origin received %r, not a prefix of the valid part %r" % (
                    rx[:300], prefix)
                assert bad not in rx, "origin received the invalid bytes %r" % bad
            t.note("origin got %d bytes" % len(rx))

    # ------------------------------------------------------------ bad origins
    for path, label in (("/garbage", "garbage instead of a status line"),
                        ("/two-lengths", "a response with two Content-Length values"),
                        ("/close-early", "origin closes (FIN, no close_notify) before responding"),
                        ("/close-early-clean", "origin closes (close_notify) before responding")):
        with t.check("%s -> 502 Bad Gateway + Connection: close, exchange aborted" % label):
            m = proxy.mark()
            w, oc = app_conn()
            try:
                w.send(("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, apt)).encode())
                head, _, body, _ = read_response(w)
                expect_eof(w)
            finally:
                w.sock.close()
            assert head.start == "HTTP/1.1 502 Bad Gateway", "status line %r" % head.start
            assert head.has_token("connection", "close"), "no Connection: close in %r" % head.raw
            assert body.startswith(b"sightline: "), "body %r" % body
            t.note(body.decode(errors="replace").strip())
            ev = h.connection_line(proxy, w.client, since=m)
            assert ev is not None, "no connection line"
            exs = exchanges_of(proxy, ev["id"], m)
            assert len(exs) == 1 and exs[0].get("outcome") == "aborted" and exs[0].get("reason"), \
                "exchange lines %r" % exs

    with t.check("response cut short after its head: client gets what was sent, then the close (no 502)"):
        w, oc = app_conn()
        try:
            w.send(("GET /truncated HTTP/1.1\r\nHost: %s\r\n\r\n" % apt).encode())
            head = w.read_head()
            rest = w.recv_all()
        except socket.timeout:
            raise AssertionError("connection not closed")
        finally:
            w.sock.close()
        assert head.status == 200, "status %r" % head.start
        assert rest == b"0123456789", "after the head: %r" % rest[:200]

    # ---------------------------------------------------------- bulk transfer
    with t.check("50 MiB download from nginx byte-exact over HTTP/1.1 (raw client)"):
        w = tunnel(ngt)
        w.record = False
        hasher = hashlib.sha256()
        try:
            w.sock.settimeout(30)
            w.send(("GET /big HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % ngt).encode())
            head = w.read_head()
            assert head.status == 200, "status %r" % head.start
            n = [0]

            def sink(b):
                hasher.update(b)
                n[0] += len(b)
            w.read_body(head, "GET", sink=sink)
        finally:
            w.sock.close()
        assert n[0] == h.BIG_SIZE, "got %d bytes" % n[0]
        assert hasher.hexdigest() == ng.sha["/big"], "sha256 differs"

    big = random.Random(70).randbytes(h.BIG_SIZE)
    big_sha = hashlib.sha256(big).hexdigest()
    for label in ("Content-Length", "chunked"):
        with t.check("50 MiB upload byte-exact over HTTP/1.1 (%s body)" % label):
            w, oc = app_conn()
            w.record = False
            try:
                w.sock.settimeout(30)
                if label == "chunked":
                    w.send(("POST /upload HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
                            % apt).encode())
                    sizes = [65536, 1, 4095, 100000, 16384, 300000]
                    pos, i = 0, 0
                    while pos < len(big):
                        k = min(sizes[i % len(sizes)], len(big) - pos)
                        w.send(b"%x\r\n" % k + big[pos:pos + k] + b"\r\n")
                        pos += k
                        i += 1
                    w.send(b"0\r\nX-Upload-Done: 1\r\n\r\n")
                else:
                    w.send(("POST /upload HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n"
                            % (apt, len(big))).encode())
                    mv = memoryview(big)
                    for pos in range(0, len(big), 1 << 20):
                        w.send(mv[pos:pos + (1 << 20)])
                head, _, body, _ = read_response(w)
            finally:
                w.sock.close()
            assert head.status == 200, "status %r" % head.start
            reply = json.loads(body)
            assert reply["length"] == h.BIG_SIZE, "origin received %d bytes" % reply["length"]
            assert reply["sha256"] == big_sha, "origin received different bytes"
            if label == "chunked":
                assert ["X-Upload-Done", "1"] in reply["trailers"], "trailers %r" % reply["trailers"]
    del big

    # ------------------------------------------------------------- access log
    def log_session(p):
        """3 requests on one connection to the app; returns (connection line, exchange lines)."""
        m = p.mark()
        w = h.tls_tunnel(p.port, apt, pki.root, alpn=H11)
        try:
            w.send(("GET /log/a HTTP/1.1\r\nHost: %s\r\n\r\n" % apt).encode())
            ha, _, ba, _ = read_response(w)
            w.send(("POST /log/b HTTP/1.1\r\nHost: %s\r\nContent-Length: 300\r\n\r\n" % apt).encode()
                   + b"p" * 300)
            hb, _, bb, _ = read_response(w)
            w.send(("GET /log/c?x=1 HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % apt).encode())
            hc, _, bc, _ = read_response(w)
            expect_eof(w)
        finally:
            w.sock.close()
        assert (ha.status, len(ba), hb.status, len(bb), hc.status, len(bc)) == (200, 1024, 201, 5000, 404, 9), \
            "responses %r" % ((ha.status, len(ba), hb.status, len(bb), hc.status, len(bc)),)
        ev = h.connection_line(p, w.client, since=m)
        assert ev is not None, "no connection line"
        return ev, exchanges_of(p, ev["id"], m)

    with t.check("access log: one exchange line per request, exact fields, outcome complete"):
        ev, exs = log_session(proxy)
        assert ev.get("codec") == "http/1.1", "codec %r" % ev.get("codec")
        want = [("GET", "/log/a", 200, 0, 1024), ("POST", "/log/b", 201, 300, 5000),
                ("GET", "/log/c?x=1", 404, 0, 9)]
        got = [(e.get("method"), e.get("target"), e.get("status"), e.get("request_body_bytes"),
                e.get("response_body_bytes")) for e in exs]
        assert got == want, "exchange lines %r, wanted %r" % (got, want)
        for e in exs:
            assert e.get("outcome") == "complete", "outcome %r in %r" % (e.get("outcome"), e)
            assert "reason" not in e, "reason in a complete exchange: %r" % e
            assert e.get("protocol") == "HTTP/1.1", "protocol %r" % e.get("protocol")
            assert e.get("stream") == 0, "stream %r" % e.get("stream")
            assert e.get("authority") == apt, "authority %r" % e.get("authority")
            assert e.get("client") == ev.get("client"), "client %r vs %r" % (e.get("client"), ev.get("client"))
            for f in ("request_held_us", "response_held_us", "duration_ms"):
                assert isinstance(e.get(f), (int, float)) and e[f] >= 0, "%s = %r" % (f, e.get(f))
        ids = [e.get("id") for e in exs]
        assert len(set(ids)) == 3, "exchange ids not distinct: %r" % ids

    with t.check("[log] exchanges = false: no exchange lines (connection line still there)"):
        quiet = t.start_proxy(pki, name="quiet", extra="[log]\nexchanges = false\n")
        ev, exs = log_session(quiet)
        assert ev.get("codec") == "http/1.1", "codec %r" % ev.get("codec")
        stray = [e for e in quiet.events if e.get("event") == "exchange"]
        assert not stray, "%d exchange lines, e.g. %r" % (len(stray), stray[0])

    # ---------------------------------------------------------- codec choice
    def echo_origin(banner=None):
        def handler(conn):
            if banner:
                conn.send(banner)
            while True:
                try:
                    line = conn.recv_until(b"\n", 4096)
                except EOFError:
                    return
                conn.send(b"echo: " + line)
        return h.TlsOrigin(pki, handler, alpn=None)

    for label, banner, first in (("client speaks first, not HTTP", None, b"hello, not http\r\n"),
                                 ("server speaks first", b"* OK IMAP4rev1 ready\r\n", b"a1 LOGOUT\r\n")):
        with t.check("no ALPN, %s: relayed opaquely (codec opaque), exact bytes" % label):
            eo = echo_origin(banner)
            target = "localhost:%d" % eo.port
            m = proxy.mark()
            w = tunnel(target, None)
            try:
                if banner:
                    got = w.recv_exact(len(banner))
                    assert got == banner, "banner %r" % got
                w.send(first)
                line = w.recv_until(b"\n", 4096)
                assert line == b"echo: " + first, "echo %r" % line
            finally:
                w.sock.close()
                eo.kill()
            ev = h.connection_line(proxy, w.client, since=m)
            assert ev is not None, "no connection line"
            assert ev.get("codec") == "opaque", "codec %r" % ev.get("codec")
            assert not exchanges_of(proxy, ev["id"], m), "exchange lines for an opaque connection"

    with t.check("[limits] max_http_head = 4096: 3 KiB head passes, 5 KiB head -> 431"):
        small = t.start_proxy(pki, name="smallhead", extra="[limits]\nmax_http_head = 4096\n")
        for size, want in ((3000, 200), (5000, 431)):
            w = h.tls_tunnel(small.port, apt, pki.root, alpn=H11)
            try:
                w.send(("GET /big-head HTTP/1.1\r\nHost: %s\r\nX-Pad: %s\r\n\r\n"
                        % (apt, "p" * size)).encode())
                head, _, body, _ = read_response(w)
            finally:
                w.sock.close()
            assert head.status == want, "%d-byte header: %r (wanted %d)" % (size, head.start, want)

    with t.check("proxies alive; SIGTERM exits 0"):
        for p in t.proxies:
            assert p.alive(), "%s exited with %r" % (p.name, p.proc.returncode)
        rcs = [p.stop() for p in t.proxies]
        assert rcs == [0] * len(rcs), "exit codes %r" % rcs
    origin.kill()
    recorder.kill()


if __name__ == "__main__":
    h.run_test("70_http1", main)
