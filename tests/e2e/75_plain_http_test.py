#!/usr/bin/env python3
"""Layer 75: plain HTTP through the explicit proxy (absolute-form requests).

A Python origin on loopback records every connection and request it gets.
Checks: absolute-form is rewritten to origin form with Host from the URI;
hop-by-hop fields (Connection and what it lists, Proxy-Connection,
Keep-Alive, Proxy-Authorization, TE, Upgrade) never reach the origin; Via
is added both ways; the client connection is kept alive across requests;
origin connections are pooled per worker (two client connections in turn
reuse one origin connection); bodies in both directions are byte-exact
(Content-Length and chunked); errors map to 502 (refused, DNS) and 405
(origin-form target); and every exchange is in the access log.
"""

import hashlib
import os
import socket
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


class Origin:
    """HTTP/1.1 keep-alive origin that records connections and requests."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests = []  # (conn_no, request line, {lower name: value}, body)
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                n = self.connections
            threading.Thread(target=self._serve, args=(c, n), daemon=True).start()

    def _serve(self, c, n):
        f = c.makefile("rb")
        try:
            while True:
                line = f.readline()
                if not line:
                    return
                headers = {}
                while True:
                    hl = f.readline()
                    if hl in (b"\r\n", b""):
                        break
                    k, _, v = hl.decode().partition(":")
                    headers.setdefault(k.strip().lower(), []).append(v.strip())
                body = b""
                if "content-length" in headers:
                    body = f.read(int(headers["content-length"][0]))
                elif headers.get("transfer-encoding", [""])[0].lower() == "chunked":
                    while True:
                        size = int(f.readline().split(b";")[0], 16)
                        if size == 0:
                            f.readline()
                            break
                        body += f.read(size)
                        f.readline()
                with self.lock:
                    self.requests.append((n, line.decode().strip(), headers, body))
                path = line.split()[1].decode()
                payload = ("%s %d %s" % (path, len(body), hashlib.sha256(body).hexdigest())).encode()
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: keep-alive\r\n"
                          b"Keep-Alive: timeout=30\r\nX-Origin: yes\r\n\r\n" % len(payload) + payload)
        except OSError:
            return
        finally:
            c.close()

    def close(self):
        self.sock.close()


def read_response(s):
    """(status, headers dict lower->value, body) for a Content-Length response."""
    code, head = h.read_response_head(s)
    headers = {}
    for l in head.split("\r\n")[1:]:
        if ":" in l:
            k, _, v = l.partition(":")
            headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    body = b""
    while len(body) < n:
        got = s.recv(min(65536, n - len(body)))
        if not got:
            break
        body += got
    return code, headers, body


def main(t):
    pki = t.pki()
    origin = Origin()
    proxy = t.start_proxy(pki)
    base = "http://127.0.0.1:%d" % origin.port

    with t.check("keep-alive: three requests on one client connection, origin form, Host from the URI"):
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=20)
        for i in range(3):
            s.sendall(("GET %s/k%d?q=1 HTTP/1.1\r\nHost: wrong.example\r\n"
                       "Proxy-Connection: keep-alive\r\n\r\n" % (base, i)).encode())
            code, headers, body = read_response(s)
            assert code == 200, "request %d -> %r" % (i, code)
            assert body.startswith(b"/k%d?q=1 0 " % i), body[:60]
            assert headers.get("via") == "1.1 sightline", "response Via %r" % headers.get("via")
            assert "keep-alive" not in headers and "connection" not in headers, headers
        s.close()
        lines = [r[1] for r in origin.requests[-3:]]
        assert lines == ["GET /k%d?q=1 HTTP/1.1" % i for i in range(3)], lines
        for _, _, hd, _ in origin.requests[-3:]:
            assert hd.get("host") == ["127.0.0.1:%d" % origin.port], "Host %r" % hd.get("host")
            assert hd.get("via") == ["1.1 sightline"], "Via %r" % hd.get("via")

    with t.check("hop-by-hop fields never reach the origin"):
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=20)
        s.sendall(("GET %s/hop HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Secret-Hop\r\n"
                   "X-Secret-Hop: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic dTpw\r\n"
                   "TE: trailers\r\nUpgrade: websocket\r\nX-End-To-End: kept\r\n\r\n" % base).encode())
        code, _, _ = read_response(s)
        s.close()
        assert code == 200
        hd = origin.requests[-1][2]
        for name in ("connection", "x-secret-hop", "keep-alive", "proxy-authorization", "te",
                     "upgrade", "proxy-connection"):
            assert name not in hd, "%s reached the origin: %r" % (name, hd[name])
        assert hd.get("x-end-to-end") == ["kept"], hd

    with t.check("origin connections are pooled across client connections"):
        before = origin.connections
        for i in range(3):
            s = socket.create_connection(("127.0.0.1", proxy.port), timeout=20)
            s.sendall(("GET %s/pool%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % (base, i)).encode())
            code, headers, _ = read_response(s)
            assert code == 200 and headers.get("connection") == "close", (code, headers)
            assert s.recv(1) == b"", "client connection not closed after Connection: close"
            s.close()
        assert origin.connections - before <= 1, "%d new origin connections for 3 sequential " \
            "client connections" % (origin.connections - before)

    with t.check("NTLM pins: an origin connection that carried NTLM is never pooled for another client"):
        before = None
        for i, auth in enumerate(("", "Authorization: NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAA\r\n", "", "")):
            if i == 1:
                before = origin.connections  # one origin connection is pooled now
            s = socket.create_connection(("127.0.0.1", proxy.port), timeout=20)
            s.sendall(("GET %s/ntlm%d HTTP/1.1\r\nHost: x\r\n%sConnection: close\r\n\r\n"
                       % (base, i, auth)).encode())
            code, headers, _ = read_response(s)
            assert code == 200, (code, headers)
            assert s.recv(1) == b"", "client connection not closed after Connection: close"
            s.close()
        # The NTLM request takes the pooled connection, which then closes
        # with its client: the next request needs a new one, the last reuses it.
        assert origin.connections - before == 1, "%d new origin connections (want 1)" % (
            origin.connections - before)

    with t.check("request bodies byte-exact: Content-Length and chunked (1 MiB)"):
        data = os.urandom(1 << 20)
        digest = hashlib.sha256(data).hexdigest().encode()
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
        s.sendall(("POST %s/cl HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                   % (base, len(data))).encode() + data)
        code, _, body = read_response(s)
        assert code == 200 and body.endswith(digest), body[:100]
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + 65536]), data[i:i + 65536])
                           for i in range(0, len(data), 65536)) + b"0\r\n\r\n"
        s.sendall(("POST %s/ch HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   % base).encode() + chunked)
        code, _, body = read_response(s)
        s.close()
        assert code == 200 and body.endswith(digest), body[:100]

    with t.check("curl -x: HTTP/1.0 client, closes after the response"):
        cp = h.curl(["--proxy", "http://127.0.0.1:%d" % proxy.port, "--http1.0", base + "/ten"])
        assert cp.returncode == 0, h.curl_err(cp)
        assert cp.stdout.startswith(b"/ten 0 "), cp.stdout[:60]
        assert origin.requests[-1][2].get("via") == ["1.0 sightline"], origin.requests[-1][2].get("via")

    with t.check("errors: refused -> 502, unresolvable -> 502, origin-form target -> 405"):
        closed = h.free_port()
        for url, want in (("http://127.0.0.1:%d/" % closed, 502),
                          ("http://no-such-host.invalid/", 502)):
            s = socket.create_connection(("127.0.0.1", proxy.port), timeout=20)
            s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % url).encode())
            code, head = h.read_response_head(s)
            s.close()
            assert code == want, "%s -> %r" % (url, head)
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=20)
        s.sendall(b"GET /relative HTTP/1.1\r\nHost: x\r\n\r\n")
        code, head = h.read_response_head(s)
        s.close()
        assert code == 405, head  # origin-form to a proxy: only CONNECT is meaningful

    with t.check("access log: one exchange line per request"):
        evs = proxy.wait_events(lambda e: e.get("event") == "exchange" and e.get("target") == "/pool2",
                                1, timeout=10)
        assert evs and evs[0].get("status") == 200 and evs[0].get("outcome") == "complete", evs
        assert evs[0].get("protocol") == "HTTP/1.1", evs[0]

    with t.check("the policy decides per request: a blocked origin gets 403, the next connection still works"):
        blocked = Origin()
        pol = os.path.join(t.dir, "plain-policy.toml")
        with open(pol, "w") as f:
            f.write('[[rule]]\nname = "no-plain"\naction = "block"\nports = [%d]\n' % blocked.port)
        guarded = t.start_proxy(pki, name="guarded", args=["--policy", pol])
        s = socket.create_connection(("127.0.0.1", guarded.port), timeout=20)
        # The first request is allowed; the second, on the same connection, is not.
        s.sendall(("GET %s/ok HTTP/1.1\r\nHost: x\r\n\r\n" % base).encode())
        code, _, body = read_response(s)
        assert code == 200 and body.startswith(b"/ok "), (code, body[:60])
        s.sendall(("GET http://127.0.0.1:%d/secret HTTP/1.1\r\nHost: x\r\n\r\n" % blocked.port).encode())
        code, _, body = read_response(s)
        s.close()
        assert code == 403 and b"no-plain" in body, (code, body[:200])
        assert not blocked.requests, blocked.requests
        cp = h.curl(["--proxy", "http://127.0.0.1:%d" % guarded.port, base + "/after"])
        assert cp.returncode == 0 and cp.stdout.startswith(b"/after "), h.curl_err(cp)
        blocked.close()

    origin.close()


if __name__ == "__main__":
    h.run_test("75_plain_http", main)
