#!/usr/bin/env python3
"""Layer 90: metrics, admin endpoints, shipped Prometheus rules and Grafana
dashboard, SIGHUP policy reload and SIGTERM drain.

  shipped files  promtool check config / check rules / test rules on
                 deploy/prometheus/; the Grafana dashboard is valid JSON with
                 a datasource variable and heatmap-formatted heatmaps; every
                 metric the rules and the dashboard name exists, and every
                 metric /metrics serves is documented in docs/metrics.md with
                 its type;
  admin          /healthz 200, /readyz 200, /status JSON (version, workers,
                 active_connections), promtool check metrics on /metrics;
  Prometheus     a real Prometheus (its own config, port and TSDB in the temp
                 dir) scrapes the admin port every second with the shipped
                 rule files loaded. A known traffic mix goes through the proxy
                 (HTTP/1.1 and HTTP/2 intercepted connections, two invalid
                 origin certificates answered with error pages, one plain-HTTP
                 request); once Prometheus has scraped all of it, every
                 counter and histogram count is compared with what was
                 driven; the rules evaluate without error, a recording rule
                 has a value, and every dashboard query runs;
  SIGHUP         a reload counts result="ok"; a broken policy counts
                 result="error" (once per reload logged), the old policy
                 stays and the proxy keeps serving;
  SIGTERM        with a slow download in flight: /readyz turns 503, new
                 connections are refused, the download completes byte-exact
                 and the process exits 0; a second SIGTERM during a drain
                 exits at once.
"""

import http.client
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

PROM_DIR = os.path.join(h.SRC, "deploy", "prometheus")
RULE_FILES = [os.path.join(PROM_DIR, "recording_rules.yml"), os.path.join(PROM_DIR, "alert_rules.yml")]
DASHBOARD = os.path.join(h.SRC, "deploy", "grafana", "sightline.json")
METRICS_DOC = os.path.join(h.SRC, "docs", "metrics.md")

N_H1 = 10                                   # curl --http1.1, one connection each
N_H2 = 5                                    # curl --http2, one connection each
INVALID = [("expired", "expired"), ("wronghost", "hostname-mismatch")]
N_PLAIN = 1                                 # plain-HTTP request (action "http")
N_INTERCEPT = N_H1 + N_H2
N_REFUSED = len(INVALID)
# Connections that went through both TLS handshakes: the intercepted ones,
# and the refused ones, whose upstream handshake failed verification and
# whose client handshake completed with the error-page certificate (the
# default [upstream] refuse_with = "error-page").
N_TLS = N_INTERCEPT + N_REFUSED
N_CONNECTIONS = N_INTERCEPT + N_REFUSED + N_PLAIN
PLAIN_BODY = b"plain origin says hello\n" * 10

VERDICTS = ["expired", "not-yet-valid", "hostname-mismatch", "self-signed", "unknown-issuer",
            "revoked", "invalid"]
ACTIONS = ["intercept", "bypass", "http", "refuse", "reject", "none", "splice"]
OUTCOMES = ["ok", "refused", "error"]

GOOD_POLICY = """# written by 90_metrics_test
[policy]
default = "inspect"

[[rule]]
name = "blocked-test"
action = "block"
domains = ["blocked.test"]
"""
BROKEN_POLICY = """# written by 90_metrics_test: broken on purpose
[policy]
default = "maybe"
"""


# --------------------------------------------------------------------------
# helpers

def admin_get(port, path, timeout=5.0):
    """(status, body text) of GET path on the admin listener."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """Prometheus text format -> ({(name, frozenset(labels)): value}, {family: type})."""
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(None, 3)
            types[name] = typ.strip()
            continue
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            raise AssertionError("unparsable exposition line: %r" % line)
        labels = frozenset(_LABEL.findall(m.group(2) or ""))
        samples[(m.group(1), labels)] = float(m.group(3))
    return samples, types


def metric(samples, name, **labels):
    """Value of one series (AssertionError if it is not exposed)."""
    key = (name, frozenset(labels.items()))
    if key not in samples:
        raise AssertionError("series %s%r not in /metrics" % (name, labels))
    return samples[key]


def scrape(proxy):
    st, body = admin_get(proxy.admin_port, "/metrics")
    assert st == 200, "/metrics -> %d" % st
    return parse_metrics(body)[0]


def wait_for(pred, timeout, step=0.1):
    """Poll pred() until it returns a truthy value (returned) or timeout
    (returns the last value)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(step)


def by_label(result, label):
    """{label value: sample value} from a Prometheus.query result."""
    out = {}
    for labels, v in result.items():
        out[dict(labels).get(label)] = v
    return out


def one(result, what):
    assert len(result) == 1, "%s: expected one series, got %d: %r" % (what, len(result), result)
    return next(iter(result.values()))


