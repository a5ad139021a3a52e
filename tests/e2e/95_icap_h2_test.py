#!/usr/bin/env python3
"""Layer 95: ICAP adaptation of HTTP/2 exchanges against a real c-icap.

The same c-icap as layer 94 (echo for RESPMOD, url_check for REQMOD blocking
the host blocked.example), with curl --http2 through sightline to an h2
nginx: a GET and a 3 MB response pass byte-exact, a 2 MB POST body (larger
than the stream and connection windows, so the held body needs window
handed back) reaches the origin byte-exact, a blocked URL gets c-icap's
block page on its own stream while a parallel stream on the same connection
completes, a body over max_body streams through unadapted, and with c-icap
stopped a fail-closed proxy answers 502 per stream while a fail-open one
relays.
"""

import importlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

icap94 = importlib.import_module("94_icap_test")


def curl_h2(proxy, pki, url, extra=(), timeout=60):
    """curl --http2 through the proxy; stdout ends with '\\n<code> <version>'."""
    return h.curl_via(proxy.port, url, pki.root,
                      ["--http2", "-w", "\n%{http_code} %{http_version}"] + list(extra),
                      timeout=timeout)


def split_w(cp):
    body, _, tail = cp.stdout.rpartition(b"\n")
    code, _, ver = tail.decode().partition(" ")
    return body, code, ver


def parallel(proxy, pki, outdir, transfers):
    """Transfers [(url, extra args)] in one curl --parallel over HTTP/2; each
    --next group repeats the proxy and TLS options so that curl may reuse
    (multiplex) the one connection. Returns rows of
    (code, version, num_connects, body)."""
    os.makedirs(outdir, exist_ok=True)
    args = ["--parallel", "--parallel-max", "50"]
    for i, (url, extra) in enumerate(transfers):
        if i:
            args.append("--next")
        args += ["--proxy", "http://127.0.0.1:%d" % proxy.port, "--cacert", pki.root, "--http2",
                 "-w", "%d %%{http_code} %%{http_version} %%{num_connects}\n" % i,
                 "-o", os.path.join(outdir, str(i))] + list(extra) + [url]
    cp = h.curl(args, timeout=60)
    assert cp.returncode == 0, "curl rc=%d: %s" % (cp.returncode, h.curl_err(cp))
    rows = {}
    for line in cp.stdout.decode().splitlines():
        if line.strip():
            i, code, ver, n = line.split()
            rows[int(i)] = (code, ver, int(n), open(os.path.join(outdir, i), "rb").read())
    assert len(rows) == len(transfers), "%d transfers reported" % len(rows)
    return [rows[i] for i in range(len(transfers))]


