#!/usr/bin/env python3
"""Layer 36: TLS session tickets toward clients ([client] tickets).

A client that comes back with the ticket of an earlier connection resumes
(no certificate, no signature), over TLS 1.3 and TLS 1.2, and the log and
/metrics say so. A ticket is only accepted when the connection, after
verifying the origin again, would present the very certificate the ticket
was issued under:
  - same SNI, another origin whose certificate is invalid: not resumed; the
    client sees the untrusted CA (forward-untrusted), verification fails;
  - the same origin (same address and port) after its certificate was
    replaced by an expired one: not resumed; forward-untrusted fails
    verification, block answers the 502 page over a new handshake;
  - a ticket offered under another SNI (so another forged certificate): not
    resumed.
No ticket is issued under the untrusted CA or with an error page.
No case may resume a session that the client trusted before. With
tickets = false no ticket is issued at all.
"""

import os
import socket
import ssl
import sys
import threading
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


class SwitchableOrigin:
    """An HTTPS origin on one fixed port whose certificate can be replaced.
    Every certificate change gets a fresh SSLContext (so no session of the
    old one resumes) and the body names the certificate in use."""

    def __init__(self, pki, cert):
        self.pki = pki
        self.lock = threading.Lock()
        self.use(cert)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def use(self, cert):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.pki.fullchain(cert), self.pki.key(cert))
        with self.lock:
            self.ctx, self.cert = ctx, cert

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        with self.lock:
            ctx, cert = self.ctx, self.cert
        try:
            c.settimeout(10)
            ss = ctx.wrap_socket(c, server_side=True)
            buf = b""
            while b"\r\n\r\n" not in buf:
                d = ss.recv(4096)
                if not d:
                    return
                buf += d
            body = ("origin cert %s\n" % cert).encode()
            ss.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                       % len(body) + body)
            ss.close()
        except (OSError, ssl.SSLError):
            pass
        finally:
            c.close()

    def kill(self):
        self.closed = True
        self.sock.close()

    def log_tail(self, n=20):
        return "(switchable origin: certificate %s)" % self.cert


LAST = {}  # the client address of the last get()


