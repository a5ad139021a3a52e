#!/usr/bin/env python3
"""Layer 93: the JSON event feed on a Unix socket.

Two readers on the socket (the real binary, --events-socket) each get one
connection record per connection and one exchange record per exchange, the
same lines, matching exactly what curl sent (HTTP/1.1 and HTTP/2, an upload,
a bypassed connection; a rule with `hooks = []` is left out); with
include_bodies the base64 bodies are the bytes served and uploaded. A reader
that stops reading is dropped while the proxy and the other readers go on.
"""

import base64
import json
import os
import re
import socket
import stat
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


class Reader:
    """Reads JSON lines from the feed on a thread."""

    def __init__(self, path, read=True, rcvbuf=None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(path)
        self.lines = []
        self.eof = False
        self.cond = threading.Condition()
        if read:
            threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        buf = b""
        while True:
            try:
                chunk = self.sock.recv(1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self.cond:
                    self.eof = True
                    self.cond.notify_all()
                return
            buf += chunk
            *done, buf = buf.split(b"\n")
            with self.cond:
                self.lines += [l.decode() for l in done]
                self.cond.notify_all()

    def records(self):
        with self.cond:
            return [json.loads(l) for l in self.lines]

    def wait(self, pred, timeout=20):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred([json.loads(l) for l in self.lines]):
                left = deadline - time.monotonic()
                if left <= 0 or self.eof:
                    break
                self.cond.wait(left)
        recs = self.records()
        assert pred(recs), "feed has %d records: %s" % (len(recs), [
            (r["type"], r.get("request", {}).get("target") or r.get("target")) for r in recs])
        return recs

    def close(self):
        self.sock.close()


def metric(proxy, name):
    body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % proxy.admin_port, timeout=10).read().decode()
    m = re.search(r"^%s(?:\{[^}]*\})? (\S+)$" % re.escape(name), body, re.M)
    return float(m.group(1)) if m else None


def wait_metric(proxy, name, pred, timeout=10):
    deadline = time.monotonic() + timeout
    v = None
    while time.monotonic() < deadline:
        v = metric(proxy, name)
        if v is not None and pred(v):
            return v
        time.sleep(0.05)
    raise AssertionError("%s = %s" % (name, v))


def exchanges(recs):
    return [r for r in recs if r["type"] == "exchange"]


def connections(recs):
    # Without the harness's readiness probe (connected and closed without a
    # request: action "none"), whose record may come after a reader connected.
    return [r for r in recs if r["type"] == "connection" and r["action"] != "none"]


def relevant(lines):
    return [l for l in lines if '"action":"none"' not in l]


def main(t):
    pki = t.pki()
    origin = t.start_nginx(pki, certs=["valid-ec", "valid-rsa", "manynames"], big=True, upload=True)
    ec, rsa, many = origin.port("valid-ec"), origin.port("valid-rsa"), origin.port("manynames")
    one_k = open(origin.files["/1k"], "rb").read()
    big = open(origin.files["/big"], "rb").read(100000)
    upload = os.urandom(3000)
    upload_path = os.path.join(t.dir, "upload.bin")
    with open(upload_path, "wb") as f:
        f.write(upload)
    pol = os.path.join(t.dir, "events-policy.toml")
    with open(pol, "w") as f:
        f.write('[[rule]]\nname = "watched"\naction = "inspect"\nports = [%d]\nhooks = ["events"]\n\n'
                '[[rule]]\nname = "quiet"\naction = "inspect"\nports = [%d]\nhooks = []\n\n'
                '[[rule]]\nname = "pass"\naction = "bypass"\nports = [%d]\n' % (ec, rsa, many))
    sock = os.path.join(t.dir, "events.sock")
    proxy = t.start_proxy(pki, extra="[events]\ninclude_bodies = true\nbody_cap = 65536\n",
                          args=["--events-socket", sock, "--policy", pol])

    with t.check("the socket exists with mode 0660 and the feed is announced", fatal=True):
        ev = proxy.wait_event(lambda e: e.get("event") == "events_enabled")
        assert ev and ev["socket"] == sock, "no events_enabled line"
        st = os.stat(sock)
        assert stat.S_ISSOCK(st.st_mode), "not a socket"
        assert st.st_mode & 0o777 == 0o660, "mode %o" % (st.st_mode & 0o777)

    a, b = Reader(sock), Reader(sock)
    with t.check("two readers connected", fatal=True):
        wait_metric(proxy, "sightline_events_readers", lambda v: v == 2)

    with t.check("requests: HTTP/1.1, HTTP/2, an upload, a bypassed and a quiet connection", fatal=True):
        cp = h.curl_via(proxy.port, "https://localhost:%d/1k?h1" % ec, cafile=pki.root, extra=["--http1.1"])
        assert cp.returncode == 0 and cp.stdout == one_k, h.curl_err(cp)
        cp = h.curl_via(proxy.port, "https://localhost:%d/1k?h2" % ec, cafile=pki.root, extra=["--http2"])
        assert cp.returncode == 0 and cp.stdout == one_k, h.curl_err(cp)
        cp = h.curl_via(proxy.port, "https://localhost:%d/big?range" % ec, cafile=pki.root,
                        extra=["--http1.1", "-r", "0-99999"])
        assert cp.returncode == 0 and cp.stdout == big, h.curl_err(cp)
        cp = h.curl_via(proxy.port, "https://localhost:%d/upload" % ec, cafile=pki.root,
                        extra=["--http2", "--data-binary", "@" + upload_path,
                               "-H", "Content-Type: application/octet-stream"])
        assert cp.returncode == 0 and json.loads(cp.stdout)["length"] == len(upload), h.curl_err(cp)
        cp = h.curl_via(proxy.port, "https://localhost:%d/1k?bypass" % many, cafile=pki.origin_ca,
                        extra=["--http1.1"])
        assert cp.returncode == 0 and cp.stdout == one_k, h.curl_err(cp)
        cp = h.curl_via(proxy.port, "https://localhost:%d/1k?quiet" % rsa, cafile=pki.root,
                        extra=["--http1.1"])
        assert cp.returncode == 0 and cp.stdout == one_k, h.curl_err(cp)

    # 4 exchanges, 5 connection records (4 on the watched port, the bypass).
    want = lambda recs: len(exchanges(recs)) >= 4 and len(connections(recs)) >= 5
    recs_a = recs_b = []
    with t.check("both readers receive the same lines", fatal=True):
        recs_a = a.wait(want)
        recs_b = b.wait(want)
        time.sleep(0.5)  # anything extra would show up now
        assert relevant(a.lines) == relevant(b.lines), "readers differ:\n%s\n%s" % (a.lines, b.lines)
        assert len(exchanges(a.records())) == 4 and len(connections(a.records())) == 5, a.lines

    ex = {r["request"]["target"]: r for r in exchanges(recs_a)}
    with t.check("exchange records: method, authority, path, status, byte counts, bodies"):
        assert sorted(ex) == ["/1k?h1", "/1k?h2", "/big?range", "/upload"], sorted(ex)
        for target, proto, body in (("/1k?h1", "HTTP/1.1", one_k), ("/1k?h2", "HTTP/2", one_k)):
            r = ex[target]
            assert r["protocol"] == proto, r["protocol"]
            assert r["outcome"] == "complete", r
            assert r["request"]["method"] == "GET"
            assert r["request"]["authority"] == "localhost:%d" % ec, r["request"]["authority"]
            assert r["request"]["body_bytes"] == 0 and r["request"]["body"] == ""
            assert r["response"]["status"] == 200
            assert r["response"]["body_bytes"] == len(body)
            assert base64.b64decode(r["response"]["body"]) == body, "%s body differs" % target
            assert r["response"]["body_truncated"] is False
            assert r["rule"] == "watched" and r["sni"] == "localhost"
            assert r["client"].startswith("127.0.0.1:") and r["server"] == "127.0.0.1:%d" % ec, r
        assert ex["/1k?h2"]["stream"] > 0 and ex["/1k?h1"]["stream"] == 0
        rng = ex["/big?range"]
        assert rng["response"]["status"] == 206 and rng["response"]["body_bytes"] == len(big)
        assert base64.b64decode(rng["response"]["body"]) == big[:65536], "range body prefix differs"
        assert rng["response"]["body_truncated"] is True
        up = ex["/upload"]
        assert up["request"]["method"] == "POST" and up["protocol"] == "HTTP/2"
        assert up["request"]["body_bytes"] == len(upload)
        assert base64.b64decode(up["request"]["body"]) == upload, "upload body differs"
        assert json.loads(base64.b64decode(up["response"]["body"]))["length"] == len(upload)
        hdrs = dict((k.lower(), v) for k, v in up["request"]["headers"])
        assert hdrs.get("content-type") == "application/octet-stream", up["request"]["headers"]

    with t.check("connection records: intercepted and bypassed, none for the hooks = [] rule"):
        conns = connections(recs_a)
        by_port = {}
        for c in conns:
            by_port.setdefault(int(c["target"].rsplit(":", 1)[1]), []).append(c)
        assert sorted(by_port) == sorted([ec, many]), "ports %s" % sorted(by_port)
        assert len(by_port[ec]) == 4 and all(c["action"] == "intercept" for c in by_port[ec])
        assert all(c["rule"] == "watched" and c["client_tls"].startswith("TLS") for c in by_port[ec])
        alpns = sorted(c["alpn"] for c in by_port[ec])
        assert alpns == ["h2", "h2", "http/1.1", "http/1.1"], alpns
        (bp,) = by_port[many]
        assert bp["action"] == "bypass" and bp["rule"] == "pass" and bp["sni"] == "localhost", bp
        assert bp["bytes_server_to_client"] > len(one_k) and bp["client_tls"] == "", bp
        for c in conns:
            assert c["bytes_client_to_server"] > 0 and c["duration_ms"] is not None, c
        # Exchanges name their connection.
        ids = {c["id"] for c in by_port[ec]}
        assert all(r["conn"] in ids for r in exchanges(recs_a))

    with t.check("a reader that stops reading is dropped; the proxy and the others go on"):
        stalled = Reader(sock, read=False, rcvbuf=4096)
        wait_metric(proxy, "sightline_events_readers", lambda v: v == 3)
        before = len(a.lines)
        n = 80  # ~87 KiB of base64 each: well past the 4 MiB reader backlog
        urls = ["https://localhost:%d/big?s=%d" % (ec, i) for i in range(n)]
        cp = h.curl(["--proxy", "http://127.0.0.1:%d" % proxy.port, "--cacert", pki.root, "--http1.1",
                     "-r", "0-99999"] + urls, timeout=120)
        assert cp.returncode == 0 and len(cp.stdout) == n * len(big), h.curl_err(cp)
        wait_metric(proxy, "sightline_events_readers_dropped_total", lambda v: v >= 1)
        wait_metric(proxy, "sightline_events_readers", lambda v: v == 2)
        cp = h.curl_via(proxy.port, "https://localhost:%d/1k?after" % ec, cafile=pki.root, extra=["--http1.1"])
        assert cp.returncode == 0 and cp.stdout == one_k, h.curl_err(cp)
        for r in (a, b):
            r.wait(lambda recs: any(x["type"] == "exchange" and x["request"]["target"] == "/1k?after"
                                    for x in recs), timeout=30)
        got = [json.loads(l)["request"]["target"] for l in a.lines[before:] if '"type":"exchange"' in l]
        assert got == ["/big?s=%d" % i for i in range(n)] + ["/1k?after"], "reader A missed records"
        assert relevant(a.lines) == relevant(b.lines), "readers differ after the drop"
        ev = proxy.wait_event(lambda e: e.get("event") == "events_reader_dropped")
        assert ev and ev["level"] == "warn", "no events_reader_dropped warning"
        stalled.close()

    with t.check("the proxy stops cleanly and removes its socket"):
        assert proxy.stop() == 0
        assert not os.path.exists(sock), "socket file left behind"
        for r in (a, b):
            r.wait(lambda recs: True)
            with r.cond:
                deadline = time.monotonic() + 5
                while not r.eof and time.monotonic() < deadline:
                    r.cond.wait(0.5)
            assert r.eof, "reader not closed at stop"
    a.close()
    b.close()


h.run_test("93_events", main)
