#!/usr/bin/env python3
"""Layer 67: faults — slow or vanishing clients and broken origins.

The proxy runs with short timeouts (handshake 2s, connect 2s, idle 3s).
Every connection that ends on a failure must carry a `cause` on its
`"event": "connection"` log line and count once in
sightline_connection_failures_total{cause=...} (docs/metrics.md).

Client side, all at once while a normal client keeps being served:
  - slowloris: a CONNECT head one byte per second never completes: closed
    at the handshake timeout (cause client_timeout, total_ms >= timeout);
  - CONNECT answered 200, then no ClientHello: closed at the handshake
    timeout (client_timeout);
  - half a ClientHello then a close, a whole ClientHello then a reset
    (SO_LINGER 0) or a close: the connection is freed (client_closed) and
    sightline_active_connections returns to 0.

Origin side, one python origin each (TLS ones use the test PKI's valid-ec
certificate), through the explicit proxy:
  - reset mid-body (half the Content-Length, then RST): the client has the
    200 head and a short body, then the connection ends (upstream_reset);
    the same with a plain close (FIN) mid-body (upstream_reset);
  - accepts TCP and never sends a byte: the upstream handshake runs out of
    timeouts.handshake, the client's connection is closed
    (upstream_timeout: the origin did not answer in time);
  - completes TLS, never answers the request: closed at the idle timeout
    (upstream_timeout);
  - answers garbage instead of HTTP: 502 page (upstream_protocol);
  - closes during the TLS handshake (after reading the ClientHello): 502
    page (upstream_tls); plain-text bytes instead of a ServerHello: 502
    page (upstream_tls);
  - a name under .invalid: 502 at CONNECT (upstream_dns); a refused port:
    502 at CONNECT (upstream_connect).
Afterwards a normal request still succeeds and no connection is left open.

No timing margins are asserted beyond "not before the configured timeout"
(from the log line's total_ms) and generous upper bounds.
"""

import os
import re
import socket
import ssl
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

HANDSHAKE_S = 2
CONNECT_S = 2
IDLE_S = 3
TIMEOUTS = {"handshake": "%ds" % HANDSHAKE_S, "connect": "%ds" % CONNECT_S,
            "idle": "%ds" % IDLE_S, "first_byte": "%ds" % IDLE_S}
# A timer armed on a loop whose cached clock lags the accept by a few ms may
# fire that much "early" when measured from the accept: not a failure.
EARLY_SLACK_MS = 100
CLOSE_BOUND = 30.0         # generous upper bound for "closed at the timeout"

CAUSES = ("client_timeout", "client_closed", "client_tls", "client_bad_request",
          "upstream_dns", "upstream_connect", "upstream_connect_timeout", "upstream_tls",
          "upstream_certificate", "upstream_reset", "upstream_protocol", "upstream_timeout",
          "limit_connections", "limit_client", "access_client", "access_port",
          "access_destination")


# --------------------------------------------------------------------------
# metrics

def failures(proxy):
    return h.failure_counts(proxy)


def active_connections(proxy):
    return h.active_connections(proxy)


def delta(before, after):
    return {k: after.get(k, 0) - before.get(k, 0)
            for k in set(before) | set(after) if after.get(k, 0) != before.get(k, 0)}


def expect_failures(proxy, before, want, timeout=10.0):
    """The failure counters moved by exactly `want` ({cause: n}) since
    `before` (polled: a connection's metrics may land a moment after the
    client saw it end)."""
    got = {}

    def ok():
        got.clear()
        got.update(delta(before, failures(proxy)))
        return got == want
    if not h.wait_until(ok, timeout, 0.1):
        raise AssertionError("sightline_connection_failures_total moved by %r, expected %r%s" % (
            got, want, "" if "sightline_connection_failures_total" in h.admin_metrics(proxy)
            else " (the metric is not exposed)"))


def check_line(ev, reason_re, cause, min_ms=None):
    """Assertions on one connection log line."""
    assert ev is not None, "no connection log line"
    reason = ev.get("close_reason") or ""
    assert re.search(reason_re, reason, re.I), "close_reason %r does not match /%s/" % (reason, reason_re)
    if min_ms is not None:
        total = ev.get("total_ms")
        assert isinstance(total, (int, float)), "total_ms missing: %r" % ev
        assert total >= min_ms - EARLY_SLACK_MS, \
            "closed after %s ms, before the %d ms timeout" % (total, min_ms)
    assert ev.get("cause") == cause, "cause %r, expected %r (close_reason %r)" % (
        ev.get("cause"), cause, reason)
    assert ev.get("cause") in CAUSES, "cause %r not in the documented set" % ev.get("cause")


