#!/usr/bin/env python3
"""Layer 96: several ICAP services, chained, each with its own fail mode,
chosen per policy rule.

One c-icap (as in layer 94: echo, and url_check blocking blocked.example)
serves three configured services: "dead" (REQMOD to a port where nothing
listens, fail open), "filter" (REQMOD url_check, fail closed) and "scan"
(RESPMOD echo). Through curl --http1.1 and --http2:
- with no `icap` option on the rule every service applies in order: "dead"
  fails and is skipped, "filter" still blocks;
- a rule with icap = ["scan"] lets blocked.example through (no REQMOD),
  a rule with icap = ["filter"] blocks it and sends no RESPMOD;
- per-service metrics and the access log show what each did;
- the same "dead" service with fail closed answers 502 naming it;
- plain HTTP through the explicit proxy cannot be held for ICAP: refused
  (403) when a fail-closed service applies, relayed and counted when only
  fail-open ones do;
- a policy naming a service that is not configured is refused at start.
"""

import importlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

icap94 = importlib.import_module("94_icap_test")
plain75 = importlib.import_module("75_plain_http_test")


def services(icap, dead_port, dead_fail):
    return "\n".join([
        "[icap]",
        "[[icap.service]]", 'name = "dead"', 'method = "reqmod"',
        'url = "icap://127.0.0.1:%d/gone"' % dead_port, 'fail = "%s"' % dead_fail,
        "[[icap.service]]", 'name = "filter"', 'method = "reqmod"', 'url = "%s"' % icap.url("url_check"),
        "[[icap.service]]", 'name = "scan"', 'method = "respmod"', 'url = "%s"' % icap.url("echo"),
    ]) + "\n"