def snapshot(prom, at):
    """Every sightline_* series of job "sightline" at time `at`:
    {(name, frozenset(labels without job/instance)): value}."""
    r = prom.query('{__name__=~"sightline_.+",job="sightline"}', at=at)
    out = {}
    for labels, v in r.items():
        d = dict(labels)
        name = d.pop("__name__")
        d.pop("job", None)
        d.pop("instance", None)
        out[(name, frozenset(d.items()))] = v
    return out


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def connect_refused(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(("127.0.0.1", port))
        return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        s.close()


def file_size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def slow_download(t, proxy, pki, port, out, rate, name):
    return h.Background(t, ["curl", "--silent", "--show-error", "--max-time", "90", "--http1.1",
                            "--proxy", "http://127.0.0.1:%d" % proxy.port, "--cacert", pki.root,
                            "--limit-rate", rate, "-o", out,
                            "https://localhost:%d/big" % port], name=name)


# --------------------------------------------------------------------------
# checks on the shipped files (no processes needed)

def check_shipped_files(t):
    with t.check("promtool check config deploy/prometheus/prometheus.yml"):
        cp = h.promtool(["check", "config", os.path.join(PROM_DIR, "prometheus.yml")])
        out = (cp.stdout + cp.stderr).decode(errors="replace")
        assert cp.returncode == 0, "rc=%d:\n%s" % (cp.returncode, out)
        assert "SUCCESS: 2 rule files found" in out, "rule files not loaded by the config:\n" + out

    with t.check("promtool check rules (recording and alert rules)"):
        cp = h.promtool(["check", "rules"] + RULE_FILES)
        out = (cp.stdout + cp.stderr).decode(errors="replace")
        assert cp.returncode == 0, "rc=%d:\n%s" % (cp.returncode, out)
        found = [int(n) for n in re.findall(r"SUCCESS: (\d+) rules found", out)]
        assert len(found) == 2 and all(found), "unexpected output:\n" + out
        t.note("%d recording, %d alerting rules" % tuple(found))

    with t.check("promtool test rules deploy/prometheus/rules_test.yml"):
        cp = h.promtool(["test", "rules", os.path.join(PROM_DIR, "rules_test.yml")])
        out = (cp.stdout + cp.stderr).decode(errors="replace")
        assert cp.returncode == 0 and "SUCCESS" in out, "rc=%d:\n%s" % (cp.returncode, out)

    with t.check("Grafana dashboard: valid JSON, datasource variable, heatmaps, layout"):
        with open(DASHBOARD) as f:
            dash = json.load(f)
        tvars = {v["name"]: v for v in dash["templating"]["list"]}
        assert tvars.get("datasource", {}).get("type") == "datasource" and \
            tvars["datasource"].get("query") == "prometheus", "no prometheus datasource variable"
        panels = [p for p in dash["panels"] if p["type"] != "row"]
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), "duplicate panel ids"
        heatmaps = 0
        for p in panels:
            assert p.get("datasource", {}).get("uid") == "${datasource}", \
                "panel %r does not use the datasource variable" % p["title"]
            gp = p["gridPos"]
            assert gp["x"] + gp["w"] <= 24, "panel %r overflows the grid" % p["title"]
            assert p.get("targets"), "panel %r has no query" % p["title"]
            for tg in p["targets"]:
                assert tg.get("datasource", {}).get("uid") == "${datasource}", \
                    "a query of %r does not use the datasource variable" % p["title"]
            if p["type"] == "heatmap":
                heatmaps += 1
                for tg in p["targets"]:
                    assert tg.get("format") == "heatmap" and "_bucket" in tg["expr"] and \
                        "[$__rate_interval]" in tg["expr"], "heatmap %r: %r" % (p["title"], tg)
        titles = " | ".join(p["title"] for p in panels).lower()
        for word in ("client handshake", "upstream handshake", "upstream connect", "forging",
                     "bytes", "connections / s", "exchanges / s", "policy decisions",
                     "auto-bypass", "verification failures", "http/2", "archive"):
            assert word in titles, "no panel about %r" % word
        assert heatmaps >= 4, "only %d heatmaps" % heatmaps
        t.note("%d panels, %d heatmaps" % (len(panels), heatmaps))
    return dash


def dashboard_exprs(dash):
    out = []
    for p in dash["panels"]:
        for tg in p.get("targets", []):
            out.append((p["title"], p["type"], tg["expr"]))
    return out


def metric_names_in(text):
    """sightline_* metric names (histogram suffixes stripped) in PromQL text."""
    names = set()
    for n in re.findall(r"(?<![:\w])sightline_[a-z0-9_]+(?![:\w])", text):
        for suf in ("_bucket", "_count", "_sum"):
            if n.endswith(suf) and not n.startswith("sightline_archive"):
                n = n[: -len(suf)]
                break
        names.add(n)
    return names


