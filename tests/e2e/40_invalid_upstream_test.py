#!/usr/bin/env python3
"""Layer 40: origins with invalid certificates.

For each broken origin (expired, not yet valid, wrong host, self-signed,
unknown root, revoked via CRL) and each policy:
  on_invalid = "block" (default error page): the client gets a 502 page
                                    naming the reason, over a certificate that
                                    names only the requested host; the
                                    origin's content never arrives, over h1
                                    or h2;
  on_invalid = "block", refuse_with = "alert": the client TLS handshake
                                    fails, no body reaches the client (not
                                    even with -k);
  on_invalid = "forward-untrusted": the client sees a leaf from a separate,
                                    untrusted CA: curl --cacert ROOT fails with
                                    60, openssl verify against ROOT fails.
The log line's upstream_verdict names the defect. A valid origin through
the same proxies is the control. No case may end with the client trusting
the certificate.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

CASES = [
    ("expired", "expired"),
    ("notyetvalid", "not-yet-valid"),
    ("wronghost", "hostname-mismatch"),
    ("selfsigned", "self-signed"),
    ("unknownroot", "unknown-issuer"),
    ("revoked", "revoked"),
]


def assert_not_trusted_by_root(pki, t, certs, label):
    """The presented chain must not verify against the enterprise root."""
    leaf = os.path.join(t.dir, "%s-leaf.pem" % label)
    chain = os.path.join(t.dir, "%s-chain.pem" % label)
    with open(leaf, "w") as f:
        f.write(certs[0] + "\n")
    with open(chain, "w") as f:
        f.write("\n".join(certs[1:]) + "\n")
    cmd = ["openssl", "verify", "-CAfile", pki.root]
    if len(certs) > 1:
        cmd += ["-untrusted", chain]
    cp = h.run(cmd + [leaf], timeout=30)
    assert cp.returncode != 0, "openssl verify -CAfile ROOT accepted the presented leaf: %s" % \
        cp.stdout.decode().strip()


def main(t):
    pki = t.pki()
    names = [c for c, _ in CASES] + ["valid-ec"]
    origin = t.start_nginx(pki, certs=names)
    one_k = open(origin.files["/1k"], "rb").read()
    up = {"crl_file": pki.origin_crl}
    block = t.start_proxy(pki, name="block",
                          upstream=dict(up, on_invalid="block", refuse_with="alert"))
    page = t.start_proxy(pki, name="page", upstream=dict(up, on_invalid="block"))
    fwd = t.start_proxy(pki, name="fwd", upstream=dict(up, on_invalid="forward-untrusted"))

    # ---- controls: a valid origin passes through all (CRL loaded, not over-blocking)
    for p in (block, page, fwd):
        with t.check("[%s] control: valid origin intercepted and trusted" % p.name):
            port = origin.port("valid-ec")
            m = p.mark()
            cp = h.curl_via(p.port, "https://localhost:%d/1k" % port, pki.root)
            assert cp.returncode == 0, "curl rc=%d: %s" % (cp.returncode, h.curl_err(cp))
            assert cp.stdout == one_k, "body differs"
            ev = p.conn_event("localhost:%d" % port, since=m)
            assert ev is not None and ev.get("upstream_verdict") == "ok", "log: %r" % ev

    for name, verdict in CASES:
        port = origin.port(name)
        target = "localhost:%d" % port
        url = "https://%s/1k" % target

        # ---------------- block
        with t.check("[block] %s: curl --cacert ROOT fails, no body" % name):
            m = block.mark()
            cp = h.curl_via(block.port, url, pki.root)
            assert cp.returncode != 0, "curl succeeded (rc 0)"
            assert cp.stdout == b"", "client received %d body bytes" % len(cp.stdout)

        with t.check("[block] %s: log verdict %r" % (name, verdict)):
            ev = block.conn_event(target, since=m)
            assert ev is not None, "no connection line for %s" % target
            assert ev.get("upstream_verdict") == verdict, "upstream_verdict %r, reason %r" % (
                ev.get("upstream_verdict"), ev.get("upstream_reason"))
            assert ev.get("upstream_reason"), "upstream_reason empty"

        with t.check("[block] %s: curl -k (no verification) still gets no body" % name):
            cp = h.curl_via(block.port, url, None, ["-k"])
            assert cp.returncode != 0, "curl -k succeeded: the blocked origin's content was served"
            assert cp.stdout == b"", "client received %d body bytes" % len(cp.stdout)

        with t.check("[block] %s: s_client gets no trusted chain" % name):
            rc, out, err, certs = h.s_client(block.port, target, servername="localhost",
                                             cafile=pki.root, verify_error=False)
            code, text = h.verify_return_code(out)
            assert code != 0 or not certs, "s_client verified the presented chain OK"
            assert rc != 0, "s_client completed the handshake (expected an alert); verify: %r %s" % (
                code, text)

        # ---------------- block with an error page (the default)
        for flag in ("--http1.1", "--http2"):
            with t.check("[page] %s %s: 502 page naming the reason, never the origin's body" % (name, flag)):
                m = page.mark()
                cp = h.curl_via(page.port, url, pki.root, [flag, "-w", "\n%{http_code}"])
                assert cp.returncode == 0, "curl rc=%d: %s" % (cp.returncode, h.curl_err(cp))
                body, _, code = cp.stdout.rpartition(b"\n")
                assert code == b"502", "status %r" % code
                assert one_k not in cp.stdout, "the origin's body was served"
                assert body.startswith(b"sightline: upstream certificate invalid"), body[:200]
                ev = page.conn_event(target, since=m)
                assert ev is not None and ev.get("upstream_verdict") == verdict, "log %r" % ev
                assert ev.get("error_page") is True, "log has no error_page flag: %r" % ev

        with t.check("[page] %s: the page's certificate names only the requested host" % name):
            rc, out, err, certs = h.s_client(page.port, target, servername="localhost",
                                             cafile=pki.root, verify_error=False)
            assert certs, "no certificate presented: %s" % err.strip()[-200:]
            leaf = h.cert_info(certs[0])
            assert leaf["sans"] == frozenset(["DNS:localhost"]), "SANs %s" % sorted(leaf["sans"])
            assert leaf["issuer"] in (pki.ca_subject, pki.root_subject), leaf["issuer"]

        # ---------------- forward-untrusted
        with t.check("[fwd] %s: curl --cacert ROOT fails with 60, no body" % name):
            m = fwd.mark()
            cp = h.curl_via(fwd.port, url, pki.root)
            assert cp.returncode == 60, "curl rc=%d (expected 60): %s" % (cp.returncode, h.curl_err(cp))
            assert cp.stdout == b"", "client received %d body bytes" % len(cp.stdout)

        with t.check("[fwd] %s: log verdict %r" % (name, verdict)):
            ev = fwd.conn_event(target, since=m)
            assert ev is not None, "no connection line for %s" % target
            assert ev.get("upstream_verdict") == verdict, "upstream_verdict %r, reason %r" % (
                ev.get("upstream_verdict"), ev.get("upstream_reason"))

        with t.check("[fwd] %s: presented leaf is from an untrusted CA, fails verify vs ROOT" % name):
            rc, out, err, certs = h.s_client(fwd.port, target, servername="localhost",
                                             cafile=pki.root, verify_error=False)
            assert certs, "no certificate presented (rc=%d): %s" % (rc, err.strip()[-200:])
            code, text = h.verify_return_code(out)
            assert code is not None and code != 0, "s_client: Verify return code %r (%s)" % (code, text)
            leaf = h.cert_info(certs[0])
            assert leaf["issuer"] not in (pki.ca_subject, pki.root_subject), \
                "untrusted leaf is issued by the enterprise CA (%s)" % leaf["issuer"]
            assert_not_trusted_by_root(pki, t, certs, "fwd-%s" % name)

        with t.check("[fwd] %s: curl -k is forwarded to the origin (exact body)" % name):
            cp = h.curl_via(fwd.port, url, None, ["-k"])
            assert cp.returncode == 0, "curl -k rc=%d: %s" % (cp.returncode, h.curl_err(cp))
            assert cp.stdout == one_k, "body differs (%d bytes)" % len(cp.stdout)

    with t.check("revoked is only caught via the CRL: without crl_file the verdict is ok"):
        # documents that the revoked case above really exercised crl_file
        nocrl = t.start_proxy(pki, name="nocrl", upstream={"on_invalid": "block"})
        port = origin.port("revoked")
        m = nocrl.mark()
        cp = h.curl_via(nocrl.port, "https://localhost:%d/1k" % port, pki.root)
        ev = nocrl.conn_event("localhost:%d" % port, since=m)
        assert cp.returncode == 0 and cp.stdout == one_k, "rc=%d: %s" % (cp.returncode, h.curl_err(cp))
        assert ev is not None and ev.get("upstream_verdict") == "ok", "log %r" % ev

    with t.check("default on_invalid (unset): an expired origin's content never arrives"):
        dflt = t.start_proxy(pki, name="default")
        port = origin.port("expired")
        m = dflt.mark()
        cp = h.curl_via(dflt.port, "https://localhost:%d/1k" % port, pki.root, ["-w", "%{http_code}"])
        assert cp.stdout.endswith(b"502"), "status/body %r" % cp.stdout[-100:]
        assert one_k not in cp.stdout, "the origin's body was served"
        ev = dflt.conn_event("localhost:%d" % port, since=m)
        assert ev is not None and ev.get("upstream_verdict") == "expired", "log %r" % ev
        t.note("curl rc %d" % cp.returncode)

    with t.check("proxies alive; SIGTERM exits 0"):
        for p in (block, page, fwd):
            assert p.alive(), "%s died (rc %r)" % (p.name, p.proc.returncode)
        rcs = [block.stop(), page.stop(), fwd.stop()]
        assert rcs == [0, 0, 0], "exit codes %r" % rcs


if __name__ == "__main__":
    h.run_test("40_invalid_upstream", main)