def main(t):
    if not os.access(icap94.C_ICAP, os.X_OK) or not icap94.modules_dir():
        raise h.Fatal("c-icap is required (Debian packages c-icap, libc-icap-mod-urlcheck)")
    pki = t.pki()
    origin = t.start_nginx(pki, certs=["valid-ec"], big=True, upload=True)
    oport = origin.port("valid-ec")
    base = "https://localhost:%d" % oport
    one_k = open(origin.files["/1k"], "rb").read()
    part = open(origin.files["/big"], "rb").read(3_000_000)

    icap = icap94.CIcap(t)
    icap.start()
    icap_args = ["--icap-reqmod", icap.url("url_check"), "--icap-respmod", icap.url("echo")]
    proxy = t.start_proxy(pki, args=icap_args)
    metric = icap94.metric

    with t.check("an h2 GET passes byte-exact through REQMOD and RESPMOD", fatal=True):
        before = len(icap.requests())
        cp = curl_h2(proxy, pki, base + "/1k?a")
        body, code, ver = split_w(cp)
        assert cp.returncode == 0 and code == "200" and ver == "2", h.curl_err(cp) + " %s/%s" % (code, ver)
        assert body == one_k, "body differs (%d bytes)" % len(body)
        assert icap94.wait_grows(lambda: len(icap.requests()), before + 1), \
            "c-icap logged %d requests, want 2 more" % (len(icap.requests()) - before)

    with t.check("the h2 exchange's access-log line carries both ICAP outcomes"):
        ev = proxy.wait_event(lambda e: e.get("event") == "exchange" and e.get("target") == "/1k?a", 10)
        assert ev and ev.get("protocol") == "HTTP/2", ev
        assert ev.get("icap_reqmod") in ("unchanged", "modified"), ev
        assert ev.get("icap_respmod") in ("unchanged", "modified"), ev

    with t.check("a 3 MB h2 response passes byte-exact through RESPMOD"):
        before = metric(proxy, "sightline_icap_results_total", method="respmod")
        cp = curl_h2(proxy, pki, base + "/big?range", ["-r", "0-2999999"], timeout=120)
        body, code, ver = split_w(cp)
        assert cp.returncode == 0 and code == "206" and ver == "2", h.curl_err(cp) + " %s/%s" % (code, ver)
        assert body == part, "got %d bytes, differs" % len(body)
        assert metric(proxy, "sightline_icap_results_total", method="respmod") > before

    with t.check("a 2 MB h2 POST body reaches the origin byte-exact through REQMOD"):
        body_path = os.path.join(t.dir, "post.bin")
        h.write_pseudorandom(body_path, 2_000_000, seed=9)
        sha = h.sha256_file(body_path)
        cp = curl_h2(proxy, pki, base + "/upload", ["--data-binary", "@" + body_path], timeout=120)
        body, code, ver = split_w(cp)
        assert cp.returncode == 0 and code == "200" and ver == "2", h.curl_err(cp) + " %s/%s" % (code, ver)
        got = json.loads(body)
        assert got == {"sha256": sha, "length": 2_000_000}, "origin saw %s" % got

    with t.check("an h2 POST with Expect: 100-continue gets 100 from the proxy while held"):
        small = os.path.join(t.dir, "small.bin")
        h.write_pseudorandom(small, 100_000, seed=10)
        sha = h.sha256_file(small)
        # curl would send the body anyway after --expect100-timeout: a long
        # timeout and a short total show that the 100 came from the proxy.
        cp = curl_h2(proxy, pki, base + "/upload",
                     ["--data-binary", "@" + small, "-H", "Expect: 100-continue",
                      "--expect100-timeout", "20", "--max-time", "10", "-v"])
        body, code, ver = split_w(cp)
        assert cp.returncode == 0 and code == "200" and ver == "2", h.curl_err(cp) + " %s/%s" % (code, ver)
        assert b"< HTTP/2 100" in cp.stderr, "no 100 Continue seen by curl"
        assert json.loads(body) == {"sha256": sha, "length": 100_000}, "origin saw %s" % body[:200]

    with t.check("a blocked stream gets the block page; a parallel stream on the same connection "
                 "completes"):
        rows = parallel(proxy, pki, os.path.join(t.dir, "blk"), [
            (base + "/1k?blocked", ["-H", "Host: blocked.example"]),
            (base + "/1k?fine", []),
        ])
        (bcode, bver, bn, bbody), (fcode, fver, fn, fbody) = rows
        assert bcode == "403" and bver == "2", "blocked stream: %s HTTP/%s %r" % (bcode, bver, bbody[:200])
        assert b"blocked.example" in bbody, "no block page: %r" % bbody[:300]
        assert fcode == "200" and fver == "2" and fbody == one_k, \
            "parallel stream: %s HTTP/%s, %d bytes" % (fcode, fver, len(fbody))
        assert bn + fn == 1, "%d connections, want one multiplexed" % (bn + fn)
        assert metric(proxy, "sightline_icap_results_total", method="reqmod", result="respond") >= 1

    with t.check("50 concurrent h2 streams on one connection, each held for ICAP: all exact"):
        rows = parallel(proxy, pki, os.path.join(t.dir, "many"),
                        [(base + "/1k?many=%d" % i, []) for i in range(50)])
        bad = [i for i, r in enumerate(rows) if r[0] != "200" or r[1] != "2" or r[3] != one_k]
        assert not bad, "%d transfers wrong, e.g. #%d: %s" % (len(bad), bad[0], rows[bad[0]][:3])
        assert sum(r[2] for r in rows) == 1, "%d connections" % sum(r[2] for r in rows)

    with t.check("a body over max_body streams through unadapted over h2 and is counted"):
        cp = h.curl_via(proxy.port, base + "/big", pki.root,
                        ["--http2", "-o", "/dev/null", "-w", "%{http_code} %{size_download}"], timeout=120)
        assert cp.returncode == 0 and cp.stdout == b"200 %d" % h.BIG_SIZE, h.curl_err(cp)
        assert metric(proxy, "sightline_icap_bypassed_total", reason="too_large") >= 1

    with t.check("an h2 request body without content-length that outgrows max_body: what was "
                 "held goes on, the rest streams, the origin gets it byte-exact"):
        small_cap = t.start_proxy(pki, name="small-cap", extra=(
            '[icap]\nreqmod = "%s"\nrespmod = "%s"\nmax_body = 65536\n'
            % (icap.url("url_check"), icap.url("echo"))))
        before = metric(small_cap, "sightline_icap_bypassed_total", reason="too_large")
        # Transfer-Encoding: chunked makes curl send HTTP/2 DATA without a
        # content-length, so the cap is only found while holding (either
        # way the body must arrive whole and be counted as too large).
        cp = curl_h2(small_cap, pki, base + "/upload",
                     ["--data-binary", "@" + body_path, "-H", "Transfer-Encoding: chunked"], timeout=120)
        body, code, ver = split_w(cp)
        assert cp.returncode == 0 and code == "200" and ver == "2", h.curl_err(cp) + " %s/%s" % (code, ver)
        got = json.loads(body)
        assert got == {"sha256": h.sha256_file(body_path), "length": 2_000_000}, "origin saw %s" % got
        assert metric(small_cap, "sightline_icap_bypassed_total", reason="too_large") > before
        assert small_cap.stop() == 0

    with t.check("held h2 request bodies over the connection's budget (2 x max_body): windows "
                 "withheld, then given back as verdicts free room; all bodies arrive byte-exact"):
        budget = t.start_proxy(pki, name="budget", extra=(
            '[icap]\nreqmod = "%s"\nrespmod = "%s"\nmax_body = 400000\n'
            % (icap.url("url_check"), icap.url("echo"))))
        transfers, want = [], []
        for i in range(5):
            path = os.path.join(t.dir, "b%d.bin" % i)
            h.write_pseudorandom(path, 390_000, seed=20 + i)
            want.append({"sha256": h.sha256_file(path), "length": 390_000})
            transfers.append((base + "/upload?b=%d" % i, ["--data-binary", "@" + path]))
        before = metric(budget, "sightline_icap_bypassed_total", reason="too_large")
        rows = parallel(budget, pki, os.path.join(t.dir, "budget"), transfers)
        for i, (code, ver, _, body) in enumerate(rows):
            assert code == "200" and ver == "2", "#%d: %s HTTP/%s %r" % (i, code, ver, body[:200])
            assert json.loads(body) == want[i], "#%d: origin saw %s" % (i, body[:200])
        assert sum(r[2] for r in rows) == 1, "%d connections" % sum(r[2] for r in rows)
        assert metric(budget, "sightline_icap_bypassed_total", reason="too_large") == before, \
            "a body under max_body was bypassed"
        assert budget.stop() == 0

    open_proxy = t.start_proxy(pki, name="fail-open", args=icap_args + ["--icap-fail", "open"])
    icap.stop()

    with t.check("c-icap down, fail closed: 502 on each stream, the connection carries both"):
        rows = parallel(proxy, pki, os.path.join(t.dir, "closed"), [
            (base + "/1k?closed1", []),
            (base + "/1k?closed2", []),
        ])
        for code, ver, _, body in rows:
            assert code == "502" and ver == "2", "status %s HTTP/%s, body %r" % (code, ver, body[:300])
            assert b"ICAP" in body, "error page: %r" % body[:300]
        assert sum(r[2] for r in rows) == 1, "%d connections" % sum(r[2] for r in rows)

    with t.check("c-icap down, fail open: h2 traffic passes and is counted"):
        cp = curl_h2(open_proxy, pki, base + "/1k?open")
        body, code, ver = split_w(cp)
        assert cp.returncode == 0 and code == "200" and body == one_k, h.curl_err(cp)
        assert metric(open_proxy, "sightline_icap_bypassed_total", reason="error_fail_open") >= 1

    with t.check("the proxies stop cleanly"):
        assert proxy.stop() == 0
        assert open_proxy.stop() == 0


if __name__ == "__main__":
    h.run_test("95_icap_h2", main)
