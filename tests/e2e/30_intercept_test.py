#!/usr/bin/env python3
"""Layer 30: interception of valid origins.

curl and openssl s_client through the proxy, trusting only the enterprise
root: exact bodies, TLS 1.3 and 1.2, client.min_version = "1.3", forged leaf
issued by the enterprise CA mirroring the origin's CN and SANs with the same
key type, IP-literal targets, the connection log line, and ALPN (h2 and
http/1.1 end to end).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

LOG_FIELDS = ["client", "target", "sni", "action", "client_tls", "upstream_tls",
              "upstream_verdict", "upstream_reason", "bytes_client_to_server",
              "bytes_server_to_client", "client_handshake_ms", "upstream_connect_ms",
              "upstream_handshake_ms", "total_ms", "close_reason"]


def tls_ver(v):
    """'TLSv1.3' / '1.3' / 'TLS1.3' -> '1.3'."""
    v = str(v or "")
    for x in ("1.3", "1.2", "1.1", "1.0"):
        if v.endswith(x):
            return x
    return v


def presented_leaf(proxy, pki, connect, servername, extra=()):
    rc, out, err, certs = h.s_client(proxy.port, connect, servername=servername,
                                     cafile=pki.root, extra=extra)
    assert rc == 0, "s_client rc=%d: %s" % (rc, (err.strip().splitlines() or ["?"])[-1])
    code, text = h.verify_return_code(out)
    assert code == 0, "Verify return code: %r (%s)" % (code, text)
    assert certs, "s_client showed no certificates"
    return h.cert_info(certs[0]), out


def check_mirrors(leaf, origin, pki):
    assert leaf["issuer"] == pki.ca_subject, \
        "leaf issuer %r is not the enterprise CA %r" % (leaf["issuer"], pki.ca_subject)
    assert leaf["cn"] == origin["cn"], "leaf CN %r != origin CN %r" % (leaf["cn"], origin["cn"])
    assert leaf["sans"] == origin["sans"], "leaf SANs %s != origin SANs %s" % (
        sorted(leaf["sans"]), sorted(origin["sans"]))


def main(t):
    pki = t.pki()
    origin = t.start_nginx(pki, certs=["valid-ec", "valid-rsa", "manynames"])
    proxy = t.start_proxy(pki)
    ec4, ec6 = origin.port("valid-ec"), origin.port("valid-ec", "v6")
    rsa4 = origin.port("valid-rsa")
    many4 = origin.port("manynames")
    one_k = open(origin.files["/1k"], "rb").read()
    o_ec = h.cert_info(pki.crt("valid-ec"))
    o_rsa = h.cert_info(pki.crt("valid-rsa"))
    o_many = h.cert_info(pki.crt("manynames"))

    with t.check("curl --cacert ROOT https://localhost/1k: exact body"):
        m = proxy.mark()
        cp = h.curl_via(proxy.port, "https://localhost:%d/1k" % ec4, pki.root)
        assert cp.returncode == 0, "curl rc=%d: %s" % (cp.returncode, h.curl_err(cp))
        assert cp.stdout == one_k, "body differs (%d bytes)" % len(cp.stdout)

    with t.check("connection log line: all fields, intercept, verdict ok"):
        target = "localhost:%d" % ec4
        ev = proxy.conn_event(target, since=m)
        assert ev is not None, "no connection line with target %r" % target
        missing = [f for f in LOG_FIELDS if f not in ev]
        assert not missing, "missing fields %s in %s" % (missing, ev)
        assert ev["action"] == "intercept", "action %r" % ev["action"]
        assert ev["upstream_verdict"] == "ok", "verdict %r" % ev["upstream_verdict"]
        assert ev["sni"] == "localhost", "sni %r" % ev["sni"]
        assert str(ev["client"]).startswith(("127.0.0.1", "[127.0.0.1]")), "client %r" % ev["client"]
        for leg in ("client_tls", "upstream_tls"):
            assert isinstance(ev[leg], dict), "%s is %r" % (leg, ev[leg])
            for k in ("version", "cipher", "alpn"):
                assert k in ev[leg], "%s lacks %s: %r" % (leg, k, ev[leg])
            assert tls_ver(ev[leg]["version"]) == "1.3", "%s.version %r" % (leg, ev[leg]["version"])
            assert ev[leg]["cipher"], "%s.cipher empty" % leg
        assert ev["bytes_server_to_client"] >= len(one_k), \
            "bytes_server_to_client %r < body size" % ev["bytes_server_to_client"]
        assert ev["bytes_client_to_server"] > 0, "bytes_client_to_server %r" % ev["bytes_client_to_server"]
        for f in ("client_handshake_ms", "upstream_connect_ms", "upstream_handshake_ms", "total_ms"):
            assert isinstance(ev[f], (int, float)) and ev[f] >= 0, "%s = %r" % (f, ev[f])
        assert ev["total_ms"] >= ev["client_handshake_ms"], "total_ms < client_handshake_ms"
        assert ev["close_reason"], "close_reason empty"

    with t.check("s_client -tls1_3: verifies against ROOT, issuer = enterprise CA, mirrors origin"):
        leaf, out = presented_leaf(proxy, pki, "localhost:%d" % ec4, "localhost", ["-tls1_3"])
        assert "TLSv1.3" in out, "not TLSv1.3"
        check_mirrors(leaf, o_ec, pki)

    with t.check("s_client -tls1_2: verifies against ROOT, mirrors origin"):
        leaf, out = presented_leaf(proxy, pki, "localhost:%d" % ec4, "localhost", ["-tls1_2"])
        assert "TLSv1.2" in out, "not TLSv1.2"
        check_mirrors(leaf, o_ec, pki)

    with t.check("EC origin -> EC leaf"):
        leaf, _ = presented_leaf(proxy, pki, "localhost:%d" % ec4, "localhost")
        assert leaf["key_type"] == "EC", "leaf key %s (origin EC)" % leaf["key_type"]

    with t.check("RSA origin -> RSA-2048 leaf, mirrors origin"):
        leaf, _ = presented_leaf(proxy, pki, "localhost:%d" % rsa4, "localhost")
        assert leaf["key_type"] == "RSA", "leaf key %s (origin RSA)" % leaf["key_type"]
        assert leaf["key_bits"] == 2048, "leaf RSA bits %r" % leaf["key_bits"]
        check_mirrors(leaf, o_rsa, pki)

    with t.check("manynames: all SANs mirrored (DNS, wildcard, IPv4, IPv6)"):
        leaf, _ = presented_leaf(proxy, pki, "localhost:%d" % many4, "localhost")
        assert len(o_many["sans"]) >= 6, "test PKI: manynames has only %s" % sorted(o_many["sans"])
        check_mirrors(leaf, o_many, pki)

    for label, url, target in [("127.0.0.1", "https://127.0.0.1:%d/1k" % ec4, "127.0.0.1:%d" % ec4),
                               ("[::1]", "https://[::1]:%d/1k" % ec6, "[::1]:%d" % ec6)]:
        with t.check("IP target %s via curl: verified, exact body, logged ok" % label):
            m = proxy.mark()
            cp = h.curl_via(proxy.port, url, pki.root)
            assert cp.returncode == 0, "curl rc=%d: %s" % (cp.returncode, h.curl_err(cp))
            assert cp.stdout == one_k, "body differs"
            ev = proxy.conn_event(target, since=m)
            assert ev is not None, "no connection line with target %r" % target
            assert ev.get("upstream_verdict") == "ok", "verdict %r" % ev.get("upstream_verdict")

    with t.check("IP target [::1] via s_client (no SNI): leaf mirrors origin, IP SAN verified"):
        # like curl and browsers, send no SNI for an IP literal (s_client
        # would otherwise send "::1", which RFC 6066 does not allow)
        leaf, _ = presented_leaf(proxy, pki, "[::1]:%d" % ec6, None,
                                 ["-noservername", "-verify_ip", "::1"])
        check_mirrors(leaf, o_ec, pki)

    with t.check("ALPN h2 end to end (curl --http2, log h2 on both legs)"):
        m = proxy.mark()
        cp = h.curl_via(proxy.port, "https://localhost:%d/1k" % ec4, pki.root,
                        ["--http2", "-w", "\n%{http_version}"])
        assert cp.returncode == 0, "curl rc=%d: %s" % (cp.returncode, h.curl_err(cp))
        body, _, ver = cp.stdout.rpartition(b"\n")
        assert ver == b"2", "curl negotiated HTTP/%s" % ver.decode()
        assert body == one_k, "body differs"
        ev = proxy.conn_event("localhost:%d" % ec4, since=m)
        assert ev is not None, "no connection line"
        assert ev["client_tls"].get("alpn") == "h2", "client_tls.alpn %r" % ev["client_tls"].get("alpn")
        assert ev["upstream_tls"].get("alpn") == "h2", "upstream_tls.alpn %r" % ev["upstream_tls"].get("alpn")

    with t.check("ALPN http/1.1 end to end (curl --http1.1)"):
        m = proxy.mark()
        cp = h.curl_via(proxy.port, "https://localhost:%d/1k" % ec4, pki.root,
                        ["--http1.1", "-w", "\n%{http_version}"])
        assert cp.returncode == 0, "curl rc=%d: %s" % (cp.returncode, h.curl_err(cp))
        body, _, ver = cp.stdout.rpartition(b"\n")
        assert ver == b"1.1", "curl negotiated HTTP/%s" % ver.decode()
        assert body == one_k, "body differs"
        ev = proxy.conn_event("localhost:%d" % ec4, since=m)
        assert ev is not None, "no connection line"
        assert ev["client_tls"].get("alpn") == "http/1.1", "client_tls.alpn %r" % ev["client_tls"].get("alpn")
        assert ev["upstream_tls"].get("alpn") == "http/1.1", \
            "upstream_tls.alpn %r" % ev["upstream_tls"].get("alpn")

    with t.check("TLS 1.2 client logged as 1.2 on the client leg"):
        m = proxy.mark()
        cp = h.curl_via(proxy.port, "https://localhost:%d/1k" % ec4, pki.root,
                        ["--tlsv1.2", "--tls-max", "1.2"])
        assert cp.returncode == 0 and cp.stdout == one_k, "rc=%d %s" % (cp.returncode, h.curl_err(cp))
        ev = proxy.conn_event("localhost:%d" % ec4, since=m)
        assert ev is not None, "no connection line"
        assert tls_ver(ev["client_tls"].get("version")) == "1.2", "client_tls.version %r" % ev["client_tls"]

    with t.check("client trusting only the origin CA rejects the forged leaf"):
        cp = h.curl_via(proxy.port, "https://localhost:%d/1k" % ec4, pki.origin_ca)
        assert cp.returncode == 60, "curl rc=%d (expected 60): %s" % (cp.returncode, h.curl_err(cp))
        assert cp.stdout == b"", "got a body"

    # ---- client.min_version = "1.3"
    p13 = t.start_proxy(pki, name="min13", client={"min_version": "1.3"})
    with t.check("min_version 1.3: -tls1_2 client fails"):
        rc, out, err, certs = h.s_client(p13.port, "localhost:%d" % ec4, servername="localhost",
                                         cafile=pki.root, extra=["-tls1_2"])
        assert rc != 0, "s_client -tls1_2 succeeded against min_version 1.3"
        assert "TLSv1.2" not in out or "Cipher is (NONE)" in out, "a TLS 1.2 session was established"

    with t.check("min_version 1.3: curl --tls-max 1.2 fails, no body"):
        cp = h.curl_via(p13.port, "https://localhost:%d/1k" % ec4, pki.root, ["--tls-max", "1.2"])
        assert cp.returncode != 0 and cp.stdout == b"", "rc=%d, %d body bytes" % (cp.returncode, len(cp.stdout))

    with t.check("min_version 1.3: -tls1_3 client succeeds"):
        leaf, _ = presented_leaf(p13, pki, "localhost:%d" % ec4, "localhost", ["-tls1_3"])
        check_mirrors(leaf, o_ec, pki)

    # ---- enterprise CA with an intermediate: the proxy must send the chain
    inter = pki.extra_enterprise_ca("intermediate", "--intermediate")
    pint = t.start_proxy(pki, name="intermediate", ca=inter)
    with t.check("intermediate CA: chain sent, verifies against the root alone"):
        assert inter.ca_subject != inter.root_subject, "test PKI: --intermediate made no intermediate"
        rc, out, err, certs = h.s_client(pint.port, "localhost:%d" % ec4, servername="localhost",
                                         cafile=inter.root)
        code, text = h.verify_return_code(out)
        assert rc == 0 and code == 0, "s_client rc=%d, verify %r (%s)" % (rc, code, text)
        leaf = h.cert_info(certs[0])
        assert leaf["issuer"] == inter.ca_subject, "leaf issuer %r" % leaf["issuer"]
        assert len(certs) >= 2 and h.cert_info(certs[1])["subject"] == inter.ca_subject, \
            "intermediate not sent (chain: %s)" % [h.cert_info(c)["subject"] for c in certs]
        cp = h.curl_via(pint.port, "https://localhost:%d/1k" % ec4, inter.root)
        assert cp.returncode == 0 and cp.stdout == one_k, "curl rc=%d: %s" % (
            cp.returncode, h.curl_err(cp))

    with t.check("proxies still alive; SIGTERM exits 0"):
        assert proxy.alive() and p13.alive() and pint.alive(), "a proxy died"
        rcs = [proxy.stop(), p13.stop(), pint.stop()]
        assert rcs == [0, 0, 0], "exit codes %r" % rcs



if __name__ == "__main__":
    h.run_test("30_intercept", main)
