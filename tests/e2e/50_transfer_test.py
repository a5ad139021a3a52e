#!/usr/bin/env python3
"""Layer 50: bulk transfer and concurrency through an intercepted session.

50 MiB download and 20 MiB upload byte-exact (HTTP/1.1 and HTTP/2), and 200
simultaneously open intercepted connections that all return the exact body.
"""

import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

CONCURRENCY = 200


def concurrent(t, proxy, pki, ec, one_k, workers):
    """CONCURRENCY tunnels, all TLS-established before any request is sent."""
    with t.check("%d concurrent intercepted connections, all exact (workers=%d)" % (CONCURRENCY, workers)):
        target = "localhost:%d" % ec
        barrier = threading.Barrier(CONCURRENCY, timeout=90)
        ctx = h.client_context(pki.root)
        m = proxy.mark()

        def one(i):
            s = ss = None
            try:
                s, code, head = h.connect_tunnel(proxy.port, target, timeout=90)
                if code != 200:
                    barrier.abort()
                    return "CONNECT -> %r" % head.split("\r\n", 1)[0]
                ss = ctx.wrap_socket(s, server_hostname="localhost")
                barrier.wait()          # all 200 tunnels open and handshaken at once
                ss.sendall(("GET /1k HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                            % target).encode())
                st, _, body = h.read_http_response(ss)
                if st != 200:
                    return "status %d" % st
                if body != one_k:
                    return "body differs (%d bytes)" % len(body)
                return None
            except threading.BrokenBarrierError:
                return "barrier broken (another connection failed or timed out)"
            except Exception as e:
                barrier.abort()
                return "%s: %s" % (type(e).__name__, e)
            finally:
                if ss is not None or s is not None:
                    (ss or s).close()

        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
            results = list(pool.map(one, range(CONCURRENCY)))
        took = time.monotonic() - t0
        errors = [r for r in results if r]
        assert not errors, "%d/%d failed, e.g. %s" % (
            len(errors), CONCURRENCY, sorted(set(errors))[:3])
        assert took < 90, "took %.1fs" % took
        evs = proxy.wait_events(lambda e: e.get("event") == "connection" and e.get("target") == target,
                                CONCURRENCY, timeout=15, since=m)
        assert len(evs) >= CONCURRENCY, "only %d connection log lines" % len(evs)
        bad = [e.get("upstream_verdict") for e in evs if e.get("upstream_verdict") != "ok"]
        assert not bad, "verdicts not ok: %s" % bad[:5]


def main(t):
    pki = t.pki()
    origin = t.start_nginx(pki, certs=["valid-ec", "valid-rsa"], big=True, upload=True)
    proxy = t.start_proxy(pki)
    ec = origin.port("valid-ec")
    rsa = origin.port("valid-rsa")
    one_k = open(origin.files["/1k"], "rb").read()

    for proto, flag in (("HTTP/1.1", "--http1.1"), ("HTTP/2", "--http2")):
        with t.check("50 MiB download byte-exact over %s" % proto):
            out = os.path.join(t.dir, "big-%s" % flag.strip("-"))
            t0 = time.monotonic()
            cp = h.curl_via(proxy.port, "https://localhost:%d/big" % ec, pki.root,
                            [flag, "-o", out], timeout=90)
            assert cp.returncode == 0, "curl rc=%d: %s" % (cp.returncode, h.curl_err(cp))
            size = os.path.getsize(out)
            assert size == h.BIG_SIZE, "got %d bytes, expected %d" % (size, h.BIG_SIZE)
            assert h.sha256_file(out) == origin.sha["/big"], "sha256 differs"
            os.unlink(out)
            t.note("%.1f MiB/s" % (h.BIG_SIZE / 2**20 / max(time.monotonic() - t0, 1e-6)))

    upload = os.path.join(t.dir, "upload.bin")
    h.write_pseudorandom(upload, h.UPLOAD_SIZE, seed=20)
    up_sha = h.sha256_file(upload)
    for proto, flag in (("HTTP/1.1", "--http1.1"), ("HTTP/2", "--http2")):
        with t.check("20 MiB upload byte-exact over %s" % proto):
            cp = h.curl_via(proxy.port, "https://localhost:%d/upload" % rsa, pki.root,
                            [flag, "--data-binary", "@" + upload,
                             "-H", "Content-Type: application/octet-stream", "--fail"], timeout=90)
            assert cp.returncode == 0, "curl rc=%d: %s" % (cp.returncode, h.curl_err(cp))
            try:
                reply = json.loads(cp.stdout)
            except ValueError:
                raise AssertionError("upload sink reply not JSON: %r" % cp.stdout[:200])
            assert reply["length"] == h.UPLOAD_SIZE, "origin received %d bytes" % reply["length"]
            assert reply["sha256"] == up_sha, "origin received different bytes (sha256 mismatch)"

    with t.check("byte counters in the log match a 50 MiB download"):
        m = proxy.mark()
        cp = h.curl_via(proxy.port, "https://localhost:%d/big" % ec, pki.root,
                        ["--http1.1", "-o", "/dev/null"], timeout=90)
        assert cp.returncode == 0, "curl rc=%d" % cp.returncode
        ev = proxy.conn_event("localhost:%d" % ec, since=m)
        assert ev is not None, "no connection line"
        s2c = ev.get("bytes_server_to_client", 0)
        # plaintext or TLS-record bytes: either way at least the body, and
        # not wildly more (records add < 1%).
        assert h.BIG_SIZE <= s2c < h.BIG_SIZE * 1.05, "bytes_server_to_client = %r" % s2c

    concurrent(t, proxy, pki, ec, one_k, workers=1)
    p2 = t.start_proxy(pki, name="workers2", workers=2)
    concurrent(t, p2, pki, ec, one_k, workers=2)

    with t.check("proxies alive and RSS sane after the load"):
        for p in (proxy, p2):
            assert p.alive(), "%s exited with %r" % (p.name, p.proc.returncode)
            rss = h.rss_bytes(p.pid)
            t.note("%s RSS %.1f MiB" % (p.name, rss / 2**20))
            if os.environ.get("SIGHTLINE_SANITIZE", "none") in ("", "none"):
                assert rss < 512 * 2**20, "%s RSS %.0f MiB" % (p.name, rss / 2**20)

    with t.check("SIGTERM exits 0"):
        rcs = [proxy.stop(), p2.stop()]
        assert rcs == [0, 0], "exit codes %r" % rcs


if __name__ == "__main__":
    h.run_test("50_transfer", main)