def wait_closed(sock, timeout):
    """Block until the peer ends the connection (EOF or reset). Returns the
    bytes read meanwhile, or raises AssertionError after timeout."""
    deadline = time.monotonic() + timeout
    got = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("connection still open after %.0fs (%d bytes read)" % (timeout, len(got)))
        sock.settimeout(min(left, 1.0))
        try:
            b = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
            return bytes(got)
        if not b:
            return bytes(got)
        got += b


def client_hello_bytes(server_hostname="localhost"):
    """A real ClientHello (Python's ssl, TLS 1.3 capable), as the first
    flight a client sends."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=server_hostname)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    data = out.read()
    assert data[:1] == b"\x16" and len(data) > 100, "not a ClientHello record: %r" % data[:16]
    return data


def rst_close(sock):
    """Close with a TCP reset (SO_LINGER on, 0 s)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# --------------------------------------------------------------------------
# raw TCP origins (no TLS)

class RawOrigin(h.TcpServer):
    """TCP listener on 127.0.0.1; each accepted socket goes to handler(sock,
    stop_event) on its own thread. kill() closes everything."""

    def __init__(self, handler):
        self.handler = handler
        self.stop = threading.Event()
        super().__init__(backlog=16)

    def _serve(self, c):
        try:
            c.settimeout(30)
            self.handler(c, self.stop)
        except OSError:
            pass

    def kill(self):
        self.stop.set()
        super().kill()


def silent_handler(c, stop):
    """Accept and say nothing, ever (until the test ends)."""
    stop.wait(120)


def close_in_handshake_handler(c, stop):
    """Read the ClientHello (at least its record header), then close."""
    c.recv(65536)
    c.close()


def plaintext_handler(c, stop):
    """Answer the ClientHello with plain-text HTTP, then close."""
    c.recv(65536)
    c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    c.close()


# --------------------------------------------------------------------------
# TLS origin handlers (harness TlsOrigin: handler(conn) after the handshake)

BODY_LEN = 2000