# --------------------------------------------------------------------------

def main(t):
    pki = t.pki()
    certs = ["valid-ec"] + [c for c, _ in INVALID]
    origin = t.start_nginx(pki, certs=certs, big=True)
    one_k = open(origin.files["/1k"], "rb").read()
    plain = h.PlainOrigin(PLAIN_BODY)
    pol_dir = os.path.join(t.dir, "policy")
    os.makedirs(pol_dir)
    pol_file = os.path.join(pol_dir, "metrics.toml")
    write_atomic(pol_file, GOOD_POLICY)
    proxy = t.start_proxy(pki, name="sightline", workers=2,
                          extra='[policy]\nfiles = [%s]\n\n[shutdown]\ndrain_timeout = "30s"\n'
                                % h.toml_value(pol_file))
    assert proxy.admin_port, "make_config gave no admin port"
    # A second proxy for the double-signal case (no policy files), with the
    # inspection hooks on so that their metrics exist too. Its ICAP service
    # exists only for its per-service series: max_body = 0 lets every body
    # pass unadapted, so the slow download below is not held. Its archive
    # (no rule selects anything for it) exists for the archive series, and
    # its S3 shipping (to a closed port: nothing is ever sealed) for theirs.
    archive_key = os.path.join(t.dir, "archive.key")
    subprocess.run([h.sightline_bin(), "archive", "keygen", archive_key], check=True, capture_output=True)
    proxy2 = t.start_proxy(pki, name="sightline2", workers=1,
                           extra='[policy]\nfiles = []\n\n[icap]\nrespmod = "icap://127.0.0.1:9/none"\n'
                                 'fail = "open"\nmax_body = 0\n\n'
                                 '[archive.s3]\nurl = "http://127.0.0.1:9/none"\naccess_key = "ak"\n'
                                 'secret_key = "sk"\nretention = "1d"\n',
                           args=["--archive-dir", os.path.join(t.dir, "archive"), "--archive-key", archive_key,
                                 "--pcap-dir", os.path.join(t.dir, "pcap"),
                                 "--keylog-upstream", os.path.join(t.dir, "upstream.keys"),
                                 "--events-socket", os.path.join(t.dir, "events.sock")])
    prom = h.Prometheus(t, ["127.0.0.1:%d" % proxy.admin_port], rule_files=RULE_FILES)
    # Prometheus scrapes its first target a few seconds after start (service
    # discovery settles first): check the shipped files meanwhile.
    dash = check_shipped_files(t)
    try:
        run_checks(t, pki, origin, one_k, plain, pol_file, proxy, proxy2, prom, dash)
    finally:
        if t.failed:
            print("---- prometheus log (tail) ----")
            print(prom.log_tail())


