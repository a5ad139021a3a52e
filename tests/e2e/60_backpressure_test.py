#!/usr/bin/env python3
"""Layer 60: back-pressure, both directions.

Download: a client opens an intercepted session, asks for the 50 MiB body,
reads a few KiB and stops reading. The proxy must stop reading from the
network (its /proc/PID/io rchar stops growing), its RSS must not grow by
more than 32 MiB, and once the client reads again the rest of the body must
arrive byte-exact.

Upload: a client streams 64 MiB to an origin that accepts the TLS session
but does not read. Same stall and RSS conditions; once the origin reads, it
receives every byte exactly.
"""

import hashlib
import os
import random
import socket
import ssl
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

POLL = 0.1                 # seconds between /proc polls
STALL_POLLS = 10           # consecutive polls with (almost) no reads = stalled
STALL_SLACK = 4096         # bytes of rchar growth tolerated per stall window
                           # (timer/eventfd reads; a live transfer moves MBs)
STALL_DEADLINE = 60.0
RSS_LIMIT = 32 * 2**20
INITIAL_READ = 8 * 1024
UP_TOTAL = 64 * 2**20
UP_CHUNK = 64 * 1024


def wait_stall(t, proxy, rchar0):
    """Poll rchar until it grows by <= STALL_SLACK over STALL_POLLS polls.
    Returns (stalled, bytes read since rchar0, growth in the last window)."""
    deadline = time.monotonic() + STALL_DEADLINE
    window = [h.rchar(proxy.pid)]
    while time.monotonic() < deadline:
        time.sleep(POLL)
        assert proxy.alive(), "sightline exited with %r" % proxy.proc.returncode
        window.append(h.rchar(proxy.pid))
        window = window[-(STALL_POLLS + 1):]
        if len(window) == STALL_POLLS + 1 and window[-1] - window[0] <= STALL_SLACK:
            return True, window[-1] - rchar0, window[-1] - window[0]
    return False, window[-1] - rchar0, window[-1] - window[0]


class StallingOrigin:
    """TLS origin with the valid-ec cert: accepts one connection, completes
    the handshake, then reads nothing until go is set; then reads exactly
    `expect` bytes and records their sha256."""

    def __init__(self, pki, expect):
        self.expect = expect
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # small receive window, inherited by the accepted socket
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(4)
        self.port = self.lsock.getsockname()[1]
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(pki.fullchain("valid-ec"), pki.key("valid-ec"))
        self.go = threading.Event()
        self.handshaken = threading.Event()
        self.done = threading.Event()
        self.got = 0
        self.sha = None
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        h._register(self)

    def _run(self):
        conn = None
        try:
            self.lsock.settimeout(60)
            c, _ = self.lsock.accept()
            c.settimeout(60)
            conn = self.ctx.wrap_socket(c, server_side=True)
            self.handshaken.set()
            self.go.wait(180)
            hasher = hashlib.sha256()
            while self.got < self.expect:
                b = conn.recv(min(1 << 18, self.expect - self.got))
                if not b:
                    break
                hasher.update(b)
                self.got += len(b)
            self.sha = hasher.hexdigest()
        except Exception as e:
            self.error = e
        finally:
            self.done.set()
            if conn is not None:
                conn.close()

    def kill(self):
        h._unregister(self)
        self.go.set()
        self.lsock.close()


