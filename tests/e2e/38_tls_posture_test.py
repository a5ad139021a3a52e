#!/usr/bin/env python3
"""Layer 38: TLS posture of the client-facing side (issue 11).

testssl.sh (Debian package testssl.sh, /usr/bin/testssl) scans a static
listener directly, so every handshake it makes is an intercepted connection
(ClientHello peeked, origin connected and verified, leaf forged). From its
JSON output the test asserts Mozilla's "intermediate" profile:

- TLS 1.3 offered; SSLv2, SSLv3, TLS 1.0 and TLS 1.1 not offered;
- every TLS 1.2 suite is forward secret (ECDHE/DHE) and AEAD (AES-GCM or
  ChaCha20-Poly1305): no CBC, static RSA key exchange, RC4, 3DES, NULL,
  anonymous or export suites; TLS 1.3 suites are the standard AEAD ones;
- key exchange groups are strong (X25519, P-256, P-384 ...);
- no vulnerability check (heartbleed ... RC4) is flagged LOW or worse,
  BREACH included: it is about HTTP compression of the origin's responses,
  which sightline relays unchanged and never adds, and the test origin does
  not compress (on a real deployment a BREACH finding belongs to the origin).
  testssl.sh's certificate (-S: trust, OCSP, CT) and header (-h: HSTS)
  checks are not run: they describe the test CA and the test origin, not
  the proxy's TLS settings.

The full scan runs against an RSA origin (RSA-2048 leaf: the RSA paths of
ROBOT, DROWN and FREAK are really probed), the cipher enumeration also
against an ECDSA origin (ECDSA leaf: the ECDHE-ECDSA suites).
`client.min_version = "1.3"` makes TLS 1.2 disappear; looser values are
refused by the configuration. A deliberately weak `openssl s_server` (TLS
1.0, CBC, static RSA) is scanned with the same checks to show that they do
fail when they should.

The upstream leg is checked against `openssl s_server` origins: what
sightline offers (its -www page lists the client's suites, groups and
signature algorithms), and refusals of an origin speaking only TLS 1.1 or
only static-RSA key exchange, of a name only in the subject CN, of an
RSA-1024 key and of a SHA-1 signature, as browsers refuse them.

Runs in about 2 minutes on 2 cores (testssl.sh is a bash script; most of the
time is its own). SKIP when testssl.sh is not installed.
"""

import json
import os
import re
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

TESTSSL = os.environ.get("SIGHTLINE_TESTSSL", "/usr/bin/testssl")

# testssl.sh rates findings DEBUG, INFO, OK, LOW, MEDIUM, HIGH, CRITICAL (and
# WARN / FATAL for a check that could not be made): anything but these two
# fails.
OK_SEVERITIES = {"OK", "INFO"}

# The ids of `-U` (testssl.sh 3.0.8 JSON). Each one must be present, so a
# testssl.sh that stops emitting a check cannot pass silently.
VULN_IDS = ["heartbleed", "CCS", "ticketbleed", "ROBOT", "secure_renego", "secure_client_renego",
            "CRIME_TLS", "BREACH", "POODLE_SSL", "fallback_SCSV", "SWEET32", "FREAK", "DROWN",
            "LOGJAM", "BEAST", "LUCKY13", "RC4"]
PROTOCOL_IDS = ["SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3"]

# TLS 1.2: forward-secret key exchange + AEAD, by IANA name (Mozilla
# intermediate lists ECDHE-ECDSA/ECDHE-RSA/DHE-RSA with AES-GCM and
# ChaCha20-Poly1305).
FS_AEAD_TLS12 = re.compile(
    r"^TLS_(ECDHE_ECDSA|ECDHE_RSA|DHE_RSA)_WITH_"
    r"(AES_128_GCM_SHA256|AES_256_GCM_SHA384|CHACHA20_POLY1305_SHA256)$")
TLS13_SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                "TLS_CHACHA20_POLY1305_SHA256"}
STRONG_CURVES = {"X25519", "X448", "prime256v1", "secp384r1", "secp521r1",
                 "X25519MLKEM768", "SecP256r1MLKEM768", "SecP384r1MLKEM1024"}