def main(t):
    if not os.access(icap94.C_ICAP, os.X_OK) or not icap94.modules_dir():
        raise h.Fatal("c-icap is required (Debian packages c-icap, libc-icap-mod-urlcheck)")
    pki = t.pki()
    seen = []

    def respond(conn, head, body):
        seen.append(head.target)
        conn.send(h.http_response(200, b"origin %s\n" % head.target.encode()))
    # Three origins: the policy tells them apart by port.
    all_origin = h.TlsOrigin(pki, lambda conn: h.serve_http1(conn, respond))
    scan_origin = h.TlsOrigin(pki, lambda conn: h.serve_http1(conn, respond))
    filter_origin = h.TlsOrigin(pki, lambda conn: h.serve_http1(conn, respond))
    nginx = t.start_nginx(pki, certs=["valid-ec"])
    h2_port = nginx.port("valid-ec")
    one_k = open(nginx.files["/1k"], "rb").read()

    icap = icap94.CIcap(t)
    icap.start()
    dead_port = h.free_port()  # nothing listens there
    plain_closed, plain_open = plain75.Origin(), plain75.Origin()
    pol = os.path.join(t.dir, "services-policy.toml")
    with open(pol, "w") as f:
        f.write('[[rule]]\nname = "scan-only"\naction = "inspect"\nports = [%d]\nicap = ["scan"]\n'
                '[[rule]]\nname = "filter-only"\naction = "inspect"\nports = [%d]\nicap = ["filter"]\n'
                '[[rule]]\nname = "plain-open"\naction = "inspect"\nports = [%d]\nicap = ["dead"]\n'
                % (scan_origin.port, filter_origin.port, plain_open.port))
    proxy = t.start_proxy(pki, args=["--policy", pol], extra=services(icap, dead_port, "open"))
    metric = icap94.metric

    def get(port, target, host=None, http="--http1.1"):
        extra = [http, "-w", "\n%{http_code}"] + (["-H", "Host: " + host] if host else [])
        cp = h.curl_via(proxy.port, "https://localhost:%d%s" % (port, target), cafile=pki.root, extra=extra)
        assert cp.returncode == 0, h.curl_err(cp)
        text, _, code = cp.stdout.rpartition(b"\n")
        return int(code), text

    def exchange(target):
        ev = proxy.wait_event(lambda e: e.get("event") == "exchange" and e.get("target") == target, 10)
        assert ev, "no exchange line for %s" % target
        return ev

    with t.check("all services: the failing fail-open one is skipped, the filter still blocks", fatal=True):
        code, text = get(all_origin.port, "/all-blocked", host="blocked.example")
        assert code == 403 and b"blocked.example" in text, "status %d, body %r" % (code, text[:200])
        code, text = get(all_origin.port, "/all-fine")
        assert code == 200 and text == b"origin /all-fine\n", "status %d, body %r" % (code, text[:200])
        assert seen == ["/all-fine"], "origin saw %s" % seen
        assert exchange("/all-blocked").get("icap_reqmod") == "respond"
        ev = exchange("/all-fine")
        # "dead" failed open, "filter" passed it: shown as an error that let it through.
        assert ev.get("icap_reqmod") == "error" and ev.get("icap_respmod") in ("unchanged", "modified"), ev

    with t.check("per-service metrics and the fail-open count"):
        assert metric(proxy, "sightline_icap_results_total", service="dead", result="error") >= 2
        assert metric(proxy, "sightline_icap_results_total", service="filter", result="respond") >= 1
        assert metric(proxy, "sightline_icap_results_total", service="scan", method="respmod") >= 1
        assert metric(proxy, "sightline_icap_results_total", service="scan", method="reqmod") == 0
        assert metric(proxy, "sightline_icap_bypassed_total", reason="error_fail_open") >= 2
        assert metric(proxy, "sightline_icap_duration_seconds_count", service="filter") >= 2

    with t.check("icap_error names the failing service"):
        ev = proxy.wait_event(lambda e: e.get("event") == "icap_error" and e.get("service") == "dead", 10)
        assert ev and ev.get("fail") == "open", ev

    with t.check('a rule with icap = ["scan"]: no REQMOD, RESPMOD still runs'):
        code, text = get(scan_origin.port, "/scan-blocked", host="blocked.example")
        assert code == 200 and text == b"origin /scan-blocked\n", "status %d, body %r" % (code, text[:200])
        ev = exchange("/scan-blocked")
        assert "icap_reqmod" not in ev and ev.get("icap_respmod") in ("unchanged", "modified"), ev

    with t.check('a rule with icap = ["filter"]: blocked, and no RESPMOD on what passes'):
        code, _ = get(filter_origin.port, "/filter-blocked", host="blocked.example")
        assert code == 403, "status %d" % code
        code, text = get(filter_origin.port, "/filter-fine")
        assert code == 200 and text == b"origin /filter-fine\n", "status %d" % code
        ev = exchange("/filter-fine")
        assert ev.get("icap_reqmod") == "unchanged" and "icap_respmod" not in ev, ev
        assert "/filter-blocked" not in seen

    with t.check("HTTP/2 exchanges go through the same chains"):
        before = metric(proxy, "sightline_icap_results_total", service="dead", method="reqmod")
        code, text = get(h2_port, "/1k?h2", http="--http2")
        assert code == 200 and text == one_k, "status %d, %d bytes" % (code, len(text))
        ev = exchange("/1k?h2")
        assert ev.get("protocol") == "HTTP/2", ev
        assert ev.get("icap_reqmod") == "error" and ev.get("icap_respmod") in ("unchanged", "modified"), ev
        assert metric(proxy, "sightline_icap_results_total", service="dead", method="reqmod") > before

    with t.check("plain HTTP with a fail-closed service applying is refused, not passed uninspected"):
        cp = h.curl(["--proxy", "http://127.0.0.1:%d" % proxy.port, "-w", "\n%{http_code}",
                     "http://127.0.0.1:%d/plain" % plain_closed.port])
        text, _, code = cp.stdout.rpartition(b"\n")
        assert code == b"403" and b"ICAP" in text, "status %s, body %r" % (code, text[:300])
        assert not plain_closed.requests, "the origin saw %s" % plain_closed.requests

    with t.check("plain HTTP with only fail-open services: relayed, marked skipped, counted"):
        before = metric(proxy, "sightline_icap_bypassed_total", reason="plain_http")
        cp = h.curl(["--proxy", "http://127.0.0.1:%d" % proxy.port, "-w", "\n%{http_code}",
                     "http://127.0.0.1:%d/plain-open" % plain_open.port])
        _, _, code = cp.stdout.rpartition(b"\n")
        assert code == b"200", "status %s: %r" % (code, cp.stdout[:300])
        assert len(plain_open.requests) == 1, plain_open.requests
        ev = exchange("/plain-open")
        assert ev.get("icap_reqmod") == "skipped" and "icap_respmod" not in ev, ev
        assert metric(proxy, "sightline_icap_bypassed_total", reason="plain_http") == before + 1

    closed = t.start_proxy(pki, name="dead-closed", extra=services(icap, dead_port, "closed"))

    with t.check("the same service with fail closed: 502 naming it, the filter never asked"):
        before = len(icap.requests())
        cp = h.curl_via(closed.port, "https://localhost:%d/closed" % all_origin.port, cafile=pki.root,
                        extra=["--http1.1", "-w", "\n%{http_code}"])
        text, _, code = cp.stdout.rpartition(b"\n")
        assert code == b"502" and b"service dead" in text, "status %s, body %r" % (code, text[:300])
        assert "/closed" not in seen
        time.sleep(0.3)
        assert len(icap.requests()) == before, "c-icap was asked after a fail-closed error"

    with t.check("a policy naming an unconfigured ICAP service is refused at start"):
        bad = os.path.join(t.dir, "bad-policy.toml")
        with open(bad, "w") as f:
            f.write('[[rule]]\nname = "typo"\naction = "inspect"\nicap = ["filtre"]\n')
        port = h.free_port()
        rc, out, _ = h.run_sightline_expect_exit(
            t, h.make_config(pki, listen_port=port, extra=services(icap, dead_port, "open")),
            args=["--policy", bad], port=port)
        assert rc not in (None, 0), "sightline started (rc %s): %s" % (rc, out[-500:])
        assert "filtre" in out and "which is not configured" in out, out[-500:]

    with t.check("the proxies stop cleanly"):
        assert proxy.stop() == 0
        assert closed.stop() == 0


if __name__ == "__main__":
    h.run_test("96_icap_services", main)
