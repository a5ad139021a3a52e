#!/usr/bin/env python3
"""Layer 25: static listeners.

A listener with mode = "static" intercepts every connection toward one
fixed target, with no CONNECT (sslsplit's static destination, mitmproxy's
reverse mode): the client speaks TLS to the listener directly and gets the
origin's content over a certificate from the enterprise CA; a static
target that refuses connections closes the client without any HTTP bytes.
"""

import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def main(t):
    pki = t.pki()
    origin = t.start_nginx(pki, certs=["valid-ec"])
    one_k = open(origin.files["/1k"], "rb").read()
    port = h.free_port()
    dead = h.free_port()
    dead_port = h.free_port()
    extra = ('[[listener]]\naddress = "127.0.0.1:%d"\nmode = "static"\ntarget = "localhost:%d"\n\n'
             '[[listener]]\naddress = "127.0.0.1:%d"\nmode = "static"\ntarget = "127.0.0.1:%d"\n'
             % (port, origin.port("valid-ec"), dead_port, dead))
    proxy = t.start_proxy(pki, extra=extra)

    for flag, version in (("--http1.1", "1.1"), ("--http2", "2")):
        with t.check("static listener intercepts toward its target (%s)" % flag):
            cp = h.curl(["--cacert", pki.root, flag, "-w", "\n%{http_version}",
                         "--resolve", "localhost:%d:127.0.0.1" % port,
                         "https://localhost:%d/1k" % port])
            assert cp.returncode == 0, h.curl_err(cp)
            body, _, v = cp.stdout.rpartition(b"\n")
            assert body == one_k, "body differs"
            assert v.decode() == version, "http version %r" % v

    with t.check("the presented leaf is issued by the enterprise CA"):
        # s_client without a proxy: connect straight to the static listener.
        cp = h.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-servername", "localhost",
                    "-CAfile", pki.root, "-verify_return_error", "-showcerts"], input=b"", timeout=30)
        out = cp.stdout.decode(errors="replace")
        assert "Verify return code: 0 (ok)" in out, out[-400:]
        leaf = h.cert_info(h.pem_certs(out)[0])
        assert leaf["issuer"] in (pki.ca_subject, pki.root_subject), leaf["issuer"]

    with t.check("a static target that refuses: the client is closed, no HTTP bytes"):
        s = socket.create_connection(("127.0.0.1", dead_port), timeout=10)
        got = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except ConnectionResetError:
            pass
        s.close()
        assert not got.startswith(b"HTTP/"), "static listener answered in HTTP: %r" % got[:60]


if __name__ == "__main__":
    h.run_test("25_static", main)