# The words that name what intermediate excludes, for a readable reason.
WEAK_MARKERS = [("CBC", r"_CBC_"), ("RC4", r"RC4"), ("3DES", r"3DES|DES_CBC|_DES_"),
                ("NULL", r"NULL"), ("anon", r"_anon_|_ANON_"), ("export", r"EXPORT"),
                ("static RSA key exchange", r"^TLS_RSA_"), ("static DH key exchange", r"^TLS_DH_")]


# --------------------------------------------------------------------------
# running testssl.sh

class Testssl:
    """testssl.sh `checks` against target (IP:port; no DNS, no outside
    lookups), started at once; result() waits for it. The process and
    whatever it started (openssl children) are stopped in all paths."""

    def __init__(self, t, name, target, checks):
        self.name = name
        self.checks = list(checks)
        self.json_path = os.path.join(t.dir, "%s.json" % name)
        tmp = os.path.join(t.dir, "%s.tmp" % name)
        os.makedirs(tmp, exist_ok=True)
        # --nodns none: no lookups at all (not even rDNS of 127.0.0.1);
        # --warnings off: never ask a question; no --phone-out (default):
        # no CRL/OCSP fetches.
        cmd = ["env", "TMPDIR=%s" % tmp, TESTSSL, "--quiet", "--color", "0", "--warnings", "off",
               "--nodns", "none", "--openssl", "/usr/bin/openssl",
               "--jsonfile-pretty", self.json_path] + self.checks + [target]
        self.t0 = time.monotonic()
        self.t1 = None
        self.daemon = h.Daemon(t, cmd, "testssl-%s" % name)
        threading.Thread(target=self._time, daemon=True).start()

    def _time(self):
        self.daemon.proc.wait()
        self.t1 = time.monotonic()

    def result(self, timeout=240.0):
        """(findings by section, seconds it ran)."""
        d = self.daemon
        try:
            try:
                rc = d.proc.wait(max(1.0, self.t0 + timeout - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError("testssl.sh %s did not finish within %ss:\n%s"
                                     % (" ".join(self.checks), timeout, d.log_tail()))
        finally:
            d.kill()
        took = (self.t1 or time.monotonic()) - self.t0
        try:
            with open(self.json_path) as f:
                doc = json.load(f)
        except (OSError, ValueError) as e:
            raise AssertionError("testssl.sh %s (rc=%s) wrote no usable JSON (%s):\n%s"
                                 % (" ".join(self.checks), rc, e, d.log_tail()))
        results = doc.get("scanResult") or []
        assert results, "testssl.sh JSON has no scanResult:\n%s" % d.log_tail()
        sections = {k: v for k, v in results[0].items() if isinstance(v, list)}
        fatal = [e for v in sections.values() for e in v
                 if e.get("severity") == "FATAL" or e.get("id", "").startswith("scanProblem")]
        assert not fatal, "testssl.sh could not scan: %s" % fatal
        return sections, took


def by_id(entries):
    return {e["id"]: e for e in entries}


def sev(e):
    return e.get("severity", "?")


# --------------------------------------------------------------------------
# checks: each returns a list of problems (empty: passes), so the same code
# can be shown to fail on the weak server.

def protocol_problems(sections, want_tls12=True):
    p = by_id(sections.get("protocols", []))
    missing = [i for i in PROTOCOL_IDS if i not in p]
    if missing:
        return ["protocol ids missing from testssl.sh output: %s" % missing]
    out = []
    for i in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        if not p[i]["finding"].startswith("not offered"):
            out.append("%s: %s (%s)" % (i, p[i]["finding"], sev(p[i])))
    if not p["TLS1_3"]["finding"].startswith("offered"):
        out.append("TLS1_3: %s" % p["TLS1_3"]["finding"])
    tls12 = p["TLS1_2"]["finding"]
    if want_tls12 and not tls12.startswith("offered"):
        out.append("TLS1_2: %s (expected offered)" % tls12)
    if not want_tls12 and not tls12.startswith("not offered"):
        out.append("TLS1_2: %s (expected not offered)" % tls12)
    return out


def offered_suites(sections):
    """{protocol id ('tls1_2'...): [IANA name]} from the -E entries
    (id 'cipher-tls1_2_xc02f', finding '... TLS_ECDHE_RSA_WITH_...')."""
    out = {}
    for e in sections.get("cipherTests", []):
        m = re.match(r"^cipher-(ssl\d|tls1(?:_\d)?)_x[0-9a-f]+$", e["id"])
        if not m:
            continue
        out.setdefault(m.group(1), []).append(e["finding"].split()[-1])
    return out


def cipher_problems(sections):
    suites = offered_suites(sections)
    out = []
    if not suites.get("tls1_3"):
        out.append("no TLS 1.3 suite listed (testssl.sh -E output changed?)")
    for proto, names in sorted(suites.items()):
        if proto not in ("tls1_2", "tls1_3"):
            out.append("%s suites offered: %s" % (proto, names))
    for n in suites.get("tls1_3", []):
        if n not in TLS13_SUITES:
            out.append("TLS 1.3 suite %s" % n)
    for n in suites.get("tls1_2", []):
        if not FS_AEAD_TLS12.match(n):
            why = [w for w, rx in WEAK_MARKERS if re.search(rx, n)] or ["not ECDHE/DHE + AEAD"]
            out.append("TLS 1.2 suite %s (%s)" % (n, ", ".join(why)))
    return out


def fs_problems(sections):
    f = by_id(sections.get("pfs", []))
    out = []
    if "PFS" not in f or "PFS_ECDHE_curves" not in f:
        return ["forward secrecy ids missing from testssl.sh output: %s" % sorted(f)]
    for e in f.values():
        if sev(e) not in OK_SEVERITIES:
            out.append("%s: %s (%s)" % (e["id"], e["finding"], sev(e)))
    curves = set(f["PFS_ECDHE_curves"]["finding"].split())
    weak = curves - STRONG_CURVES
    if weak:
        out.append("weak ECDHE groups offered: %s" % sorted(weak))
    if "X25519" not in curves:
        out.append("X25519 not offered (groups: %s)" % sorted(curves))
    if "DH_groups" in f:
        out.append("finite-field DHE offered: %s" % f["DH_groups"]["finding"])
    return out


def vuln_problems(sections, required=VULN_IDS):
    v = by_id(sections.get("vulnerabilities", []))
    out = []
    missing = [i for i in required if i not in v]
    if missing:
        out.append("vulnerability ids missing from testssl.sh output: %s" % missing)
    for e in sections.get("vulnerabilities", []):
        if sev(e) not in OK_SEVERITIES:
            out.append("%s: %s (%s)" % (e["id"], e["finding"], sev(e)))
    return out


def expect_none(problems):
    assert not problems, "; ".join(problems)


# --------------------------------------------------------------------------
# the upstream leg: openssl s_server origins

# What sightline may offer origins in TLS 1.2 (docs/interception.md#tls-posture):
# ECDHE with AES-GCM, ChaCha20-Poly1305 or (for old servers, as browsers do)
# AES-CBC-SHA; never static RSA or DHE key exchange, 3DES, RC4 or NULL.
UPSTREAM_TLS12 = re.compile(r"^ECDHE-(ECDSA|RSA)-(AES(128|256)-GCM-SHA(256|384)|CHACHA20-POLY1305"
                            r"|AES(128|256)-SHA)$")
UPSTREAM_GROUPS = {"x25519", "secp256r1", "secp384r1", "X25519MLKEM768"}


def origin_cert(t, pki, name, key_args, san=True, digest="sha256"):
    """A leaf for CN=localhost signed by the test origin CA; (crt, key)."""
    d = os.path.join(t.dir, "upstream-certs")
    os.makedirs(d, exist_ok=True)
    key, csr, crt, ext = (os.path.join(d, name + x) for x in (".key", ".csr", ".crt", ".ext"))
    with open(ext, "w") as f:
        f.write("basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n"
                "extendedKeyUsage = serverAuth\n")
        if san:
            f.write("subjectAltName = DNS:localhost\n")
    h.run(["openssl", "genpkey"] + key_args + ["-out", key], check=True)
    h.run(["openssl", "req", "-new", "-key", key, "-subj", "/CN=localhost", "-out", csr], check=True)
    h.run(["openssl", "x509", "-req", "-in", csr, "-CA", pki.origin_ca,
           "-CAkey", os.path.join(pki.origin_dir, "origin-ca.key"), "-set_serial",
           str(int.from_bytes(os.urandom(8), "big")), "-days", "2", "-" + digest,
           "-extfile", ext, "-out", crt], check=True)
    return crt, key


def via_proxy_to_s_server(t, proxy, pki, name, cert, key, args=()):
    """An `openssl s_server -www` origin with cert/key and args; one curl
    through the proxy's CONNECT listener. (HTTP status or None, body,
    connection log line)."""
    port = h.free_port()
    srv = h.Daemon(t, ["openssl", "s_server", "-accept", "127.0.0.1:%d" % port, "-cert", cert,
                       "-key", key, "-www"] + list(args), "origin-%s" % name)
    try:
        assert h.wait_port("127.0.0.1", port, 10, srv.proc), \
            "s_server did not come up:\n%s" % srv.log_tail()
        m = proxy.mark()
        cp = h.curl_via(proxy.port, "https://localhost:%d/" % port, pki.root,
                        extra=["-w", "\n%{http_code}"], timeout=20)
        body, _, code = cp.stdout.rpartition(b"\n")
        ev = proxy.conn_event("localhost:%d" % port, since=m)
    finally:
        srv.kill()
    status = int(code) if cp.returncode == 0 and code.isdigit() else None
    return status, body.decode(errors="replace"), ev or {}


def upstream_offer(body):
    """From s_server's -www page (what its client, sightline, offered):
    (ciphers common with everything s_server has, groups, signature
    algorithms)."""
    m = re.search(r"Ciphers common between both SSL end points:\n(.*?)\nSignature Algorithms: (\S+)"
                  r".*?\nSupported groups: (\S+)", body, re.S)
    assert m, "s_server page not understood: %r" % body[:500]
    return m.group(1).split(), m.group(3).split(":"), m.group(2).split(":")


def upstream_checks(t, pki, proxy):
    with t.check("upstream offer (seen by an origin): TLS 1.2 suites ECDHE + AEAD or AES-CBC-SHA, "
                 "strong groups, signatures SHA-256 or stronger"):
        st, body, ev = via_proxy_to_s_server(t, proxy, pki, "control", pki.crt("valid-ec"),
                                             pki.key("valid-ec"))
        assert st == 200, "control origin: HTTP %r (%s)" % (st, ev.get("close_reason"))
        assert ev.get("upstream_verdict") == "ok", ev
        ciphers, groups, sigalgs = upstream_offer(body)
        tls12 = [c for c in ciphers if not c.startswith("TLS_")]
        bad = [c for c in tls12 if not UPSTREAM_TLS12.match(c)]
        assert tls12 and not bad, "TLS 1.2 suites offered upstream: %s" % bad
        assert set(groups) <= UPSTREAM_GROUPS and "x25519" in groups, "groups %s" % groups
        # As browsers: SHA-256 or stronger, no DSA (OpenSSL alone would add
        # SHA-224 and DSA).
        weak = [a for a in sigalgs if re.search(r"SHA1$|SHA224$|^DSA|MD5", a, re.I)]
        assert not weak, "weak signature algorithms offered: %s" % weak
        t.note("groups %s; %d TLS 1.2 suites" % (":".join(groups), len(tls12)))

    ec = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
    cases = [
        # (check, cert and key, s_server arguments, required verdict or None)
        ("an origin offering only TLS 1.1 is refused", (pki.crt("valid-ec"), pki.key("valid-ec")),
         ["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"], None),
        ("an origin offering only static-RSA key exchange is refused",
         (pki.crt("valid-rsa"), pki.key("valid-rsa")),
         ["-tls1_2", "-cipher", "AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA"], None),
        ("a name only in the subject CN (no subjectAltName) does not verify",
         origin_cert(t, pki, "cn-only", ec, san=False), [], "hostname-mismatch"),
        ("an RSA-1024 origin key does not verify",
         origin_cert(t, pki, "rsa1024", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"]),
         ["-cipher", "DEFAULT:@SECLEVEL=0"], "invalid"),
        ("a SHA-1 signed origin certificate does not verify",
         origin_cert(t, pki, "sha1", ec, digest="sha1"), ["-cipher", "DEFAULT:@SECLEVEL=0"], "invalid"),
    ]
    for name, (crt, key), args, verdict in cases:
        with t.check("upstream: " + name):
            st, _, ev = via_proxy_to_s_server(t, proxy, pki, re.sub(r"\W+", "-", name)[:40],
                                              crt, key, args)
            assert ev, "no connection log line"
            assert st != 200, "the client got the origin's page (HTTP 200); %s" % ev
            assert ev.get("upstream_verdict") != "ok", ev
            if verdict:
                assert ev.get("upstream_verdict") == verdict, \
                    "verdict %r (%s), expected %r" % (ev.get("upstream_verdict"),
                                                      ev.get("upstream_reason"), verdict)
            t.note("HTTP %s; %s" % (st, ev.get("upstream_reason") or ev.get("close_reason")))


def static_listener(port, target):
    return ('[[listener]]\naddress = "127.0.0.1:%d"\nmode = "static"\ntarget = "%s"\n\n'
            % (port, target))


def main(t):
    if not os.access(TESTSSL, os.X_OK):
        with t.check("testssl.sh is installed"):
            raise h.Skip("%s not found (Debian package testssl.sh; ./dev.sh installs it)" % TESTSSL)
        return
    pki = t.pki()
    origin = t.start_nginx(pki, certs=["valid-rsa", "valid-ec"])
    rsa_port, ec_port, p13_port, weak_port = h.free_ports(4)
    # Static targets by name: testssl.sh sends no SNI to an IP address, so
    # the origin is verified against the target's host name.
    rsa_target = "localhost:%d" % origin.port("valid-rsa")
    ec_target = "localhost:%d" % origin.port("valid-ec")
    proxy = t.start_proxy(pki, extra=static_listener(rsa_port, rsa_target)
                          + static_listener(ec_port, ec_target))
    p13 = t.start_proxy(pki, name="min13", client={"min_version": "1.3"},
                        extra=static_listener(p13_port, ec_target))
    # The negative control: a deliberately weak server (TLS 1.0-1.2, static
    # RSA and CBC suites) that the same checks must flag.
    weak = h.Daemon(t, ["openssl", "s_server", "-accept", "127.0.0.1:%d" % weak_port,
                        "-cert", pki.crt("valid-rsa"), "-key", pki.key("valid-rsa"), "-www",
                        "-min_protocol", "TLSv1", "-max_protocol", "TLSv1.2",
                        "-cipher", "AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES128-GCM-SHA256"
                        ":@SECLEVEL=0"], "weak-s_server")
    for port, p in ((rsa_port, proxy.proc), (ec_port, proxy.proc), (p13_port, p13.proc),
                    (weak_port, weak.proc)):
        if not h.wait_port("127.0.0.1", port, 10, p):
            raise h.Fatal("nothing listening on 127.0.0.1:%d:\n%s\n%s"
                          % (port, proxy.stderr_text()[-2000:], weak.log_tail()))

    # testssl.sh spends most of its time waiting on sockets, not on the CPU:
    # two scans at a time keep the test near 2 minutes on 2 cores.
    # Full scan (protocols, each cipher per protocol, forward secrecy,
    # vulnerabilities) against the RSA origin, with the weak server's scan.
    full_scan = Testssl(t, "full", "127.0.0.1:%d" % rsa_port, ["-p", "-E", "-f", "-U"])
    weak_scan = Testssl(t, "weak", "127.0.0.1:%d" % weak_port, ["-p", "-E", "-L"])
    with t.check("testssl.sh -p -E -f -U through the proxy produced its report", fatal=True):
        full, took = full_scan.result()
        t.note("testssl.sh %.1fs" % took)

    with t.check("every testssl.sh handshake was an intercepted connection, origin verified"):
        evs = [e for e in list(proxy.events)
               if e.get("event") == "connection" and e.get("target") == rsa_target]
        icpt = [e for e in evs if e.get("action") == "intercept"]
        assert len(icpt) >= 20, "only %d intercepted connections toward %s" % (len(icpt), rsa_target)
        bad = [e for e in icpt if e.get("upstream_verdict") != "ok"]
        assert not bad, "origin not verified: %s" % bad[:2]
        # The others closed before a complete ClientHello or sent no TLS.
        other = [e for e in evs if e.get("action") not in ("intercept", "none", "reject")]
        assert not other, "not intercepted: %s" % other[:2]
        done = [e for e in icpt if e.get("client_tls")]
        assert done, "no client handshake completed"
        assert proxy.alive(), "the proxy exited during the scan"
        t.note("%d connections, %d intercepted, %d handshakes completed"
               % (len(evs), len(icpt), len(done)))

    with t.check("protocols: TLS 1.3 and 1.2 offered; SSLv2, SSLv3, TLS 1.0, TLS 1.1 not"):
        expect_none(protocol_problems(full))

    with t.check("TLS 1.2 suites (RSA leaf): only ECDHE + AES-GCM/ChaCha20-Poly1305"):
        expect_none(cipher_problems(full))
        suites = offered_suites(full)
        assert suites.get("tls1_2"), "no TLS 1.2 suite listed"
        t.note("tls1_2: " + " ".join(sorted(suites["tls1_2"])))

    with t.check("forward secrecy: offered, strong groups only"):
        expect_none(fs_problems(full))
        t.note("groups: " + by_id(full["pfs"])["PFS_ECDHE_curves"]["finding"])

    with t.check("vulnerabilities: none flagged (heartbleed ... RC4, BREACH included)"):
        expect_none(vuln_problems(full))

    with t.check("the same checks flag a weak server (TLS 1.0, CBC, static RSA, LUCKY13)"):
        try:
            bad, took = weak_scan.result()
        finally:
            weak.kill()
        pp = protocol_problems(bad)
        assert any(x.startswith("TLS1:") for x in pp), "TLS 1.0 not flagged: %s" % pp
        assert any(x.startswith("TLS1_3:") for x in pp), "missing TLS 1.3 not flagged: %s" % pp
        cp = cipher_problems(bad)
        for frag in ("TLS_RSA_WITH_AES_128_CBC_SHA (CBC, static RSA key exchange)",
                     "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA (CBC)", "tls1 suites offered"):
            assert any(frag in x for x in cp), "%r not flagged: %s" % (frag, cp)
        assert not any("ECDHE_RSA_WITH_AES_128_GCM" in x for x in cp), "GCM suite flagged: %s" % cp
        vp = vuln_problems(bad, required=["LUCKY13"])
        assert any(x.startswith("LUCKY13:") for x in vp), "LUCKY13 not flagged: %s" % vp
        t.note("testssl.sh %.1fs" % took)

    # ECDSA leaf: the ECDHE-ECDSA suites; and the stricter setting
    # client.min_version = "1.3".
    ec_scan = Testssl(t, "ecdsa", "127.0.0.1:%d" % ec_port, ["-E"])
    p13_scan = Testssl(t, "min13", "127.0.0.1:%d" % p13_port, ["-p"])

    # Looser than the defaults is not configurable (checked meanwhile).
    with t.check("no loosening knob: min_version 1.0/1.1 and cipher/group/verify keys are refused"):
        loose = [("client", "min_version", "1.1"), ("client", "min_version", "1.0"),
                 ("upstream", "min_version", "1.1"), ("client", "ciphers", "DEFAULT"),
                 ("client", "groups", "P-192"), ("upstream", "verify", False)]
        for i, (section, key, value) in enumerate(loose):
            text = h.make_config(pki, listen_port=h.free_port(), **{section: {key: value}})
            rc, err, _ = h.run_sightline_expect_exit(t, text, name="loose-%d" % i)
            assert rc is not None and rc > 0, "%s.%s = %r accepted (rc=%r)" % (section, key, value, rc)
            assert "%s.%s" % (section, key) in err, \
                "%s.%s = %r: refusal does not name the key: %r" % (section, key, value, err[-300:])

    # The upstream leg against deliberately weak origins (also meanwhile).
    upstream_checks(t, pki, proxy)

    with t.check("TLS 1.2 suites (ECDSA leaf): only ECDHE + AES-GCM/ChaCha20-Poly1305"):
        ec, took = ec_scan.result()
        expect_none(cipher_problems(ec))
        suites = offered_suites(ec)
        assert suites.get("tls1_2"), "no TLS 1.2 suite listed"
        assert all("_ECDSA_" in n for n in suites["tls1_2"]), suites["tls1_2"]
        t.note("testssl.sh %.1fs; tls1_2: %s" % (took, " ".join(sorted(suites["tls1_2"]))))

    with t.check('client.min_version = "1.3": TLS 1.2 no longer offered, TLS 1.3 is'):
        s13, took = p13_scan.result()
        expect_none(protocol_problems(s13, want_tls12=False))
        t.note("testssl.sh %.1fs" % took)


if __name__ == "__main__":
    h.run_test("38_tls_posture", main)