def reset_mid_body(conn):
    conn.read_head()
    conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % BODY_LEN
              + b"x" * (BODY_LEN // 2))
    time.sleep(0.5)            # let the proxy read what was sent before the reset
    conn.closed_by_handler = True
    rst_close(conn.sock)


def close_mid_body(conn):
    conn.read_head()
    conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % BODY_LEN
              + b"x" * (BODY_LEN // 2))
    time.sleep(0.5)
    conn.closed_by_handler = True
    conn.sock.close()          # FIN without close_notify: a truncated response


def never_answer(conn):
    conn.read_head()           # then the TlsOrigin keeps reading until the peer closes


def garbage_answer(conn):
    conn.read_head()
    conn.send(b"\x00\x01 this is not an HTTP response at all \xff\xfe\r\n\r\n")
    time.sleep(0.5)
    conn.close_now(clean=True)


# --------------------------------------------------------------------------

def main(t):
    pki = t.pki()
    origin = t.start_nginx(pki, certs=["valid-ec"])
    good_target = "localhost:%d" % origin.port("valid-ec")
    with open(origin.files["/1k"], "rb") as f:
        one_k = f.read()
    proxy = t.start_proxy(pki, workers=2, timeouts=TIMEOUTS)

    def normal_request(what="normal request"):
        """GET /1k with Connection: close, read to the proxy's close (a
        client closing with the proxy's close_notify unread resets the
        connection, which the proxy may count as a failure)."""
        s, code, head = h.connect_tunnel(proxy.port, good_target, timeout=20)
        try:
            assert code == 200, "%s: CONNECT answered %r" % (what, head.split("\r\n", 1)[0])
            ss = h.tls_over(s, h.client_context(pki.root), "localhost")
            s = ss
            ss.sendall(("GET /1k HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                        % good_target).encode())
            st, _, body = h.read_http_response(ss)
            assert st == 200 and body == one_k, "%s: status %d, %d bytes" % (what, st, len(body))
            rest = wait_closed(ss, 20)
            assert rest == b"", "%s: bytes after the response: %r" % (what, rest[:100])
        finally:
            s.close()

    with t.check("warm-up request succeeds; no failure counted", fatal=True):
        base = failures(proxy)
        normal_request()
        time.sleep(0.2)
        assert delta(base, failures(proxy)) == {}, "failures counted for a good request: %r" % (
            delta(base, failures(proxy)),)

    client_side(t, pki, proxy, normal_request, good_target)
    upstream_side(t, pki, proxy, normal_request)

    with t.check("after every fault: a normal request succeeds, no connection left open"):
        normal_request()
        seen = [None]

        def drained():
            seen[0] = active_connections(proxy)
            return seen[0] == 0
        assert h.wait_until(drained, 15, 0.2), "sightline_active_connections is %s" % seen[0]

    with t.check("proxy alive; SIGTERM exits 0"):
        assert proxy.alive(), "sightline exited with %r" % proxy.proc.returncode
        rc = proxy.stop()
        assert rc == 0, "exit code %r" % rc


# --------------------------------------------------------------------------
# client side

def client_side(t, pki, proxy, normal_request, good_target):
    hello = client_hello_bytes()
    base = failures(proxy)
    mark = proxy.mark()
    results = {}

    def slowloris():
        r = results["slowloris"] = {}
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        r["client"] = "%s:%d" % s.getsockname()[:2]
        head = b"CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\nUser-Agent: slowloris\r\n"
        t0 = time.monotonic()
        try:
            for i in range(len(head)):           # bounded: ~80 s at most
                if time.monotonic() - t0 > CLOSE_BOUND:
                    r["error"] = "still open after %.0fs" % CLOSE_BOUND
                    return
                try:
                    s.send(head[i:i + 1])
                except OSError:
                    r["closed_after"] = time.monotonic() - t0
                    return
                s.settimeout(1.0)
                try:
                    b = s.recv(4096)
                except socket.timeout:
                    continue
                except OSError:
                    r["closed_after"] = time.monotonic() - t0
                    return
                r["closed_after"] = time.monotonic() - t0
                r["answer"] = b
                return
            r["error"] = "sent the whole head slowly without being closed"
        finally:
            s.close()

    def no_hello():
        r = results["no_hello"] = {}
        s, code, head = h.connect_tunnel(proxy.port, good_target, timeout=10)
        try:
            r["client"] = "%s:%d" % s.getsockname()[:2]
            r["code"] = code
            t0 = time.monotonic()
            try:
                r["rest"] = wait_closed(s, CLOSE_BOUND)
                r["closed_after"] = time.monotonic() - t0
            except AssertionError as e:
                r["error"] = str(e)
        finally:
            s.close()

    def vanish_partial():
        r = results["vanish_partial"] = {}
        s, code, head = h.connect_tunnel(proxy.port, good_target, timeout=10)
        r["client"] = "%s:%d" % s.getsockname()[:2]
        r["code"] = code
        s.sendall(hello[:len(hello) // 3])
        time.sleep(0.3)
        s.close()

    def vanish_rst():
        r = results["vanish_rst"] = {}
        s, code, head = h.connect_tunnel(proxy.port, good_target, timeout=10)
        r["client"] = "%s:%d" % s.getsockname()[:2]
        r["code"] = code
        s.sendall(hello)
        rst_close(s)

    def vanish_fin():
        r = results["vanish_fin"] = {}
        s, code, head = h.connect_tunnel(proxy.port, good_target, timeout=10)
        r["client"] = "%s:%d" % s.getsockname()[:2]
        r["code"] = code
        s.sendall(hello)
        s.close()

    def run(name, fn):
        try:
            fn()
        except Exception as e:
            results.setdefault(name, {})["error"] = "%s: %s" % (type(e).__name__, e)

    threads = [threading.Thread(target=run, args=(n, f), daemon=True)
               for n, f in (("slowloris", slowloris), ("no_hello", no_hello),
                            ("vanish_partial", vanish_partial), ("vanish_rst", vanish_rst),
                            ("vanish_fin", vanish_fin))]
    for th in threads:
        th.start()

    with t.check("while slow and vanishing clients are open, normal clients are served"):
        t0 = time.monotonic()
        n = 0
        # Requests for as long as the slow clients are expected to be open.
        while time.monotonic() - t0 < HANDSHAKE_S + 1 and n < 200:
            normal_request("normal request #%d" % (n + 1))
            n += 1
            time.sleep(0.05)
        t.note("%d requests served" % n)

    for th in threads:
        th.join(CLOSE_BOUND + 15)
    alive = [th.name for th in threads if th.is_alive()]

    with t.check("slowloris (CONNECT head 1 byte/s): closed at the handshake timeout, cause client_timeout"):
        assert not alive, "client threads still running: %r" % alive
        r = results["slowloris"]
        assert "error" not in r, r["error"]
        t.note("closed after %.1fs" % r["closed_after"])
        ev = h.connection_line(proxy, r["client"], since=mark)
        check_line(ev, r"timed out.*request head", "client_timeout", HANDSHAKE_S * 1000)

    with t.check("CONNECT 200 then no ClientHello: closed at the handshake timeout, cause client_timeout"):
        r = results["no_hello"]
        assert r.get("code") == 200, "CONNECT answered %r" % r.get("code")
        assert "error" not in r, r["error"]
        assert r["rest"] == b"", "bytes before the close: %r" % r["rest"][:100]
        t.note("closed after %.1fs" % r["closed_after"])
        ev = h.connection_line(proxy, r["client"], since=mark)
        check_line(ev, r"handshake timed out|timed out", "client_timeout", HANDSHAKE_S * 1000)

    with t.check("client closes after a third of its ClientHello: freed, cause client_closed"):
        r = results["vanish_partial"]
        assert "error" not in r, r["error"]
        assert r.get("code") == 200, "CONNECT answered %r" % r.get("code")
        ev = h.connection_line(proxy, r["client"], since=mark)
        check_line(ev, r"client closed", "client_closed")

    with t.check("client resets after a whole ClientHello: freed, cause client_closed"):
        r = results["vanish_rst"]
        assert "error" not in r, r["error"]
        assert r.get("code") == 200, "CONNECT answered %r" % r.get("code")
        ev = h.connection_line(proxy, r["client"], since=mark, timeout=CLOSE_BOUND)
        check_line(ev, r"client|reset|ECONNRESET|EPIPE|broken pipe", "client_closed")
        t.note("close_reason %r" % ev.get("close_reason"))

    with t.check("client closes right after a whole ClientHello: freed, cause client_closed"):
        r = results["vanish_fin"]
        assert "error" not in r, r["error"]
        assert r.get("code") == 200, "CONNECT answered %r" % r.get("code")
        ev = h.connection_line(proxy, r["client"], since=mark, timeout=CLOSE_BOUND)
        check_line(ev, r"client|reset|ECONNRESET|EPIPE|broken pipe", "client_closed")
        t.note("close_reason %r" % ev.get("close_reason"))

    with t.check("client faults: no connection left open (sightline_active_connections 0)"):
        seen = [None]

        def drained():
            seen[0] = active_connections(proxy)
            return seen[0] == 0
        assert h.wait_until(drained, 15, 0.2), "sightline_active_connections is %s" % seen[0]

    with t.check("client faults counted: client_timeout +2, client_closed +3, nothing else"):
        expect_failures(proxy, base, {"client_timeout": 2, "client_closed": 3})


# --------------------------------------------------------------------------
# origin side

def upstream_side(t, pki, proxy, normal_request):
    def tls_case(name, handler):
        o = h.TlsOrigin(pki, handler)
        return o, "127.0.0.1:%d" % o.port

    def run_case(title, target, client, reason_re, cause, origin=None, min_ms=None):
        """client(target) -> note text; then the log line and the metric."""
        with t.check(title):
            before = failures(proxy)
            mark = proxy.mark()
            try:
                note = client(target)
                if note:
                    t.note(note)
                ev = proxy.conn_event(target, since=mark, timeout=CLOSE_BOUND)
                check_line(ev, reason_re, cause, min_ms)
                t.note("cause %s, close_reason %r" % (ev.get("cause"), ev.get("close_reason")))
                expect_failures(proxy, before, {cause: 1})
            finally:
                if origin is not None:
                    origin.kill()

    def truncated_body(target):
        w = h.tls_tunnel(proxy.port, target, pki.root, timeout=CLOSE_BOUND)
        try:
            w.send(b"GET /x HTTP/1.1\r\nHost: %s\r\n\r\n" % target.encode())
            head = w.read_head()
            assert head.status == 200, "status %r (the origin's head had been sent)" % head.status
            assert head.get("content-length") == str(BODY_LEN), "head %r" % head
            got = bytearray(w.buf)
            w.buf.clear()
            w.sock.settimeout(CLOSE_BOUND)
            try:
                got += wait_closed(w.sock, CLOSE_BOUND)
            except ssl.SSLError:
                pass
            assert len(got) < BODY_LEN, "got the whole body (%d bytes) from an origin that " \
                                         "sent half" % len(got)
            return "client got the head and %d of %d body bytes, then the close" % (len(got), BODY_LEN)
        finally:
            w.sock.close()

    def error_page(status=502):
        def client(target):
            w = h.tls_tunnel(proxy.port, target, pki.root, timeout=CLOSE_BOUND)
            try:
                w.sock.settimeout(CLOSE_BOUND)
                head, body = h.http_get(w, target, "/x")
                assert head.status == status, "status %r, expected %d: %r" % (
                    head.status, status, body[:200])
                return "client got %d (%s)" % (head.status, body[:80].decode("latin-1").strip())
            finally:
                w.sock.close()
        return client

    def closed_or_5xx(target):
        """The client's TLS handshake or its request ends with a close (or a
        5xx page): no origin response exists to relay."""
        s, code, head = h.connect_tunnel(proxy.port, target, timeout=CLOSE_BOUND)
        try:
            assert code == 200, "CONNECT answered %r" % head.split("\r\n", 1)[0]
            s.settimeout(CLOSE_BOUND)
            try:
                ss = h.client_context(pki.root).wrap_socket(s, server_hostname="localhost")
            except (ssl.SSLError, OSError) as e:
                return "client handshake ended: %s" % (getattr(e, "reason", None) or e)
            try:
                ss.sendall(b"GET /x HTTP/1.1\r\nHost: %s\r\n\r\n" % target.encode())
                rest = wait_closed(ss, CLOSE_BOUND)
            finally:
                ss.close()
            if rest:
                m = re.match(rb"HTTP/1\.1 (\d{3})", rest)
                assert m and m.group(1).startswith(b"5"), "origin-less answer: %r" % rest[:200]
                return "client got %s" % m.group(1).decode()
            return "client connection closed without a response"
        finally:
            s.close()

    def connect_502(target):
        code, head = h.raw_exchange(proxy.port, ("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n"
                                                 % (target, target)).encode(), timeout=CLOSE_BOUND)
        assert code == 502, "CONNECT answered %r" % head.split("\r\n", 1)[0]
        return "CONNECT answered 502"

    o, target = tls_case("reset", reset_mid_body)
    run_case("origin resets mid-body: client gets the head and a short body, cause upstream_reset",
             target, truncated_body, r"upstream|origin|reset", "upstream_reset", o)

    o, target = tls_case("fin", close_mid_body)
    run_case("origin closes (FIN) mid-body: client gets a short body, cause upstream_reset",
             target, truncated_body, r"upstream|origin|closed|truncat", "upstream_reset", o)

    o = RawOrigin(silent_handler)
    target = "127.0.0.1:%d" % o.port
    run_case("origin accepts TCP and never sends a byte: closed at the handshake timeout, "
             "cause upstream_timeout", target, closed_or_5xx, r"timed out", "upstream_timeout", o,
             min_ms=HANDSHAKE_S * 1000)

    o, target = tls_case("silent", never_answer)
    run_case("origin completes TLS, never answers the request: closed at the idle timeout, "
             "cause upstream_timeout", target, closed_or_5xx, r"timed out|timeout",
             "upstream_timeout", o, min_ms=IDLE_S * 1000)

    o, target = tls_case("garbage", garbage_answer)
    run_case("origin answers garbage: 502 page, cause upstream_protocol",
             target, error_page(502), r"upstream|origin|response|invalid|pars", "upstream_protocol", o)

    o = RawOrigin(close_in_handshake_handler)
    target = "127.0.0.1:%d" % o.port
    run_case("origin closes during the TLS handshake: 502 page, cause upstream_tls",
             target, error_page(502), r"upstream closed during TLS handshake", "upstream_tls", o)

    o = RawOrigin(plaintext_handler)
    target = "127.0.0.1:%d" % o.port
    run_case("origin answers the ClientHello with plain text: 502 page, cause upstream_tls",
             target, error_page(502), r"upstream|TLS", "upstream_tls", o)

    run_case("CONNECT to a name under .invalid: 502, cause upstream_dns",
             "nosuch.invalid:443", connect_502, r"resol|DNS|name|ENOTFOUND|EAI", "upstream_dns")

    closed = h.free_port()
    run_case("CONNECT to a refused port: 502, cause upstream_connect",
             "127.0.0.1:%d" % closed, connect_502, r"refused|connect", "upstream_connect")

    with t.check("after the origin faults a normal request succeeds"):
        normal_request()


if __name__ == "__main__":
    h.run_test("67_faults", main)