def get(proxy, target, ctx, sni="localhost", session=None):
    """CONNECT + TLS (+ optional session) + GET /1k; reads until the origin
    closes, so TLS 1.3 tickets sent after the handshake have been read.
    Returns (status, body, reused, session)."""
    s, code, head = h.connect_tunnel(proxy.port, target)
    assert code == 200, "CONNECT %s -> %r" % (target, head.splitlines()[:1])
    # Its connection line may come after the next one starts: find it by address.
    LAST["client"] = "%s:%d" % s.getsockname()[:2]
    ss = ctx.wrap_socket(s, server_hostname=sni, session=session)
    try:
        ss.sendall(("GET /1k HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % target).encode())
        st, _, body = h.read_http_response(ss)
        while ss.recv(4096):
            pass
        return st, body, ss.session_reused, ss.session
    finally:
        ss.close()


def expect_untrusted(proxy, target, ctx, session):
    """The handshake with `session` must fail the client's verification:
    no resumption stood in for the untrusted certificate."""
    try:
        get(proxy, target, ctx, session=session)
    except ssl.SSLCertVerificationError:
        return
    raise AssertionError("[%s] handshake succeeded: the client trusted the connection" % proxy.name)


def metric(proxy, name, labels):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % proxy.admin_port, timeout=5) as r:
        text = r.read().decode()
    want = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            lab = line[len(name) + 1:line.index("}")]
            if ",".join(sorted(lab.split(","))) == want:
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no series %s{%s}" % (name, want))


def main(t):
    pki = t.pki()
    origin = t.start_nginx(pki, certs=["valid-ec", "expired"])
    one_k = open(origin.files["/1k"], "rb").read()
    valid = "localhost:%d" % origin.port("valid-ec")
    expired = "localhost:%d" % origin.port("expired")
    # Origin reuse and upstream resumption off: every connection verifies
    # the origin's certificate anew, so the ticket is what is under test.
    up = {"reuse": False}
    fwd = t.start_proxy(pki, name="fwd", upstream=dict(up, on_invalid="forward-untrusted"))
    page = t.start_proxy(pki, name="page", upstream=dict(up, on_invalid="block"))
    off = t.start_proxy(pki, name="off", client={"tickets": False}, upstream=up)

    ctx13 = h.client_context(pki.root, min_version=ssl.TLSVersion.TLSv1_3)
    ctx12 = h.client_context(pki.root, max_version=ssl.TLSVersion.TLSv1_2)

    state = {}
    with t.check("TLS 1.3: a full handshake issues a ticket; log client_tls.resumed false", fatal=True):
        m = fwd.mark()
        st, body, reused, sess = get(fwd, valid, ctx13)
        assert st == 200 and body == one_k, "status %s, %d bytes" % (st, len(body))
        assert not reused, "first connection resumed"
        assert sess is not None and sess.has_ticket, "no session ticket received"
        ev = h.connection_line(fwd, LAST["client"], since=m)
        assert ev and ev["client_tls"]["resumed"] is False, "log: %r" % ev
        state["t13"] = sess

    with t.check("TLS 1.3: the ticket resumes; the origin is still verified; log and metric say resumed"):
        m = fwd.mark()
        before = metric(fwd, "sightline_tls_handshakes_total", {"leg": "client", "session": "resumed"})
        st, body, reused, sess = get(fwd, valid, ctx13, session=state["t13"])
        assert st == 200 and body == one_k, "status %s, %d bytes" % (st, len(body))
        assert reused, "session not resumed"
        ev = h.connection_line(fwd, LAST["client"], since=m)
        assert ev and ev["client_tls"]["resumed"] is True, "log: %r" % ev
        assert ev.get("upstream_verdict") == "ok", "origin not verified: %r" % ev
        assert "client_ticket_refused" not in ev, "log: %r" % ev
        after = metric(fwd, "sightline_tls_handshakes_total", {"leg": "client", "session": "resumed"})
        assert after == before + 1, "resumed counter %s -> %s" % (before, after)
        state["t13b"] = sess

    with t.check("TLS 1.3: the resumption hands out a fresh ticket, which resumes again"):
        st, body, reused, sess = get(fwd, valid, ctx13, session=state["t13b"])
        assert st == 200 and body == one_k and reused, "status %s reused=%s" % (st, reused)
        assert sess is not None and sess.has_ticket, "no ticket after the resumption"
        # OpenSSL derives a client session's id from its ticket: a new id,
        # a new ticket (the old session object would still say has_ticket).
        assert sess.id != state["t13b"].id, "the resumption issued no new ticket"
        state["t13b"] = sess

    with t.check("TLS 1.2: a ticket resumes too"):
        st, body, reused, sess = get(fwd, valid, ctx12)
        assert st == 200 and not reused and sess.has_ticket, "first: %s reused=%s" % (st, reused)
        st, body, reused, _ = get(fwd, valid, ctx12, session=sess)
        assert st == 200 and body == one_k and reused, "second: status %s reused=%s" % (st, reused)

    with t.check("same SNI, other origin with an expired certificate: ticket refused, "
                 "untrusted certificate, the client's verification fails"):
        m = fwd.mark()
        expect_untrusted(fwd, expired, ctx13, state["t13b"])
        ev = h.connection_line(fwd, LAST["client"], since=m)
        assert ev and ev.get("client_ticket_refused") is True, "log: %r" % ev
        assert ev.get("forged_by") == "untrusted-ca", "log: %r" % ev

    with t.check("the same origin port after its certificate turned invalid: no resumption"):
        so = SwitchableOrigin(pki, "valid-ec")
        t.nginxes.append(so)
        target = "localhost:%d" % so.port
        res = {}
        for p in (fwd, page):
            st, body, reused, sess = get(p, target, ctx13)
            assert st == 200 and body == b"origin cert valid-ec\n" and not reused, \
                "[%s] first: %s %r" % (p.name, st, body[:40])
            st, _, reused, sess2 = get(p, target, ctx13, session=sess)
            assert st == 200 and reused, "[%s] control: not resumed while valid" % p.name
            res[p.name] = sess2
        so.use("expired")
        m = fwd.mark()
        expect_untrusted(fwd, target, ctx13, res["fwd"])
        ev = h.connection_line(fwd, LAST["client"], since=m)
        assert ev and ev.get("client_ticket_refused") is True and \
            ev.get("upstream_verdict") == "expired", "[fwd] log: %r" % ev
        m = page.mark()
        st, body, reused, _ = get(page, target, ctx13, session=res["page"])
        assert st == 502 and not reused, "[page] status %s, resumed=%s" % (st, reused)
        assert b"origin cert" not in body, "[page] the origin's content reached the client"
        ev = h.connection_line(page, LAST["client"], since=m)
        assert ev and ev.get("client_ticket_refused") is True and ev.get("error_page") is True, \
            "[page] log: %r" % ev
        after = metric(page, "sightline_tls_handshakes_total",
                       {"leg": "client", "session": "ticket_refused"})
        assert after >= 1, "ticket_refused counter %s" % after

    with t.check("a ticket offered under another SNI of the same origin certificate is refused"):
        # origin.test is among valid-ec's names: the origin verifies, and only
        # the SNI (so the forged certificate) differs from the ticket's.
        st, _, _, sess = get(fwd, valid, ctx13, sni="localhost")
        assert st == 200 and sess is not None and sess.has_ticket, "no ticket: status %s" % st
        m = fwd.mark()
        st, _, reused, _ = get(fwd, valid, ctx13, sni="origin.test", session=sess)
        assert st == 200 and not reused, "ticket for SNI localhost resumed for SNI origin.test"
        ev = fwd.wait_event(lambda e: e.get("event") == "connection" and e.get("sni") == "origin.test",
                            since=m)
        assert ev and ev.get("client_ticket_refused") is True, "log: %r" % ev
        assert ev.get("upstream_verdict") == "ok" and "forged_by" not in ev, "log: %r" % ev

    with t.check("tickets = false: no ticket is issued, over TLS 1.3 or 1.2"):
        for ctx in (ctx13, ctx12):
            st, body, reused, sess = get(off, valid, ctx)
            assert st == 200 and body == one_k, "status %s" % st
            assert sess is None or not sess.has_ticket, "a ticket was issued with tickets = false"

    with t.check("no ticket under the untrusted CA (forward-untrusted) or with an error page"):
        for ver in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            ctx_any = h.client_context(pki.root, min_version=ver, max_version=ver, verify=False)
            for p in (fwd, page):
                st, _, _, sess = get(p, expired, ctx_any)
                assert sess is None or not sess.has_ticket, \
                    "[%s] %s: a ticket was issued (status %s)" % (p.name, ver.name, st)


if __name__ == "__main__":
    h.run_test("36_client_tickets", main)
