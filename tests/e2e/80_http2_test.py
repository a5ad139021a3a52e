#!/usr/bin/env python3
"""Layer 80: HTTP/2 on intercepted connections.

curl --http2 through the proxy (CONNECT) to nginx; nghttp and h2load, which
cannot use a CONNECT proxy, go through harness.ConnectForwarder (a local
port that opens one CONNECT tunnel per accepted connection). Covered:

  h2 on both legs ("codec": "h2" on the connection line), /1k byte-exact and
  its exchange line (protocol HTTP/2, odd stream id, exact fields);
  50 MiB download and upload byte-exact over h2 (the upload 3 times, plus 20
  small uploads on fresh connections: a request-side flow-control stall that
  depended on timing hung ~1 in 4 uploads before the flush() fix);
  100 concurrent streams on ONE h2 connection (curl --parallel: 100 exchange
  lines with one conn id and distinct stream ids; h2load -c1 -m100);
  a slow h2 reader (curl --limit-rate) keeps the proxy's memory bounded: the
  proxy reads no faster than the client once the buffers are full;
  one stream stalled by its window while the connection keeps flowing (a raw
  Python h2 client): another stream completes, the proxy stops reading the
  stalled body from the origin, RSS bounded, then the body resumes exact;
  client offers h2 but the origin only speaks http/1.1 -> HTTP/1.1 end to end;
  response trailers, an origin RST_STREAM and an origin GOAWAY reach the
  client; server push never reaches the client.
"""

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

PARALLEL = 100
SLOW_RATE = 200 * 1024            # curl --limit-rate, bytes/s
POLL = 0.1
WINDOW_POLLS = 10                 # 1 s windows
SETTLED_RATE = 5 * SLOW_RATE      # proxy reads at most this per second once settled
SETTLE_DEADLINE = 30.0
RSS_LIMIT = 32 * 2**20
UPLOAD_ROUNDS = 3
SMALL_UPLOADS = 20


def curl_h2(proxy, pki, url, extra=(), timeout=60):
    """curl --http2 through the proxy; stdout ends with a '\\n<version> <local_port>' line."""
    return h.curl_via(proxy.port, url, pki.root,
                      ["--http2", "-w", "\n%{http_version} %{local_port}"] + list(extra),
                      timeout=timeout)


def split_w(cp):
    body, _, tail = cp.stdout.rpartition(b"\n")
    ver, _, port = tail.decode().partition(" ")
    return body, ver, "127.0.0.1:%s" % port


def exchanges_of(proxy, conn_id, since=0):
    return [e for e in proxy.events[since:]
            if e.get("event") == "exchange" and e.get("conn") == conn_id]


def nghttp(fwd, paths, extra=(), timeout=30):
    urls = ["https://localhost:%d%s" % (fwd.port, p) for p in paths]
    cp = h.run(["nghttp", "-v", "-n", "--timeout=%d" % timeout] + list(extra) + urls,
               timeout=timeout + 10)
    # frames on stdout; the "Some requests were not processed" summary on stderr
    return cp, cp.stdout.decode(errors="replace") + cp.stderr.decode(errors="replace")


def stream_of(out, path):
    """nghttp -v: the stream id its request for path went on."""
    m = re.search(r"send HEADERS frame <[^>]*stream_id=(\d+)>\n(?:[^\n\[]*\n)*?[ \t]*:path: %s\n"
                  % re.escape(path), out)
    assert m, "no request for %s in nghttp output" % path
    return int(m.group(1))


class TruncatingBackend:
    """Plain-HTTP server on 127.0.0.1: answers any request with
    Content-Length: 100000, sends 20000 bytes and closes."""

    def __init__(self):
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        threading.Thread(target=self._run, daemon=True).start()
        h._register(self)

    def _run(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            try:
                c.settimeout(10)
                h.Wire(c).read_head()
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 20000)
            except Exception:
                pass
            finally:
                c.close()

    def kill(self):
        h._unregister(self)
        self.lsock.close()