def run_checks(t, pki, origin, one_k, plain, pol_file, proxy, proxy2, prom, dash):
    valid_port = origin.port("valid-ec")

    # ---------------------------------------------------------------- admin
    with t.check("admin: /healthz 200, /readyz 200, /status JSON"):
        st, body = admin_get(proxy.admin_port, "/healthz")
        assert st == 200 and body == "ok\n", "/healthz -> %d %r" % (st, body)
        st, body = admin_get(proxy.admin_port, "/readyz")
        assert st == 200 and body == "ready\n", "/readyz -> %d %r" % (st, body)
        st, body = admin_get(proxy.admin_port, "/status")
        assert st == 200, "/status -> %d" % st
        status = json.loads(body)
        for k in ("version", "workers", "active_connections", "uptime_seconds", "draining", "policy"):
            assert k in status, "/status lacks %r: %s" % (k, body)
        assert status["workers"] == 2, "workers %r" % status["workers"]
        assert status["active_connections"] == 0, "active_connections %r" % status["active_connections"]
        assert status["draining"] is False
        assert status["policy"]["files"][0]["path"] == pol_file, status["policy"]
        st, _ = admin_get(proxy.admin_port, "/nope")
        assert st == 404, "/nope -> %d" % st
        t.note("version %s" % status["version"])

    with t.check("docs/metrics.md documents every metric with its type; rules and dashboard name only real metrics"):
        st, body = admin_get(proxy.admin_port, "/metrics")
        assert st == 200
        _, types = parse_metrics(body)
        st, body2 = admin_get(proxy2.admin_port, "/metrics")
        assert st == 200
        types.update(parse_metrics(body2)[1])
        with open(METRICS_DOC) as f:
            doc = f.read()
        missing = []
        for name, typ in sorted(types.items()):
            m = re.search(r"^\|\s*`%s`\s*\|\s*(\w+)\s*\|" % re.escape(name), doc, re.M)
            if not m or m.group(1) != typ:
                missing.append("%s (%s)" % (name, typ))
        assert not missing, "not documented (or wrong type) in docs/metrics.md: " + ", ".join(missing)
        documented = set(re.findall(r"^\|\s*`(sightline_[a-z0-9_]+)`\s*\|", doc, re.M))
        stale = sorted(documented - set(types))
        assert not stale, "documented but not exported: %s" % ", ".join(stale)
        referenced = set()
        for path in RULE_FILES:
            with open(path) as f:
                referenced |= metric_names_in(f.read())
        for _, _, expr in dashboard_exprs(dash):
            referenced |= metric_names_in(expr)
        unknown = sorted(n for n in referenced if n not in types)
        assert not unknown, "rules/dashboard use metrics /metrics does not have: " + ", ".join(unknown)
        # Alerts built on recording rules must name rules that exist (a typo
        # would make them silently never fire).
        with open(RULE_FILES[0]) as f:
            recorded = set(re.findall(r"^\s*- record:\s*(\S+)", f.read(), re.M))
        with open(RULE_FILES[1]) as f:
            used = set(re.findall(r"\b(?:job|instance):sightline_[a-z0-9_]+:[a-z0-9_]+", f.read()))
        assert used and not used - recorded, "alerts use undefined recording rules: %s" % sorted(used - recorded)
        t.note("%d families" % len(types))

    # Every counter is compared as the difference between two Prometheus
    # snapshots: one scraped before the traffic, one after it (the harness's
    # own readiness probe already made a connection, action "none").
    t0 = [None]
    with t.check("Prometheus scrapes the admin port (up == 1) before any traffic", fatal=True):
        r = wait_for(lambda: prom.query('up{job="sightline"} == 1'), 20, 0.25)
        assert r, "target never up; targets: %s" % json.dumps(prom.api("targets").get("activeTargets"))[:1500]

        def base():
            now = time.time()
            if prom.query('sum(sightline_connections_total{job="sightline"})', at=now):
                t0[0] = now
                return True
            return False
        assert wait_for(base, 10, 0.25), "no sample of sightline_connections_total"
    before = snapshot(prom, t0[0])

    # ---------------------------------------------------------------- traffic
    with t.check("traffic: %d HTTP/1.1 + %d HTTP/2 intercepted, %d invalid origins, %d plain HTTP"
                 % (N_H1, N_H2, N_REFUSED, N_PLAIN), fatal=True):
        url = "https://localhost:%d/1k" % valid_port
        for i in range(N_H1):
            cp = h.curl_via(proxy.port, url, pki.root, ["--http1.1", "-w", "\n%{http_version}"])
            assert cp.returncode == 0, "h1 #%d: %s" % (i, h.curl_err(cp))
            assert cp.stdout == one_k + b"\n1.1", "h1 #%d: body/version differ (%r)" % (i, cp.stdout[-20:])
        for i in range(N_H2):
            cp = h.curl_via(proxy.port, url, pki.root, ["--http2", "-w", "\n%{http_version}"])
            assert cp.returncode == 0, "h2 #%d: %s" % (i, h.curl_err(cp))
            assert cp.stdout == one_k + b"\n2", "h2 #%d: body/version differ (%r)" % (i, cp.stdout[-20:])
        for cert, _ in INVALID:
            cp = h.curl_via(proxy.port, "https://localhost:%d/1k" % origin.port(cert), pki.root,
                            ["--http1.1", "-o", os.devnull, "-w", "%{http_code}"])
            assert cp.returncode == 0 and cp.stdout == b"502", \
                "%s: rc=%d code=%r %s" % (cert, cp.returncode, cp.stdout, h.curl_err(cp))
        cp = h.curl_via(proxy.port, "http://127.0.0.1:%d/plain" % plain.port)
        assert cp.returncode == 0 and cp.stdout == PLAIN_BODY, "plain: rc=%d %s" % (cp.returncode, h.curl_err(cp))

    # Wait until Prometheus has scraped every connection's end; the second
    # snapshot is taken at that instant (one consistent scrape).
    t1 = [None]
    conn0 = sum(v for (n, _), v in before.items() if n == "sightline_connections_total")
    with t.check("Prometheus sees all %d connections" % N_CONNECTIONS, fatal=True):
        def seen():
            now = time.time()
            r = prom.query('sum(sightline_connections_total{job="sightline"})', at=now)
            v = one(r, "sum") - conn0 if r else None
            if v is not None and v >= N_CONNECTIONS:
                t1[0] = now
                return v
            return None
        v = wait_for(seen, 20, 0.25)
        last = prom.query('sum(sightline_connections_total{job="sightline"})')
        assert v == N_CONNECTIONS, "sum(sightline_connections_total) rose by %r (now %r, before %r), expected %d" % (
            v, last, conn0, N_CONNECTIONS)
    after = snapshot(prom, t1[0])
    delta = {k: v - before.get(k, 0.0) for k, v in after.items()
             if not k[0].endswith(("_entries", "_rules", "_workers", "_info", "_active_connections",
                                   "_active_streams"))}

    def q(name, **match):
        """{labels: delta} of the series of `name` whose labels include `match`."""
        return {labels: v for (n, labels), v in delta.items()
                if n == name and all(dict(labels).get(k) == val for k, val in match.items())}

    def gauge(name, **labels):
        return after.get((name, frozenset(labels.items())))

    with t.check("sightline_connections_total by action and outcome"):
        got = {}
        for labels, v in q("sightline_connections_total").items():
            d = dict(labels)
            key = (d["action"], d["outcome"])
            got[key] = got.get(key, 0.0) + v      # summed over listener modes
        by_mode = {dict(k).get("mode") for k in q("sightline_connections_total")}
        assert "explicit" in by_mode, "no mode=explicit series: %r" % by_mode
        expect = {(a, o): 0.0 for a in ACTIONS for o in OUTCOMES}
        expect[("intercept", "ok")] = N_INTERCEPT
        expect[("refuse", "refused")] = N_REFUSED
        expect[("http", "ok")] = N_PLAIN
        diff = {k: (got.get(k), v) for k, v in expect.items() if got.get(k) != v}
        assert not diff, "(action, outcome): (got, expected) %r" % diff

    with t.check("handshake histograms: client and upstream _count == %d (%d intercepted + %d error-page)"
                 % (N_TLS, N_INTERCEPT, N_REFUSED)):
        counts = {}
        for m in ("client_handshake_duration_seconds", "upstream_handshake_duration_seconds"):
            counts[m] = one(q("sightline_%s_count" % m), m)
            inf = one(q("sightline_%s_bucket" % m, le="+Inf"), m + " +Inf")
            assert inf == counts[m], "%s: +Inf bucket %r != count %r" % (m, inf, counts[m])
            total = one(q("sightline_%s_sum" % m), m + " sum")
            assert 0 < total < 30 * counts[m], "%s_sum = %r" % (m, total)
        # A connection that took a parked origin connection (upstream.reuse)
        # has no upstream handshake of its own: both together make N_TLS.
        reused = one(q("sightline_origin_pool_events_total", event="reused"), "reused")
        counts["upstream_handshake_duration_seconds"] += reused
        bad = {k: v for k, v in counts.items() if v != N_TLS}
        assert not bad, "counts %r (upstream: handshakes + %d reused), expected %d each" % (
            counts, reused, N_TLS)

    with t.check("stage histograms: forge _count == %d intercepted; upstream connect and DNS == %d "
                 "(with the connections that reused a parked origin connection)" % (N_INTERCEPT, N_TLS)):
        got = {m: one(q("sightline_%s_count" % m), m)
               for m in ("forge_duration_seconds", "upstream_connect_duration_seconds", "dns_duration_seconds")}
        reused = one(q("sightline_origin_pool_events_total", event="reused"), "reused")
        got["upstream_connect_duration_seconds"] += reused
        got["dns_duration_seconds"] += reused
        expect = {"forge_duration_seconds": N_INTERCEPT, "upstream_connect_duration_seconds": N_TLS,
                  "dns_duration_seconds": N_TLS}
        diff = {k: (got[k], v) for k, v in expect.items() if got[k] != v}
        assert not diff, "(got, expected) %r" % diff

    with t.check("forged-certificate cache: %d lookups, 1 miss, 1 entry" % N_INTERCEPT):
        look = by_label(q("sightline_cert_cache_lookups_total"), "result")
        entries = gauge("sightline_cert_cache_entries")
        assert sum(look.values()) == N_INTERCEPT and look.get("miss") == 1 and entries == 1, \
            "lookups %r, entries %r" % (look, entries)

    with t.check("sightline_http_exchanges_total by protocol and status class"):
        got = {}
        for labels, v in q("sightline_http_exchanges_total").items():
            d = dict(labels)
            got[(d["protocol"], d["status_class"])] = v
        nonzero = {k: v for k, v in got.items() if v}
        # Every request made: 10 h1 + 1 plain + 2 error pages over HTTP/1.1, 5 over h2.
        per_proto = {p: sum(v for (pp, _), v in got.items() if pp == p) for p in ("http1", "http2")}
        assert per_proto == {"http1": N_H1 + N_PLAIN + N_REFUSED, "http2": N_H2}, \
            "exchanges per protocol %r, expected http1=%d http2=%d (all %r)" % (
                per_proto, N_H1 + N_PLAIN + N_REFUSED, N_H2, nonzero)
        assert got.get(("http1", "2xx")) == N_H1 + N_PLAIN and got.get(("http2", "2xx")) == N_H2, \
            "2xx: %r" % nonzero
        # The error pages: the client got a 502 written by the proxy itself,
        # but no response from the origin, so the exchange is "aborted"
        # (status_class is the origin's; docs/metrics.md).
        assert got.get(("http1", "aborted")) == N_REFUSED, \
            "error-page exchanges counted as %r, expected http1/aborted = %d" % (
                {k: v for k, v in nonzero.items() if k[1] != "2xx"}, N_REFUSED)

    with t.check("head-held and exchange-duration histograms count the relayed exchanges"):
        relayed = N_H1 + N_H2 + N_PLAIN
        got = {
            "request_head_held": one(q("sightline_request_head_held_seconds_count"), "req"),
            "response_head_held": one(q("sightline_response_head_held_seconds_count"), "resp"),
        }
        ex = by_label(q("sightline_exchange_duration_seconds_count"), "protocol")
        got["exchange_duration http1"] = ex.get("http1")
        got["exchange_duration http2"] = ex.get("http2")
        expect = {"request_head_held": relayed, "response_head_held": relayed,
                  "exchange_duration http1": N_H1 + N_PLAIN, "exchange_duration http2": N_H2}
        diff = {k: (got[k], v) for k, v in expect.items() if got[k] != v}
        assert not diff, "(got, expected) %r" % diff

    with t.check("sightline_bytes_total: >= the bodies downloaded, by action"):
        b = {}
        for labels, v in q("sightline_bytes_total").items():
            d = dict(labels)
            b[(d["action"], d["direction"])] = v
        s2c = b.get(("intercept", "server_to_client"), 0)
        c2s = b.get(("intercept", "client_to_server"), 0)
        assert s2c >= N_INTERCEPT * len(one_k), "intercept server_to_client %r < %d" % (
            s2c, N_INTERCEPT * len(one_k))
        assert c2s > 0, "intercept client_to_server %r" % c2s
        assert b.get(("http", "server_to_client"), 0) >= len(PLAIN_BODY), "http: %r" % b
        assert b.get(("refuse", "server_to_client")) == 0, \
            "refused connections relayed origin bytes: %r" % b.get(("refuse", "server_to_client"))
        for a in ("bypass", "reject", "none"):
            assert b.get((a, "server_to_client")) == 0 and b.get((a, "client_to_server")) == 0, \
                "%s bytes: %r" % (a, b)
        t.note("intercept s2c %d c2s %d" % (s2c, c2s))

    with t.check("sightline_upstream_verify_failures_total by reason"):
        got = by_label(q("sightline_upstream_verify_failures_total"), "reason")
        expect = {v: 0.0 for v in VERDICTS}
        for _, verdict in INVALID:
            expect[verdict] += 1
        assert got == expect, "got %r, expected %r" % (got, expect)

    with t.check("policy decisions, other counters, gauges back to zero, build info"):
        dec = by_label(q("sightline_policy_decisions_total"), "action")
        assert dec == {"inspect": N_TLS, "bypass": 0, "block": 0}, "decisions %r" % dec
        others = {n: q(n) for n in ("sightline_policy_reloads_total", "sightline_auto_bypass_activations_total",
                                   "sightline_log_lines_dropped_total")}
        assert not any(v for d in others.values() for v in d.values()), "moved: %r" % others
        act = {dict(k)["action"]: v for (n, k), v in after.items() if n == "sightline_active_connections"}
        assert set(act) == set(ACTIONS) and not any(act.values()), "active connections %r" % act
        assert gauge("sightline_http2_active_streams") == 0, "http2 active streams %r" % (
            gauge("sightline_http2_active_streams"),)
        version = json.loads(admin_get(proxy.admin_port, "/status")[1])["version"]
        assert gauge("sightline_build_info", version=version) == 1, "build_info %r" % (
            [(k, v) for k, v in after.items() if k[0] == "sightline_build_info"],)
        assert gauge("sightline_workers") == 2, "workers %r" % gauge("sightline_workers")
        assert gauge("sightline_policy_rules") == 1, "policy rules %r" % gauge("sightline_policy_rules")
        assert gauge("sightline_auto_bypass_entries") == 0

    with t.check("promtool check metrics on the raw /metrics body"):
        st, body = admin_get(proxy.admin_port, "/metrics")
        assert st == 200
        cp = h.promtool(["check", "metrics"], input=body.encode())
        out = (cp.stdout + cp.stderr).decode(errors="replace").strip()
        assert cp.returncode == 0 and not out, "rc=%d:\n%s" % (cp.returncode, out)

    with t.check("shipped rules evaluate without error in Prometheus; recording rules have values"):
        def all_ok():
            groups = prom.api("rules")["groups"]
            rules = [r for g in groups for r in g["rules"]]
            return rules if rules and all(r.get("health") == "ok" for r in rules) else None
        rules = wait_for(all_ok, 15, 0.5)
        if not rules:
            groups = prom.api("rules")["groups"]
            bad = [(r["name"], r.get("health"), r.get("lastError")) for g in groups for r in g["rules"]
                   if r.get("health") != "ok"]
            raise AssertionError("rules not healthy: %r" % bad[:10])
        names = {r["name"] for r in rules}
        assert "job:sightline_connections:rate5m" in names and "SightlineDown" in names, sorted(names)[:5]

        def rec():
            r = by_label(prom.query("job:sightline_connections:rate5m"), "action")
            return r if r.get("intercept", 0) > 0 else None
        r = wait_for(rec, 15, 0.5)
        assert r, "job:sightline_connections:rate5m{action=intercept} never > 0: %r" % (
            prom.query("job:sightline_connections:rate5m"),)

        def p99():
            r = prom.query("job:sightline_request_head_held_seconds:p99_rate5m")
            return r if r and all(not math.isnan(v) for v in r.values()) else None
        r = wait_for(p99, 15, 0.5)
        assert r, "job:sightline_request_head_held_seconds:p99_rate5m has no value: %r" % (
            prom.query("job:sightline_request_head_held_seconds:p99_rate5m"),)
        v = one(r, "p99")
        assert 0 < v <= 30, "p99 added latency %r s" % v
        firing = prom.query('ALERTS{alertstate="firing"}')
        t.note("%d rules, p99 request head held %.3f ms, firing alerts %s" % (
            len(rules), v * 1000, sorted(dict(k)["alertname"] for k in firing) or "none"))

    with t.check("every dashboard query runs in Prometheus; stage heatmaps have data"):
        errors, empty = [], []
        for title, ptype, expr in dashboard_exprs(dash):
            e = (expr.replace("$__rate_interval", "1m").replace("$job", "sightline")
                 .replace("$instance", ".*"))
            try:
                r = prom.query(e)
            except AssertionError as ex:
                errors.append("%s: %s" % (title, ex))
                continue
            if ptype == "heatmap" and "archive" not in e and not any(v > 0 for v in r.values()):
                empty.append(title)
        assert not errors, "\n".join(errors)
        assert not empty, "heatmaps without data after traffic: %s" % ", ".join(empty)

    # ---------------------------------------------------------------- SIGHUP
    def reloads():
        s = scrape(proxy)
        return (metric(s, "sightline_policy_reloads_total", result="ok"),
                metric(s, "sightline_policy_reloads_total", result="error"))

    def generation():
        return json.loads(admin_get(proxy.admin_port, "/status")[1])["policy"]["generation"]

    with t.check("SIGHUP: policy_reload ok logged, reloads_total{result=\"ok\"} +1"):
        ok0, err0 = reloads()
        gen0 = generation()
        m = proxy.mark()
        os.kill(proxy.pid, signal.SIGHUP)
        ev = proxy.wait_event(lambda e: e.get("event") == "policy_reload" and e.get("trigger") == "SIGHUP",
                              10, m)
        assert ev is not None and ev.get("result") == "ok", "log: %r" % ev
        wait_for(lambda: reloads()[0] >= ok0 + 1, 5)
        ok1, err1 = reloads()
        assert (ok1, err1) == (ok0 + 1, err0), "reloads (ok, error) %r -> %r" % ((ok0, err0), (ok1, err1))
        assert generation() == gen0 + 1, "generation %r -> %r" % (gen0, generation())
        assert proxy.alive()

    with t.check("broken policy: reloads_total{result=\"error\"} counts each failed reload, old policy stays, proxy serves"):
        ok0, err0 = reloads()
        gen0 = generation()
        m = proxy.mark()
        write_atomic(pol_file, BROKEN_POLICY)
        # The file watcher reloads on its own (trigger "file change"); wait
        # for it so that the SIGHUP below is counted on its own.
        ev = proxy.wait_event(lambda e: e.get("event") == "policy_reload", 5, m)
        assert ev is None or ev.get("result") == "error", "broken file accepted: %r" % ev
        m2 = proxy.mark()
        _, err_mid = reloads()
        os.kill(proxy.pid, signal.SIGHUP)
        ev = proxy.wait_event(lambda e: e.get("event") == "policy_reload" and e.get("trigger") == "SIGHUP",
                              10, m2)
        assert ev is not None and ev.get("result") == "error", "log: %r" % ev
        assert "metrics.toml" in (ev.get("msg") or ""), "error does not name the file: %r" % ev.get("msg")
        def failed_logged():
            return len([e for e in proxy.events[m:] if e.get("event") == "policy_reload"
                        and e.get("result") == "error"])
        # The counter moves before the log line is written: poll until both
        # agree (a late watcher reload would move both).
        wait_for(lambda: reloads()[1] == err0 + failed_logged(), 5)
        ok1, err1 = reloads()
        logged_total = failed_logged()
        assert ok1 == ok0, "ok reloads changed %r -> %r" % (ok0, ok1)
        assert err1 == err0 + logged_total, \
            "error reloads %r -> %r, but %d failed reloads logged" % (err0, err1, logged_total)
        assert err1 >= err_mid + 1, "SIGHUP reload not counted: %r -> %r" % (err_mid, err1)
        assert generation() == gen0, "generation moved %r -> %r" % (gen0, generation())
        cp = h.curl_via(proxy.port, "https://localhost:%d/1k" % valid_port, pki.root)
        assert cp.returncode == 0 and cp.stdout == one_k, "proxy no longer serves: %s" % h.curl_err(cp)
        st, body = admin_get(proxy.admin_port, "/readyz")
        assert st == 200, "/readyz %d %r after a failed reload" % (st, body)
        t.note("%d failed reloads logged and counted" % logged_total)
    write_atomic(pol_file, GOOD_POLICY)

    # ---------------------------------------------------------------- SIGTERM
    big_out = os.path.join(t.dir, "big.out")
    dl = None
    with t.check("SIGTERM drain: /readyz 503, new connections refused, download completes byte-exact, exit 0"):
        dl = slow_download(t, proxy, pki, valid_port, big_out, "10M", "drain-curl")
        started = wait_for(lambda: file_size(big_out) >= (1 << 20) or not dl.running(), 15, 0.05)
        assert started and dl.running(), "download not in flight (size %d, curl rc %r: %s)" % (
            file_size(big_out), dl.proc.poll(), dl.stderr_text()[-300:])
        m = proxy.mark()
        proxy.proc.send_signal(signal.SIGTERM)
        assert dl.running(), "download finished before the signal (no drain to test)"

        r = wait_for(lambda: admin_get(proxy.admin_port, "/readyz")[0] == 503, 5, 0.05)
        assert r, "/readyz still %r after SIGTERM" % (admin_get(proxy.admin_port, "/readyz"),)
        st, body = admin_get(proxy.admin_port, "/readyz")
        assert "draining" in body, "/readyz body %r" % body
        status = json.loads(admin_get(proxy.admin_port, "/status")[1])
        assert status["draining"] is True and status["active_connections"] >= 1, status
        in_flight_at_503 = dl.running()

        refused = wait_for(lambda: connect_refused(proxy.port), 5, 0.05)
        assert refused, "a new connection to the proxy port is still accepted while draining"
        assert in_flight_at_503, "download ended before /readyz turned 503"

        rc = dl.wait(60)
        assert rc == 0, "in-flight download failed: rc=%r %s" % (rc, dl.stderr_text()[-300:])
        assert file_size(big_out) == h.BIG_SIZE, "downloaded %d of %d bytes" % (file_size(big_out), h.BIG_SIZE)
        assert h.sha256_file(big_out) == origin.sha["/big"], "download differs from the origin's file"

        # Already signalled: only wait. A second SIGTERM would end the drain
        # at once (the next check), so it must not be sent while the proxy
        # is still finishing (closing connections, sealing its archive).
        rc = proxy.stop(sig=None, timeout=20)
        assert rc == 0, "exit code %r after the drain" % rc
        ev = proxy.wait_event(lambda e: e.get("event") == "shutdown" and "signal" in e, 1, m)
        assert ev is not None and ev.get("draining", 0) >= 1, "shutdown log line %r" % ev
        assert proxy.wait_event(lambda e: e.get("event") == "stopped", 1, m), "no 'stopped' log line"
    if dl:
        dl.kill()

    with t.check("second SIGTERM during a drain exits at once"):
        out2 = os.path.join(t.dir, "big2.out")
        dl2 = slow_download(t, proxy2, pki, valid_port, out2, "5M", "drain2-curl")
        try:
            started = wait_for(lambda: file_size(out2) >= (1 << 20) or not dl2.running(), 15, 0.05)
            assert started and dl2.running(), "download not in flight (size %d: %s)" % (
                file_size(out2), dl2.stderr_text()[-300:])
            proxy2.proc.send_signal(signal.SIGTERM)
            r = wait_for(lambda: admin_get(proxy2.admin_port, "/readyz")[0] == 503, 5, 0.05)
            assert r, "proxy2 not draining after the first SIGTERM"
            assert proxy2.alive() and dl2.running(), "proxy2 stopped or download ended during the drain"
            proxy2.proc.send_signal(signal.SIGTERM)
            try:
                rc = proxy2.proc.wait(5)
            except Exception:
                raise AssertionError("proxy2 still running 5 s after the second SIGTERM")
            assert rc == 0, "exit code %r after the second signal" % rc
            rc2 = dl2.wait(10)
            assert rc2 is not None and (rc2 != 0 or file_size(out2) < h.BIG_SIZE), \
                "the download completed although the proxy exited at once"
        finally:
            dl2.kill()
            proxy2.stop(timeout=1)


if __name__ == "__main__":
    h.run_test("90_metrics", main)