def main(t):
    pki = t.pki()
    origin = t.start_nginx(pki, certs=["valid-ec"], big=True)
    proxy = t.start_proxy(pki)
    port = origin.port("valid-ec")
    target = "localhost:%d" % port

    with t.check("warm-up request (forge cache, buffers) succeeds", fatal=True):
        st, body = h.https_get_via_proxy(proxy.port, target, "/1k", pki.root)
        assert st == 200 and body == open(origin.files["/1k"], "rb").read(), "status %d" % st

    rss0 = h.rss_bytes(proxy.pid)
    rchar0 = h.rchar(proxy.pid)
    print("      baseline: RSS %.1f MiB, rchar %d" % (rss0 / 2**20, rchar0))

    s, code, head = h.connect_tunnel(proxy.port, target, timeout=30, rcvbuf=16 * 1024)
    ss = None
    try:
        with t.check("download: CONNECT + TLS + GET /big, read first %d KiB, then stop reading"
                     % (INITIAL_READ // 1024), fatal=True):
            assert code == 200, "CONNECT answered %r" % head.split("\r\n", 1)[0]
            ss = h.tls_over(s, h.client_context(pki.root), "localhost")
            ss.sendall(("GET /big HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % target).encode())
            code2, rhead = h.read_response_head(ss)
            assert code2 == 200, "origin answered %r" % rhead[:100]
            assert ("Content-Length: %d" % h.BIG_SIZE).lower() in rhead.lower(), "unexpected head %r" % rhead
            hasher = hashlib.sha256()
            got = 0
            while got < INITIAL_READ:
                b = ss.recv(INITIAL_READ - got)
                assert b, "EOF after %d body bytes" % got
                hasher.update(b)
                got += len(b)

        with t.check("download: proxy stops reading from the network (rchar stalls)"):
            stalled, read_total, last = wait_stall(t, proxy, rchar0)
            t.note("proxy read %.1f MiB before stalling" % (read_total / 2**20))
            assert stalled, "rchar still growing after %.0fs (last window +%d bytes)" % (
                STALL_DEADLINE, last)
            # it must have stalled because the client stopped, not because it
            # already swallowed the whole body
            assert read_total < h.BIG_SIZE * 0.8, \
                "proxy read %.1f MiB of a 50 MiB body from a client that stopped after %d KiB" % (
                    read_total / 2**20, INITIAL_READ // 1024)

        with t.check("download: RSS growth while stalled < 32 MiB"):
            rss1 = h.rss_bytes(proxy.pid)
            growth = rss1 - rss0
            t.note("RSS %.1f MiB, growth %+.1f MiB" % (rss1 / 2**20, growth / 2**20))
            assert growth < RSS_LIMIT, "RSS grew by %.1f MiB" % (growth / 2**20)

        with t.check("download: resume reading, remaining body arrives byte-exact"):
            ss.settimeout(60)
            deadline = time.monotonic() + 90
            while got < h.BIG_SIZE:
                assert time.monotonic() < deadline, "still %d bytes missing after 90s" % (h.BIG_SIZE - got)
                try:
                    b = ss.recv(1 << 18)
                except socket.timeout:
                    raise AssertionError("read stalled with %d bytes missing" % (h.BIG_SIZE - got))
                assert b, "EOF with %d bytes missing" % (h.BIG_SIZE - got)
                hasher.update(b)
                got += len(b)
            assert got == h.BIG_SIZE, "got %d bytes (more than Content-Length)" % got
            assert hasher.hexdigest() == origin.sha["/big"], "sha256 of the body differs"
    finally:
        (ss or s).close()

    upload_direction(t, pki, proxy)

    with t.check("proxy alive; SIGTERM exits 0"):
        assert proxy.alive(), "sightline exited with %r" % proxy.proc.returncode
        rc = proxy.stop()
        assert rc == 0, "exit code %r" % rc


def upload_direction(t, pki, proxy):
    origin = StallingOrigin(pki, UP_TOTAL)
    target = "127.0.0.1:%d" % origin.port
    rss0 = h.rss_bytes(proxy.pid)
    rchar0 = h.rchar(proxy.pid)
    sent = [0]
    sender_error = []
    client_sha = hashlib.sha256()

    s, code, head = h.connect_tunnel(proxy.port, target, timeout=60)
    ss = None
    try:
        with t.check("upload: CONNECT + TLS to a non-reading origin", fatal=True):
            assert code == 200, "CONNECT answered %r" % head.split("\r\n", 1)[0]
            ss = h.tls_over(s, h.client_context(pki.root), "127.0.0.1")
            assert origin.handshaken.wait(30), "origin never completed its TLS handshake: %r" % (
                origin.error,)

        def sender():
            rng = random.Random(64)
            try:
                while sent[0] < UP_TOTAL:
                    chunk = rng.randbytes(UP_CHUNK)
                    client_sha.update(chunk)
                    ss.sendall(chunk)
                    sent[0] += len(chunk)
            except Exception as e:
                sender_error.append(e)

        th = threading.Thread(target=sender, daemon=True)
        th.start()

        with t.check("upload: proxy stops reading from the client (rchar stalls)"):
            stalled, read_total, last = wait_stall(t, proxy, rchar0)
            t.note("client sent %.1f MiB, proxy read %.1f MiB" % (sent[0] / 2**20, read_total / 2**20))
            assert not sender_error, "client send failed: %r" % sender_error[0]
            assert stalled, "rchar still growing after %.0fs (last window +%d bytes)" % (
                STALL_DEADLINE, last)
            assert read_total < UP_TOTAL * 0.8, \
                "proxy read %.1f MiB of %.0f MiB while the origin read nothing" % (
                    read_total / 2**20, UP_TOTAL / 2**20)

        with t.check("upload: RSS growth while stalled < 32 MiB"):
            rss1 = h.rss_bytes(proxy.pid)
            growth = rss1 - rss0
            t.note("RSS %.1f MiB, growth %+.1f MiB" % (rss1 / 2**20, growth / 2**20))
            assert growth < RSS_LIMIT, "RSS grew by %.1f MiB" % (growth / 2**20)

        with t.check("upload: origin resumes reading, receives all %d MiB byte-exact" % (UP_TOTAL >> 20)):
            origin.go.set()
            th.join(90)
            assert not th.is_alive(), "client still sending after 90s (%d bytes sent)" % sent[0]
            assert not sender_error, "client send failed: %r" % sender_error[0]
            assert origin.done.wait(60), "origin still reading (%d of %d bytes)" % (origin.got, UP_TOTAL)
            assert origin.error is None, "origin error: %r" % origin.error
            assert origin.got == UP_TOTAL, "origin received %d of %d bytes" % (origin.got, UP_TOTAL)
            assert origin.sha == client_sha.hexdigest(), "sha256 of received bytes differs"
    finally:
        (ss or s).close()
        origin.kill()


if __name__ == "__main__":
    h.run_test("60_backpressure", main)