# --------------------------------------------------------------------------
# A minimal HTTP/2 client (no HPACK decoding): enough to open streams and
# withhold one stream's window while the connection keeps flowing.

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 5, 6, 7, 8
MAX_WINDOW = 2**31 - 1


def h2_frame(ftype, flags, sid, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload


def hpack_int(n, prefix_bits=7):
    limit = (1 << prefix_bits) - 1
    if n < limit:
        return bytes([n])
    out, n = [limit], n - limit
    while n >= 128:
        out.append((n & 0x7f) | 0x80)
        n >>= 7
    return bytes(out + [n])


def hpack_literal(name, value):
    """Literal header field without indexing, new name, no Huffman."""
    return b"\x00" + hpack_int(len(name)) + name + hpack_int(len(value)) + value


class RawH2:
    """HTTP/2 client over a TLS Wire. step() handles whatever frames arrive
    within one socket timeout; streams in .hold never get WINDOW_UPDATEs, so
    they stop at the initial 65535-byte window."""

    def __init__(self, w, authority, timeout=POLL):
        self.w = w
        self.authority = authority.encode()
        w.record = False
        w.sock.settimeout(timeout)
        self.body = {}          # stream -> bytearray (streams not hashed)
        self.hashers = {}       # stream -> sha256 for big streams
        self.count = {}
        self.first_header_byte = {}
        self.ended = set()
        self.resets = {}
        self.goaway = None
        self.pushes = 0
        self.hold = set()
        w.send(H2_PREFACE + h2_frame(SETTINGS, 0, 0, (2).to_bytes(2, "big") + (0).to_bytes(4, "big")
                                     + (4).to_bytes(2, "big") + (65535).to_bytes(4, "big")))
        # the connection window never limits: only stream windows do
        w.send(h2_frame(WINDOW_UPDATE, 0, 0, (MAX_WINDOW - 65535).to_bytes(4, "big")))

    def request(self, sid, path, hashed=False):
        block = (hpack_literal(b":method", b"GET") + hpack_literal(b":scheme", b"https")
                 + hpack_literal(b":path", path.encode()) + hpack_literal(b":authority", self.authority))
        self.count[sid] = 0
        if hashed:
            self.hashers[sid] = hashlib.sha256()
        else:
            self.body[sid] = bytearray()
        self.w.send(h2_frame(HEADERS, 0x5, sid, block))     # END_STREAM | END_HEADERS

    def open_window(self, sid, n):
        self.w.send(h2_frame(WINDOW_UPDATE, 0, sid, n.to_bytes(4, "big")))

    def _have(self, n):
        while len(self.w.buf) < n:
            if not self.w._fill():
                raise EOFError("proxy closed the h2 connection")

    def step(self):
        try:
            while True:
                self._have(9)
                n = int.from_bytes(self.w.buf[:3], "big")
                self._have(9 + n)
                hdr = self.w._take(9)
                payload = self.w._take(n)
                self._frame(hdr[3], hdr[4], int.from_bytes(hdr[5:9], "big") & 0x7fffffff, payload)
        except socket.timeout:
            return

    def _frame(self, ftype, flags, sid, payload):
        if ftype == DATA:
            data = payload
            if flags & 0x8:
                data = payload[1:len(payload) - payload[0]]
            self.count[sid] = self.count.get(sid, 0) + len(data)
            if sid in self.hashers:
                self.hashers[sid].update(data)
            else:
                self.body.setdefault(sid, bytearray()).extend(data)
            if payload and sid not in self.hold:
                self.open_window(sid, len(payload))
        elif ftype == HEADERS:
            block = payload
            if flags & 0x8:
                block = block[1:]
            if flags & 0x20:
                block = block[5:]
            self.first_header_byte.setdefault(sid, block[:1])
        elif ftype == SETTINGS and not flags & 0x1:
            self.w.send(h2_frame(SETTINGS, 0x1, 0))
        elif ftype == PING and not flags & 0x1:
            self.w.send(h2_frame(PING, 0x1, 0, payload))
        elif ftype == RST_STREAM:
            self.resets[sid] = int.from_bytes(payload[:4], "big")
        elif ftype == GOAWAY:
            self.goaway = payload
        elif ftype == PUSH_PROMISE:
            self.pushes += 1
        if ftype in (DATA, HEADERS) and flags & 0x1:
            self.ended.add(sid)

    def run_until(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        while not pred():
            if self.goaway is not None or self.resets:
                raise AssertionError("while waiting for %s: GOAWAY %r, RST_STREAM %r"
                                     % (what, self.goaway, self.resets))
            if time.monotonic() > deadline:
                raise AssertionError("no %s within %.0fs" % (what, timeout))
            self.step()


def wait_stall(proxy, rchar0, step):
    """Polls rchar (calling step() between polls) until it grows by <= 4096
    bytes over 1 s. Returns (stalled, bytes read since rchar0)."""
    deadline = time.monotonic() + SETTLE_DEADLINE
    window = [h.rchar(proxy.pid)]
    while time.monotonic() < deadline:
        step()
        assert proxy.alive(), "sightline exited with %r" % proxy.proc.returncode
        window.append(h.rchar(proxy.pid))
        window = window[-(WINDOW_POLLS + 1):]
        if len(window) == WINDOW_POLLS + 1 and window[-1] - window[0] <= 4096:
            return True, window[-1] - rchar0
    return False, window[-1] - rchar0



def main(t):
    pki = t.pki()
    ng = t.start_nginx(pki, certs=["valid-ec"], big=True, upload=True)
    proxy = t.start_proxy(pki)
    port = ng.port("valid-ec")
    target = "localhost:%d" % port
    base = "https://%s" % target
    one_k = open(ng.files["/1k"], "rb").read()

    with t.check("curl --http2 /1k: h2 on both legs, exact body", fatal=True):
        m = proxy.mark()
        cp = curl_h2(proxy, pki, base + "/1k")
        assert cp.returncode == 0, "curl rc=%d: %s" % (cp.returncode, h.curl_err(cp))
        body, ver, client = split_w(cp)
        assert ver == "2", "curl negotiated HTTP/%s" % ver
        assert body == one_k, "body differs (%d bytes)" % len(body)
        ev = h.connection_line(proxy, client, since=m)
        assert ev is not None, "no connection line for client %s" % client
        alpns = (ev["client_tls"].get("alpn"), ev["upstream_tls"].get("alpn"))
        assert alpns == ("h2", "h2"), "ALPN client/upstream %r" % (alpns,)

    with t.check('connection line: "codec": "h2"'):
        assert ev.get("codec") == "h2", "codec %r" % ev.get("codec")

    with t.check("exchange line: protocol HTTP/2, odd stream id, exact fields, complete"):
        exs = exchanges_of(proxy, ev["id"], m)
        assert len(exs) == 1, "%d exchange lines for conn %s" % (len(exs), ev["id"])
        e = exs[0]
        want = {"protocol": "HTTP/2", "method": "GET", "target": "/1k", "authority": target,
                "status": 200, "request_body_bytes": 0, "response_body_bytes": len(one_k),
                "outcome": "complete", "client": client}
        bad = {k: e.get(k) for k, v in want.items() if e.get(k) != v}
        assert not bad, "fields differ: %r (line %r)" % (bad, e)
        assert isinstance(e.get("stream"), int) and e["stream"] % 2 == 1, "stream %r" % e.get("stream")

    with t.check("slow h2 reader (curl --limit-rate %dk): proxy reads at the client's pace, "
                 "RSS growth < 32 MiB" % (SLOW_RATE // 1024)):
        rss0 = h.rss_bytes(proxy.pid)
        rchar0 = h.rchar(proxy.pid)
        cmd = ["curl", "--silent", "--show-error", "--max-time", "120", "--http2",
               "--proxy", "http://127.0.0.1:%d" % proxy.port, "--cacert", pki.root,
               "--limit-rate", str(SLOW_RATE), "-o", os.devnull, base + "/big"]
        slow = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        holder = h._ProcHolder(slow)
        h._register(holder)
        try:
            deadline = time.monotonic() + SETTLE_DEADLINE
            window = [h.rchar(proxy.pid)]
            settled = started = False
            while time.monotonic() < deadline:
                time.sleep(POLL)
                assert proxy.alive(), "sightline exited with %r" % proxy.proc.returncode
                assert slow.poll() is None, "curl exited early (rc=%r): %s" % (
                    slow.returncode, slow.stderr.read().decode(errors="replace")[-300:])
                window.append(h.rchar(proxy.pid))
                window = window[-(WINDOW_POLLS + 1):]
                # only a window after the body started flowing counts
                if not started:
                    started = window[-1] - rchar0 >= 2**20
                    window = window[-1:]
                    continue
                if len(window) == WINDOW_POLLS + 1 and window[-1] - window[0] <= SETTLED_RATE:
                    settled = True
                    break
            assert started, "the download never started (proxy read %d bytes in %.0fs)" % (
                window[-1] - rchar0, SETTLE_DEADLINE)
            read_total = window[-1] - rchar0
            rss1 = h.rss_bytes(proxy.pid)
            t.note("proxy read %.1f MiB, last second %+.0f KiB, RSS %+.1f MiB" % (
                read_total / 2**20, (window[-1] - window[0]) / 1024, (rss1 - rss0) / 2**20))
            assert settled, "proxy still reading > %d KiB/s after %.0fs (client reads %d KiB/s)" % (
                SETTLED_RATE // 1024, SETTLE_DEADLINE, SLOW_RATE // 1024)
            assert read_total < h.BIG_SIZE * 0.8, \
                "proxy read %.1f MiB of the 50 MiB body for a client reading %d KiB/s" % (
                    read_total / 2**20, SLOW_RATE // 1024)
            assert rss1 - rss0 < RSS_LIMIT, "RSS grew by %.1f MiB" % ((rss1 - rss0) / 2**20)
        finally:
            holder.kill()
            h._unregister(holder)
            slow.stderr.close()

    with t.check("one h2 stream stalled by its window (raw client), the connection still flowing: "
                 "a second stream completes, the proxy stops reading the stalled body, RSS bounded, "
                 "then the body resumes byte-exact"):
        rss0 = h.rss_bytes(proxy.pid)
        rchar0 = h.rchar(proxy.pid)
        w = h.tls_tunnel(proxy.port, target, pki.root, alpn=["h2"])
        try:
            assert w.sock.selected_alpn_protocol() == "h2", "ALPN %r" % w.sock.selected_alpn_protocol()
            c = RawH2(w, target)
            c.hold.add(1)
            c.request(1, "/big", hashed=True)
            c.request(3, "/1k")
            c.run_until(lambda: 3 in c.ended, 15, "end of stream 3 (/1k)")
            assert bytes(c.body[3]) == one_k, "stream 3 body differs (%d bytes)" % len(c.body[3])
            assert c.first_header_byte.get(3) == b"\x88" and c.first_header_byte.get(1) in (b"\x88", None), \
                "responses not :status 200 (first HPACK bytes %r)" % c.first_header_byte
            stalled, read_total = wait_stall(proxy, rchar0, c.step)
            rss1 = h.rss_bytes(proxy.pid)
            t.note("stream 1 got %d bytes, proxy read %.1f MiB, RSS %+.1f MiB" % (
                c.count[1], read_total / 2**20, (rss1 - rss0) / 2**20))
            assert c.count[1] <= 65535, "stream 1 got %d bytes past its 65535-byte window" % c.count[1]
            assert stalled, "proxy still reading after %.0fs with stream 1 stalled" % SETTLE_DEADLINE
            assert read_total < h.BIG_SIZE * 0.8, \
                "proxy read %.1f MiB of /big for a stream whose client window is 64 KiB" % (read_total / 2**20)
            assert rss1 - rss0 < RSS_LIMIT, "RSS grew by %.1f MiB" % ((rss1 - rss0) / 2**20)
            assert not c.resets and c.goaway is None, "RST_STREAM %r / GOAWAY %r" % (c.resets, c.goaway)
            c.hold.clear()
            c.open_window(1, MAX_WINDOW - 65535)
            c.run_until(lambda: 1 in c.ended, 60, "end of stream 1 (/big)")
            assert c.count[1] == h.BIG_SIZE, "stream 1 got %d bytes" % c.count[1]
            assert c.hashers[1].hexdigest() == ng.sha["/big"], "stream 1 body sha256 differs"
        finally:
            w.sock.close()

    with t.check("proxy still serves h2 after the slow reader was killed"):
        cp = curl_h2(proxy, pki, base + "/1k")
        assert cp.returncode == 0, "curl rc=%d: %s" % (cp.returncode, h.curl_err(cp))
        body, ver, _ = split_w(cp)
        assert ver == "2" and body == one_k, "HTTP/%s, %d bytes" % (ver, len(body))

    with t.check("50 MiB download byte-exact over h2"):
        out = os.path.join(t.dir, "big-h2")
        cp = curl_h2(proxy, pki, base + "/big", ["-o", out], timeout=90)
        assert cp.returncode == 0, "curl rc=%d: %s" % (cp.returncode, h.curl_err(cp))
        _, ver, _ = split_w(cp)
        assert ver == "2", "HTTP/%s" % ver
        assert os.path.getsize(out) == h.BIG_SIZE, "got %d bytes" % os.path.getsize(out)
        assert h.sha256_file(out) == ng.sha["/big"], "sha256 differs"
        os.unlink(out)

    with t.check("50 MiB upload (POST) byte-exact over h2, %d times (new connection each); "
                 "exchange line counts the body" % UPLOAD_ROUNDS):
        # Repeated: a flow-control stall on the request side can depend on
        # how the origin's WINDOW_UPDATEs interleave (seen ~1 in 6 uploads).
        up = os.path.join(t.dir, "upload-h2")
        h.write_pseudorandom(up, h.BIG_SIZE, seed=80)
        up_sha = h.sha256_file(up)
        for rnd in range(UPLOAD_ROUNDS):
            m = proxy.mark()
            cp = curl_h2(proxy, pki, base + "/upload",
                         ["--data-binary", "@" + up, "-H", "Content-Type: application/octet-stream",
                          "--fail"], timeout=30)
            assert cp.returncode == 0, "round %d: curl rc=%d: %s" % (rnd + 1, cp.returncode, h.curl_err(cp))
            body, ver, client = split_w(cp)
            assert ver == "2", "HTTP/%s" % ver
            reply = json.loads(body)
            assert reply["length"] == h.BIG_SIZE, "origin received %d bytes" % reply["length"]
            assert reply["sha256"] == up_sha, "origin received different bytes"
            ev = h.connection_line(proxy, client, since=m)
            assert ev is not None, "no connection line"
            exs = exchanges_of(proxy, ev["id"], m)
            got = [(e.get("protocol"), e.get("method"), e.get("request_body_bytes"), e.get("outcome"))
                   for e in exs]
            assert got == [("HTTP/2", "POST", h.BIG_SIZE, "complete")], "exchange lines %r" % got
        os.unlink(up)

    with t.check("%d h2 uploads of 1 MiB, each on a new connection: none stalls" % SMALL_UPLOADS):
        # Cheap and many: a request-side flow-control stall that depends on
        # timing shows up within a few rounds (it did in ~1 of 4 with a
        # WINDOW_UPDATE left unsent toward the client).
        small = os.path.join(t.dir, "upload-1m")
        h.write_pseudorandom(small, 1 << 20, seed=81)
        small_sha = h.sha256_file(small)
        for rnd in range(SMALL_UPLOADS):
            cp = curl_h2(proxy, pki, base + "/upload",
                         ["--data-binary", "@" + small, "-H", "Content-Type: application/octet-stream",
                          "--fail"], timeout=10)
            assert cp.returncode == 0, "round %d: curl rc=%d: %s" % (rnd + 1, cp.returncode, h.curl_err(cp))
            body, ver, _ = split_w(cp)
            reply = json.loads(body)
            assert ver == "2" and reply["sha256"] == small_sha, "round %d: HTTP/%s, %r" % (rnd + 1, ver, reply)

    with t.check("%d concurrent streams on one h2 connection (curl --parallel): all exact, "
                 "one connection" % PARALLEL):
        m = proxy.mark()
        outdir = os.path.join(t.dir, "par")
        os.makedirs(outdir)
        args = ["--http2", "--parallel", "--parallel-max", str(PARALLEL),
                "-w", "%{http_code} %{http_version} %{num_connects} %{local_port} %{url_effective}\n"]
        for i in range(PARALLEL):
            args += ["-o", os.path.join(outdir, str(i)), base + "/1k?n=%d" % i]
        cp = h.curl(["--proxy", "http://127.0.0.1:%d" % proxy.port, "--cacert", pki.root] + args,
                    timeout=60)
        assert cp.returncode == 0, "curl rc=%d: %s" % (cp.returncode, h.curl_err(cp))
        rows = [l.split() for l in cp.stdout.decode().splitlines() if l.strip()]
        assert len(rows) == PARALLEL, "%d transfers reported" % len(rows)
        bad = [r for r in rows if r[0] != "200" or r[1] != "2"]
        assert not bad, "transfers not 200 over HTTP/2: %r" % bad[:3]
        wrong = [i for i in range(PARALLEL)
                 if open(os.path.join(outdir, str(i)), "rb").read() != one_k]
        assert not wrong, "%d bodies differ, e.g. #%d" % (len(wrong), wrong[0])
        connects = sum(int(r[2]) for r in rows)
        ports = sorted(set(r[3] for r in rows))
        assert connects == 1 and len(ports) == 1, "%d connections (client ports %s)" % (connects, ports)
        par_client = "127.0.0.1:%s" % ports[0]
        par_mark = m

    with t.check("the %d streams: %d exchange lines, same conn, distinct stream ids, all targets"
                 % (PARALLEL, PARALLEL)):
        ev = h.connection_line(proxy, par_client, since=par_mark)
        assert ev is not None, "no connection line for %s" % par_client
        assert ev.get("codec") == "h2", "codec %r" % ev.get("codec")
        exs = exchanges_of(proxy, ev["id"], par_mark)
        assert len(exs) == PARALLEL, "%d exchange lines for conn %s" % (len(exs), ev["id"])
        streams = [e.get("stream") for e in exs]
        assert len(set(streams)) == PARALLEL and all(isinstance(s, int) and s % 2 == 1 for s in streams), \
            "stream ids %r" % sorted(streams)[:10]
        targets = sorted(e.get("target") for e in exs)
        assert targets == sorted("/1k?n=%d" % i for i in range(PARALLEL)), "targets %r" % targets[:5]
        assert all(e.get("status") == 200 and e.get("response_body_bytes") == len(one_k)
                   and e.get("outcome") == "complete" for e in exs), "a line is not 200/1024/complete"

    fwd = h.ConnectForwarder(proxy.port, target)
    with t.check("h2load -c1 -m%d -n1000 through the proxy: all succeed on one connection" % PARALLEL):
        cp = h.run(["h2load", "-n", "1000", "-c", "1", "-m", str(PARALLEL),
                    "https://localhost:%d/1k" % fwd.port], timeout=60)
        out = cp.stdout.decode(errors="replace")
        mm = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                       r"(\d+) failed, (\d+) errored", out)
        assert mm, "no summary from h2load (rc=%d): %s" % (cp.returncode, (out + cp.stderr.decode())[-500:])
        assert mm.group(4) == "1000", "h2load: %s" % mm.group(0)
        assert "Application protocol: h2" in out, "h2load did not negotiate h2"
        assert fwd.accepted == 1, "h2load opened %d connections" % fwd.accepted
        assert not fwd.errors, "forwarder: %r" % fwd.errors

    # Regression: the connection window given back for bytes passed on after
    # the origin's END_STREAM (a finished response) was once leaked, so a
    # connection stalled after its connection window's worth of responses.
    small = t.start_proxy(pki, name="smallwindow",
                          extra="[http2]\nconnection_window_size = 65535\ninitial_window_size = 65535\n")
    fwd2 = h.ConnectForwarder(small.port, target)
    with t.check("h2load -n600 on one connection whose window is 64 KiB: no stall (window returned)"):
        cp = h.run(["h2load", "-n", "600", "-c", "1", "-m", "10",
                    "https://localhost:%d/1k" % fwd2.port], timeout=60)
        out = cp.stdout.decode(errors="replace")
        mm = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded", out)
        assert mm, "no summary from h2load (rc=%d): %s" % (cp.returncode, (out + cp.stderr.decode())[-500:])
        assert mm.group(4) == "600", "h2load: %s (600 KiB through a 64 KiB window)" % mm.group(0)

    # plain-HTTP backend behind nginx: promises 100000 bytes, sends 20000, closes
    # (nginx then resets the h2 stream mid-body)
    backend = TruncatingBackend()
    site = h.NginxSite(t, pki, """
        location = /1k { }
        location = /trailers { add_trailer X-Trailer-One "t1" always; add_trailer X-Check abc always; }
        location = /reset { return 444; }
        location = /midreset { proxy_pass http://127.0.0.1:%d; proxy_buffering off; }
        location = /push { http2_push /1k; return 200 "pushed\\n"; }
    """ % backend.port, server_extra="keepalive_requests 3;", name="h2features")
    os.link(site.files["/1k"], os.path.join(site.www, "trailers"))
    sfwd = h.ConnectForwarder(proxy.port, "localhost:%d" % site.port())

    def nghttp_exchanges(m):
        """Exchange lines of the last connection the forwarder opened."""
        ev = h.connection_line(proxy, sfwd.clients[-1], since=m)
        assert ev is not None, "no connection line for %s" % sfwd.clients[-1]
        return exchanges_of(proxy, ev["id"], m)

    with t.check("response trailers over h2 reach the client after the body (nghttp)"):
        cp, out = nghttp(sfwd, ["/trailers"])
        assert cp.returncode == 0, "nghttp rc=%d: %s" % (cp.returncode, out[-500:])
        lines = out.splitlines()
        data_at = [i for i, l in enumerate(lines) if "recv DATA frame" in l]
        assert data_at, "no DATA frame received"
        after = "\n".join(lines[data_at[-1]:])
        for tr in ("x-trailer-one: t1", "x-check: abc"):
            assert tr in after, "trailer %r not received after the body" % tr
        assert re.search(r"recv HEADERS frame <[^>]*flags=0x05", after), "no trailing HEADERS with END_STREAM"

    with t.check("origin resets a stream before answering (nginx 444): that stream gets 502, "
                 "the other stream on the connection completes"):
        m = proxy.mark()
        cp, out = nghttp(sfwd, ["/reset", "/1k"])
        sid = stream_of(out, "/reset")
        assert re.search(r"recv \(stream_id=%d\) :status: 502" % sid, out), \
            "no 502 on stream %d:\n%s" % (sid, out[-1500:])
        assert "recv GOAWAY" not in out, "connection-level GOAWAY instead of a stream error"
        assert re.search(r"recv DATA frame <length=1024, flags=0x01, stream_id=%d>" % stream_of(out, "/1k"),
                         out), "/1k not completed on the same connection:\n%s" % out[-1500:]
        exs = {e.get("target"): e for e in nghttp_exchanges(m)}
        assert exs.get("/reset", {}).get("outcome") == "aborted", "/reset exchange %r" % exs.get("/reset")
        assert exs.get("/1k", {}).get("outcome") == "complete", "/1k exchange %r" % exs.get("/1k")

    with t.check("origin resets a stream mid-body: the client gets RST_STREAM after the partial "
                 "body, never END_STREAM"):
        m = proxy.mark()
        cp, out = nghttp(sfwd, ["/midreset"])
        sid = stream_of(out, "/midreset")
        assert re.search(r"recv \(stream_id=%d\) :status: 200" % sid, out), "no 200 head:\n%s" % out[-1500:]
        got = sum(int(n) for n in re.findall(r"recv DATA frame <length=(\d+), flags=0x0., stream_id=%d>" % sid, out))
        assert re.search(r"recv RST_STREAM frame <length=4, flags=0x00, stream_id=%d>" % sid, out), \
            "no RST_STREAM for stream %d:\n%s" % (sid, out[-1500:])
        assert not re.search(r"recv DATA frame <[^>]*flags=0x01, stream_id=%d>" % sid, out), \
            "truncated body ended with END_STREAM (looks complete)"
        assert got < 100000, "client got %d body bytes of a 20000-byte truncated body" % got
        t.note("%d body bytes before the reset" % got)
        exs = nghttp_exchanges(m)
        assert [e.get("outcome") for e in exs] == ["aborted"], "exchange lines %r" % exs

    with t.check("origin GOAWAY (keepalive_requests 3) reaches the client, last stream id mapped"):
        cp, out = nghttp(sfwd, ["/1k?a", "/1k?b", "/1k?c", "/1k?d"])
        mg = re.search(r"recv GOAWAY frame.*\n\s*\(last_stream_id=(\d+)", out)
        assert mg, "client got no GOAWAY:\n%s" % out[-1500:]
        last = int(mg.group(1))
        done = [int(s) for s in re.findall(r"recv DATA frame <length=1024, flags=0x01, stream_id=(\d+)>", out)]
        mm = re.search(r"total=(\d+), processed=(\d+)", out)
        assert mm and mm.group(0) == "total=4, processed=3", \
            "nghttp: %s (nginx alone: total=4, processed=3)" % (mm.group(0) if mm else "all processed")
        assert len(done) == 3 and max(done) == last, \
            "completed streams %r, GOAWAY last_stream_id %d" % (done, last)

    with t.check("server push never reaches the client (origin pushes /1k, client allows push)"):
        cp, out = nghttp(sfwd, ["/push"])
        assert cp.returncode == 0, "nghttp rc=%d: %s" % (cp.returncode, out[-500:])
        assert re.search(r"recv DATA frame <length=7, flags=0x01", out), "no response body:\n%s" % out[-1500:]
        assert "PUSH_PROMISE" not in out, "client received a PUSH_PROMISE"

    h1site = h.NginxSite(t, pki, "        location = /1k { }\n", http2=False, name="h1only")
    with t.check("client offers h2, origin speaks only http/1.1 -> HTTP/1.1 end to end, exact body"):
        m = proxy.mark()
        cp = curl_h2(proxy, pki, "https://localhost:%d/1k" % h1site.port())
        assert cp.returncode == 0, "curl rc=%d: %s" % (cp.returncode, h.curl_err(cp))
        body, ver, client = split_w(cp)
        assert ver == "1.1", "curl got HTTP/%s" % ver
        assert body == one_k, "body differs"
        ev = h.connection_line(proxy, client, since=m)
        assert ev is not None, "no connection line"
        assert ev["client_tls"].get("alpn") == "http/1.1", "client ALPN %r" % ev["client_tls"].get("alpn")
        assert ev.get("codec") == "http/1.1", "codec %r" % ev.get("codec")
        exs = exchanges_of(proxy, ev["id"], m)
        assert [(e.get("protocol"), e.get("status")) for e in exs] == [("HTTP/1.1", 200)], \
            "exchange lines %r" % exs

    with t.check("proxy alive; SIGTERM exits 0"):
        assert proxy.alive(), "sightline exited with %r" % proxy.proc.returncode
        fwd.kill()
        sfwd.kill()
        rc = proxy.stop()
        assert rc == 0, "exit code %r" % rc


if __name__ == "__main__":
    h.run_test("80_http2", main)
