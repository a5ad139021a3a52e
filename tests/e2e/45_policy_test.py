#!/usr/bin/env python3
"""Layer 45: per-domain policies (inspect / bypass / block).

One nginx origin (valid-ec and manynames certificates) behind proxies whose
policy files this script writes:
  bypass        the client talks TLS with the origin itself: it sees the
                origin's own leaf (SHA-256 of the cert file), verifies with
                the origin CA, and fails with the enterprise root; by exact
                name, suffix (".x": apex and deeper), wildcard ("*.x": one
                label), a domain-list file (comments, an IDN in Unicode),
                case and trailing dot ignored;
  block         at CONNECT (name, dst CIDR with an IP-literal target, port):
                403 naming the rule and FILE:LINE, no connection to the
                destination; by SNI only: TLS completes with a certificate
                naming only that name and the request gets the 403 page;
  clients       a rule on 127.0.0.0/8 and one on ::1 (an IPv6 listener);
  reload        file changes (in place, by rename, a list file) and SIGHUP
                under continuous intercepted traffic: no request fails, the
                new decision applies to new connections only; a save made
                right after a reload line is picked up too; a bad policy
                or list file is rejected (FILE:LINE) and the old one stays;
                a bad file at startup stops the proxy;
  auto-bypass   a client that rejects the forged certificate (an alert, or a
                close or reset after receiving it) is bypassed once it did so
                auto_bypass_threshold times (default 3) within
                auto_bypass_window: one or two aborts are not enough; per
                client address and name; unless [policy] auto_bypass or the
                rule says false; failures older than the window do not count;
                the TTL expires;
  CLI           `sightline policy check` and `sightline policy explain`.
"""

import contextlib
import hashlib
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


# --------------------------------------------------------------------------
# helpers

def tv(v):
    """TOML value, lists included."""
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(tv(x) for x in v) + "]"
    return h.toml_value(v)


def policy_text(rules, default="inspect", auto_bypass=None, header="# written by 45_policy_test"):
    """A policy file: rules is a list of [(key, value), ...] (name first)."""
    out = [header, "", "[policy]", "default = %s" % tv(default)]
    if auto_bypass is not None:
        out.append("auto_bypass = %s" % tv(auto_bypass))
    for r in rules:
        out += ["", "[[rule]]"] + ["%s = %s" % (k, tv(v)) for k, v in r]
    return "\n".join(out) + "\n"


def rule_line(text, name):
    """Line number (1-based) of the [[rule]] header of rule NAME in text."""
    header = None
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip() == "[[rule]]":
            header = i
        elif line.strip() == "name = %s" % tv(name):
            return header
    raise AssertionError("rule %r not in policy text" % name)


def rule_ref(path, name):
    """The policy string of the log line / error page for rule NAME."""
    with open(path, encoding="utf-8") as f:
        return "rule '%s' (%s:%d)" % (name, path, rule_line(f.read(), name))


def write_file(path, text, atomic=False):
    """Write text; atomic = write a temp file next to it and rename (as editors do)."""
    if atomic:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


def cert_file_sha256(path):
    with open(path) as f:
        pem = h.pem_certs(f.read())[0]
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def pem_sha256(pem):
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def tunnel(proxy_host, proxy_port, target, timeout=10.0):
    """CONNECT target through the proxy at proxy_host (IPv4 or IPv6).
    Returns (sock, status, head, client) where client is the socket's local
    address as the proxy logs it."""
    fam = socket.AF_INET6 if ":" in proxy_host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect((proxy_host, proxy_port))
    client = h.hostport(*s.getsockname()[:2])
    s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target)).encode())
    code, head = h.read_response_head(s)
    return s, code, head, client


def connect_refused(proxy_port, target, proxy_host="127.0.0.1"):
    """CONNECT expected to be answered with an error: (status, head, body, client)."""
    s, code, head, client = tunnel(proxy_host, proxy_port, target)
    try:
        m = re.search(r"(?im)^content-length:\s*(\d+)", head)
        body = b""
        if m:
            left = int(m.group(1))
            while left > 0:
                b = s.recv(left)
                if not b:
                    break
                body += b
                left -= len(b)
        return code, head, body.decode("utf-8", "replace"), client
    finally:
        s.close()


def probe(proxy_port, target, sni, proxy_host="127.0.0.1", cafile=None, path=None):
    """CONNECT target, TLS with SNI sni (verified against cafile and sni if
    given, else unverified), optionally GET path. Returns a dict: client,
    leaf (PEM), fp (sha256 of the leaf), status, body; raises on failure."""
    s, code, head, client = tunnel(proxy_host, proxy_port, target)
    ss = None
    try:
        if code != 200:
            raise AssertionError("CONNECT %s -> %r" % (target, head.split("\r\n", 1)[0]))
        ctx = h.client_context(cafile, verify=cafile is not None)
        ss = ctx.wrap_socket(s, server_hostname=sni)
        der = ss.getpeercert(binary_form=True)
        out = {"client": client, "leaf": ssl.DER_cert_to_PEM_cert(der),
               "fp": hashlib.sha256(der).hexdigest(), "status": None, "body": None}
        if path:
            ss.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                        % (path, sni)).encode())
            out["status"], _, out["body"] = h.read_http_response(ss)
        return out
    finally:
        (ss or s).close()


class PendingListener:
    """A listening socket nobody accepts on: connections() counts the TCP
    connections the kernel completed to it (pending in its backlog)."""

    def __init__(self, host):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.count = 0
        h._register(self)

    def connections(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return self.count
            c.close()
            self.count += 1

    def kill(self):
        h._unregister(self)
        self.sock.close()


def conn_line(proxy, client, since=0, timeout=10.0):
    ev = h.connection_line(proxy, client, since, timeout)
    assert ev is not None, "no connection line for client %s" % client
    return ev


def expect_bypass(proxy, res, origin_fp, policy, since):
    assert res["fp"] == origin_fp, "presented leaf is not the origin's own (issuer %s)" % (
        h.cert_info(res["leaf"])["issuer"])
    ev = conn_line(proxy, res["client"], since)
    assert ev.get("action") == "bypass", "log action %r (policy %r)" % (ev.get("action"),
                                                                        ev.get("policy"))
    assert ev.get("policy") == policy, "log policy %r, expected %r" % (ev.get("policy"), policy)
    return ev


def expect_inspect(proxy, pki, res, origin_fp, since, policy="default inspect"):
    assert res["fp"] != origin_fp, "the origin's own leaf was presented (bypassed)"
    issuer = h.cert_info(res["leaf"])["issuer"]
    assert issuer == pki.ca_subject, "leaf issuer %r is not the enterprise CA" % issuer
    ev = conn_line(proxy, res["client"], since)
    assert ev.get("action") in ("intercept", "refuse"), "log action %r" % ev.get("action")
    assert ev.get("policy") == policy, "log policy %r, expected %r" % (ev.get("policy"), policy)
    return ev


def expect_blocked_connect(proxy, port, target, policy, proxy_host="127.0.0.1"):
    m = proxy.mark()
    code, head, body, client = connect_refused(port, target, proxy_host)
    assert code == 403, "CONNECT %s -> %r" % (target, head.split("\r\n", 1)[0])
    want = "sightline: blocked by policy: %s" % policy
    assert body.strip() == want, "body %r, expected %r" % (body, want)
    ev = conn_line(proxy, client, m)
    assert ev.get("action") == "reject", "log action %r" % ev.get("action")
    assert ev.get("policy") == policy, "log policy %r" % ev.get("policy")
    assert ev.get("upstream_addr") == "" and ev.get("upstream_connect_ms") == -1, \
        "an upstream connection was made: upstream_addr %r, connect_ms %r" % (
            ev.get("upstream_addr"), ev.get("upstream_connect_ms"))
    return ev


def reload_event(proxy, since, trigger, result="ok", timeout=5.0, extra=lambda e: True):
    return proxy.wait_event(lambda e: e.get("event") == "policy_reload"
                            and e.get("result") == result and e.get("trigger") == trigger
                            and extra(e), timeout, since)


def run_cli(args, timeout=30):
    cp = h.run([h.sightline_bin()] + list(args), timeout=timeout)
    return cp.returncode, cp.stdout.decode(errors="replace"), cp.stderr.decode(errors="replace")


def stop_check(t, proxy):
    """Check: the proxy is still running and exits 0 on SIGTERM."""
    with t.check("[%s] proxy alive at the end; SIGTERM exits 0" % proxy.name):
        rc = proxy.proc.poll()
        assert rc is None, "the proxy died (%s)" % (
            "signal %d" % -rc if rc < 0 else "exit code %d" % rc)
        rc = proxy.stop()
        assert rc == 0, "exit code %r" % rc


def v6_listener(port):
    return '[[listener]]\naddress = "[::1]:%d"\nmode = "explicit"\n' % port


def abort_after_certificate(proxy_port, target, server_name, reset=False):
    """CONNECT, send a ClientHello, read the proxy's whole first flight (its
    certificate included), then close without answering: a FIN, or a reset
    with reset=True. Returns the client address as the proxy logs it."""
    s, code, _, client = tunnel("127.0.0.1", proxy_port, target)
    try:
        assert code == 200, "CONNECT status %r" % code
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
        done = False
        while not done:
            try:
                tls.do_handshake()
                done = True  # the server's Finished arrived: we hold its certificate
            except ssl.SSLWantReadError:
                pass
            pending = outgoing.read()
            if done:
                break  # our Finished stays unsent
            if pending:
                s.sendall(pending)
            data = s.recv(65536)
            assert data, "the proxy closed during the handshake"
            incoming.write(data)
        if reset:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        s.close()
    return client


def policy_section(files, **kw):
    lines = ["[policy]", "files = %s" % tv(files)]
    lines += ["%s = %s" % (k, tv(v)) for k, v in kw.items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------

def main(t):
    pki = t.pki()
    origin = t.start_nginx(pki, certs=["valid-ec", "manynames"])
    ec4, many4 = origin.port("valid-ec"), origin.port("manynames")
    one_k = open(origin.files["/1k"], "rb").read()
    fp_ec = cert_file_sha256(pki.crt("valid-ec"))
    fp_many = cert_file_sha256(pki.crt("manynames"))
    ec_target = "127.0.0.1:%d" % ec4

    # destinations that must never be contacted
    port_sink = PendingListener("127.0.0.1")     # blocked by port
    dst_sink = PendingListener("127.0.0.2")      # blocked by dst CIDR

    # ---- the main policy: one file + one list file
    mdir = os.path.join(t.dir, "main-policy")
    os.makedirs(os.path.join(mdir, "lists"))
    main_list = os.path.join(mdir, "lists", "bypass.txt")
    list_text = ("# bypass list for 45_policy_test\n"
                 "#   commented.test appears only in this comment\n"
                 "listed.test\n"
                 "bücher.test    # an international name, written as it reads\n"
                 "\n"
                 "   *.star.test\t# indented, a tab before the comment\n"
                 "# disabled.test\n")
    write_file(main_list, list_text)
    list_names = 3
    main_rules = [
        [("name", "bypass-exact"), ("action", "bypass"),
         ("domains", ["origin.test", "MixedCase.Test."])],
        [("name", "bypass-suffix"), ("action", "bypass"),
         ("domains", [".b.origin.test", ".suf.test"])],
        [("name", "bypass-wildcard"), ("action", "bypass"), ("domains", ["*.wild.test"])],
        [("name", "bypass-list"), ("action", "bypass"), ("domains_file", "lists/bypass.txt")],
        [("name", "block-name"), ("action", "block"),
         ("domains", ["blocked.test", ".blocked-tree.test"])],
        [("name", "block-dst"), ("action", "block"), ("dst", ["127.0.0.2/32"])],
        [("name", "block-port"), ("action", "block"), ("ports", [port_sink.port])],
        [("name", "client-v4"), ("action", "block"), ("clients", ["127.0.0.0/8"]),
         ("domains", ["client.test"])],
        [("name", "client-v6"), ("action", "bypass"), ("clients", ["::1/128"]),
         ("domains", ["client.test"])],
    ]
    main_names = 2 + 2 + 1 + list_names + 2 + 1 + 1
    main_pol = os.path.join(mdir, "policy.toml")
    write_file(main_pol, policy_text(main_rules, auto_bypass=False))

    def ref(name):
        return rule_ref(main_pol, name)

    v6port = h.free_port("::1")
    proxy = t.start_proxy(pki, name="main",
                          extra=policy_section([main_pol]) + v6_listener(v6port))
    if not h.wait_port("::1", v6port, 10, proxy.proc):
        raise h.Fatal("proxy not listening on [::1]:%d" % v6port)

    with t.check("startup: policy_loaded names the file, rule and name counts", fatal=True):
        ev = proxy.wait_event(lambda e: e.get("event") == "policy_loaded", 5)
        assert ev is not None, "no policy_loaded line"
        assert ev.get("files") == [main_pol], "files %r" % ev.get("files")
        assert ev.get("rules") == len(main_rules) and ev.get("names") == main_names, \
            "rules %r names %r, expected %d / %d" % (ev.get("rules"), ev.get("names"),
                                                     len(main_rules), main_names)

    # ================= bypass by exact name and by suffix (curl, s_client)
    for label, name, port, fp, rule in (
            ("exact", "origin.test", ec4, fp_ec, "bypass-exact"),
            ("suffix apex", "b.origin.test", many4, fp_many, "bypass-suffix")):
        url = "https://%s:%d/1k" % (name, port)
        conn_to = ["--connect-to", "%s:%d:127.0.0.1:%d" % (name, port, port)]
        target = "127.0.0.1:%d" % port

        def line(since):
            ev = proxy.wait_event(lambda e: e.get("event") == "connection"
                                  and e.get("target") == target and e.get("sni") == name,
                                  10, since)
            assert ev is not None, "no connection line for %s with sni %s" % (target, name)
            return ev

        with t.check("[bypass %s] curl --cacert ORIGIN-CA https://%s/1k: exact body, log bypass"
                     % (label, name)):
            m = proxy.mark()
            cp = h.curl_via(proxy.port, url, pki.origin_ca, conn_to)
            assert cp.returncode == 0, "curl rc=%d: %s" % (cp.returncode, h.curl_err(cp))
            assert cp.stdout == one_k, "body differs (%d bytes)" % len(cp.stdout)
            ev = line(m)
            assert ev.get("action") == "bypass", "log action %r" % ev.get("action")
            assert ev.get("policy") == ref(rule), "log policy %r" % ev.get("policy")
            assert ev.get("codec") == "opaque", "codec %r" % ev.get("codec")
            assert not ev.get("auto_bypass"), "auto_bypass flag set"

        with t.check("[bypass %s] s_client: presented leaf is the origin's own certificate" % label):
            m = proxy.mark()
            rc, out, err, certs = h.s_client(proxy.port, target, servername=name,
                                             cafile=pki.origin_ca,
                                             extra=["-verify_hostname", name])
            assert rc == 0, "s_client rc=%d: %s" % (rc, (err.strip().splitlines() or ["?"])[-1])
            assert certs, "no certificate shown"
            assert pem_sha256(certs[0]) == fp, "leaf fingerprint differs from %s's cert file" % (
                "valid-ec" if port == ec4 else "manynames")
            code, text = h.verify_return_code(out)
            assert code == 0, "verify against the origin CA: %r %s" % (code, text)
            line(m)

        with t.check("[bypass %s] curl --cacert ENTERPRISE-ROOT fails (not intercepted)" % label):
            m = proxy.mark()
            cp = h.curl_via(proxy.port, url, pki.root, conn_to)
            assert cp.returncode == 60, "curl rc=%d (expected 60): %s" % (cp.returncode,
                                                                         h.curl_err(cp))
            assert cp.stdout == b"", "body received"
            ev = line(m)
            assert ev.get("action") == "bypass", "log action %r" % ev.get("action")

    with t.check("control: localhost (no rule) is intercepted, log 'default inspect'"):
        m = proxy.mark()
        res = probe(proxy.port, "localhost:%d" % ec4, "localhost", cafile=pki.root, path="/1k")
        assert res["status"] == 200 and res["body"] == one_k, "status %r" % res["status"]
        ev = expect_inspect(proxy, pki, res, fp_ec, m)
        assert ev.get("action") == "intercept", "action %r" % ev.get("action")
        assert "auto_bypass" not in ev, "auto_bypass in log line"

    # ================= block at CONNECT
    with t.check("[block CONNECT] by name: 403 naming rule and FILE:LINE, no DNS/connect"):
        # blocked.test does not resolve: anything but a 403 before resolution
        # would be a 502.
        expect_blocked_connect(proxy, proxy.port, "blocked.test:443", ref("block-name"))

    with t.check("[block CONNECT] by suffix, upper case and trailing dot in the CONNECT host"):
        expect_blocked_connect(proxy, proxy.port, "Deep.BLOCKED-tree.test.:443", ref("block-name"))
        expect_blocked_connect(proxy, proxy.port, "blocked-tree.test:8443", ref("block-name"))

    with t.check("[block CONNECT] by dst CIDR, IP-literal target: 403, destination not contacted"):
        expect_blocked_connect(proxy, proxy.port, "127.0.0.2:%d" % dst_sink.port, ref("block-dst"))
        assert dst_sink.connections() == 0, "the blocked destination got %d connection(s)" % \
            dst_sink.count

    with t.check("[block CONNECT] by port: 403, destination not contacted"):
        expect_blocked_connect(proxy, proxy.port, "localhost:%d" % port_sink.port,
                               ref("block-port"))
        assert port_sink.connections() == 0, "the blocked port got %d connection(s)" % \
            port_sink.count

    with t.check("[block CONNECT] curl sees the 403 and no body"):
        cp = h.curl_via(proxy.port, "https://blocked.test/1k", pki.root, ["-w", "%{http_connect}"])
        assert cp.returncode != 0, "curl succeeded"
        assert cp.stdout.strip() == b"403", "curl http_connect %r (%s)" % (cp.stdout,
                                                                          h.curl_err(cp))

    # ================= name matching by SNI (CONNECT to an IP literal)
    cases = [
        ("MixedCase.Test. in the file, sni mixedcase.test", "mixedcase.test", "bypass-exact"),
        ("wildcard: one label", "a.wild.test", "bypass-wildcard"),
        ("wildcard: not the apex", "wild.test", None),
        ("wildcard: not two labels", "a.b.wild.test", None),
        ("suffix: apex", "suf.test", "bypass-suffix"),
        ("suffix: one label", "x.suf.test", "bypass-suffix"),
        ("suffix: two labels", "x.y.suf.test", "bypass-suffix"),
        ("suffix: label boundary (notsuf.test)", "notsuf.test", None),
        ("exact: not a subdomain", "www.origin.test", None),
    ]
    for label, sni, rule in cases:
        with t.check("[names] %s -> %s" % (label, rule or "default inspect")):
            m = proxy.mark()
            res = probe(proxy.port, ec_target, sni)
            if rule:
                expect_bypass(proxy, res, fp_ec, ref(rule), m)
            else:
                expect_inspect(proxy, pki, res, fp_ec, m)

    for sni, rule in (("X.Y.SUF.Test.", "bypass-suffix"), ("A.Wild.TEST", "bypass-wildcard")):
        with t.check("[names] s_client SNI %r (case, trailing dot) -> %s" % (sni, rule)):
            m = proxy.mark()
            rc, out, err, certs = h.s_client(proxy.port, ec_target, servername=sni,
                                             verify_error=False)
            assert certs, "no certificate (rc %d): %s" % (rc, err.strip()[-200:])
            assert pem_sha256(certs[0]) == fp_ec, "not the origin's own leaf (issuer %s)" % (
                h.cert_info(certs[0])["issuer"])
            ev = proxy.wait_event(lambda e: e.get("event") == "connection"
                                  and e.get("target") == ec_target
                                  and e.get("sni", "").lower() == sni.lower().rstrip("."), 10, m)
            assert ev is not None, "no connection line"
            assert ev.get("action") == "bypass" and ev.get("policy") == ref(rule), \
                "log action %r policy %r" % (ev.get("action"), ev.get("policy"))

    # ================= domain-list file
    for label, sni, rule in (
            ("IDN written in Unicode, SNI xn--bcher-kva.test", "xn--bcher-kva.test", "bypass-list"),
            ("plain entry", "listed.test", "bypass-list"),
            ("indented wildcard entry with a comment", "a.star.test", "bypass-list"),
            ("commented-out entry", "disabled.test", None),
            ("name only in a comment", "commented.test", None)):
        with t.check("[list] %s -> %s" % (label, rule or "default inspect")):
            m = proxy.mark()
            res = probe(proxy.port, ec_target, sni)
            if rule:
                expect_bypass(proxy, res, fp_ec, ref(rule), m)
            else:
                expect_inspect(proxy, pki, res, fp_ec, m)

    # ================= client CIDR rules: IPv4 vs IPv6 clients
    with t.check("[clients] IPv4 client, CONNECT client.test: 403 at CONNECT"):
        expect_blocked_connect(proxy, proxy.port, "client.test:443", ref("client-v4"))

    with t.check("[clients] IPv6 client ([::1] listener), SNI client.test: bypassed by client-v6"):
        m = proxy.mark()
        res = probe(v6port, ec_target, "client.test", proxy_host="::1")
        assert res["client"].startswith("[::1]"), res["client"]
        expect_bypass(proxy, res, fp_ec, ref("client-v6"), m)

    with t.check("[clients] IPv6 client, unrelated name: default inspect"):
        m = proxy.mark()
        res = probe(v6port, "localhost:%d" % ec4, "localhost", proxy_host="::1",
                    cafile=pki.root, path="/1k")
        assert res["status"] == 200 and res["body"] == one_k, "status %r" % res["status"]
        expect_inspect(proxy, pki, res, fp_ec, m)

    stop_check(t, proxy)

    # ================= block by SNI only. Each case on a fresh proxy with
    # the same policy, stopped at the end of the case, so that a crash on this
    # path is reported by the case that caused it and takes nothing else down.
    @contextlib.contextmanager
    def fresh_proxy(name):
        sp = t.start_proxy(pki, name=name, extra=policy_section([main_pol]))
        try:
            yield sp
        except Exception as e:
            try:
                rc = sp.proc.wait(2)
            except subprocess.TimeoutExpired:
                rc = None
            if rc is not None:
                raise AssertionError("the proxy died (%s); the client saw: %s: %s" % (
                    "signal %d" % -rc if rc < 0 else "exit code %d" % rc,
                    type(e).__name__, e)) from e
            raise
        else:
            rc = sp.stop()
            assert rc == 0, "proxy exit code %r after SIGTERM" % rc
        finally:
            sp.kill()

    for i, sni in enumerate(("blocked.test", "x.blocked-tree.test")):
        with t.check("[block SNI] CONNECT %s, SNI %s: 403 page over a cert naming only %s"
                     % (ec_target, sni, sni)), fresh_proxy("sni-block-%d" % i) as sp:
            m = sp.mark()
            res = probe(sp.port, ec_target, sni, cafile=pki.root, path="/1k")
            want = "sightline: blocked by policy: %s" % ref("block-name")
            assert res["status"] == 403, "status %r body %r" % (res["status"], res["body"][:200])
            assert res["body"].decode(errors="replace").strip() == want, "body %r" % res["body"]
            assert one_k not in res["body"], "the origin's content was served"
            leaf = h.cert_info(res["leaf"])
            assert leaf["sans"] == frozenset(["DNS:" + sni]), "SANs %s" % sorted(leaf["sans"])
            assert leaf["issuer"] == pki.ca_subject, "issuer %r" % leaf["issuer"]
            ev = conn_line(sp, res["client"], m)
            assert ev.get("action") == "refuse", "log action %r" % ev.get("action")
            assert ev.get("policy") == ref("block-name"), "log policy %r" % ev.get("policy")
            assert ev.get("error_page") is True, "no error_page flag"

    with t.check("[clients] IPv4 client, SNI client.test: blocked by client-v4 (error page)"), \
            fresh_proxy("sni-block-client") as sp:
        m = sp.mark()
        res = probe(sp.port, ec_target, "client.test", cafile=pki.root, path="/")
        assert res["status"] == 403, "status %r" % res["status"]
        assert ref("client-v4") in res["body"].decode(errors="replace"), "body %r" % res["body"]
        ev = conn_line(sp, res["client"], m)
        assert ev.get("policy") == ref("client-v4"), "log policy %r" % ev.get("policy")

    # ================= reload under continuous traffic
    rdir = os.path.join(t.dir, "reload-policy")
    os.makedirs(os.path.join(rdir, "lists"))
    r_pol = os.path.join(rdir, "policy.toml")
    r_list = os.path.join(rdir, "lists", "names.txt")
    write_file(r_list, "listed-0.test\n")

    def r_rules(unrelated, first=None):
        rules = [first] if first else []
        rules += [[("name", "unrelated-%d" % i), ("action", "block"),
                   ("domains", ["unrelated-%d.test" % i])] for i in range(unrelated)]
        rules.append([("name", "listed"), ("action", "bypass"),
                      ("domains_file", "lists/names.txt")])
        return rules

    def r_text(unrelated, first=None):
        # auto-bypass off: a client failing verification here must not turn
        # into a bypass that later checks would misread
        return policy_text(r_rules(unrelated, first), auto_bypass=False)

    def r_ref(text, name):
        return "rule '%s' (%s:%d)" % (name, r_pol, rule_line(text, name))

    write_file(r_pol, r_text(0))
    rp = t.start_proxy(pki, name="reload", workers=2, extra=policy_section([r_pol]))
    lh_target = "localhost:%d" % ec4

    stats = {"ok": 0, "fail": 0, "errors": []}
    lock = threading.Lock()
    stop = threading.Event()
    per_thread_cap = 300

    def traffic():
        for _ in range(per_thread_cap):
            if stop.is_set():
                return
            try:
                st, body = h.https_get_via_proxy(rp.port, lh_target, "/1k", pki.root, timeout=15)
                good = st == 200 and body == one_k
                err = None if good else "status %r, %d body bytes" % (st, len(body))
            except Exception as e:  # noqa: BLE001 - every failure counts
                good, err = False, "%s: %s" % (type(e).__name__, e)
            with lock:
                if good:
                    stats["ok"] += 1
                else:
                    stats["fail"] += 1
                    if len(stats["errors"]) < 5:
                        stats["errors"].append(err)

    threads = [threading.Thread(target=traffic, daemon=True) for _ in range(4)]
    inflight = None

    def inflight_get():
        inflight.send(("GET /1k HTTP/1.1\r\nHost: %s\r\n\r\n" % lh_target).encode())
        head = inflight.read_head()
        _, body, _ = inflight.read_body(head, "GET")
        return head.status, body

    with t.check("[reload] 3 file rewrites (in place, by rename), a list change and SIGHUP "
                 "during traffic: each logged ok"):
        try:
            # a long-lived intercepted connection, open across all the reloads
            inflight = h.tls_tunnel(rp.port, lh_target, pki.root)
            inflight.sock.settimeout(15)
            assert inflight_get() == (200, one_k), "in-flight connection: first request failed"
            for th in threads:
                th.start()
            deadline = time.monotonic() + 10
            while stats["ok"] + stats["fail"] < 8 and time.monotonic() < deadline:
                time.sleep(0.02)
            before = stats["ok"] + stats["fail"]
            seen = []

            def reloads(m):
                return [e for e in rp.events[m:] if e.get("event") == "policy_reload"]

            for i, atomic in ((1, False), (2, True), (3, False)):
                m = rp.mark()
                write_file(r_pol, r_text(i), atomic=atomic)
                ev = reload_event(rp, m, "file change",
                                  extra=lambda e, i=i: e.get("rules") == i + 1)
                assert ev is not None, "rewrite %d (%s): no policy_reload ok/'file change' " \
                    "with %d rules; reload lines: %r" % (
                        i, "rename" if atomic else "in place", i + 1, reloads(m))
                seen.append(ev)
            m = rp.mark()
            write_file(r_list, "listed-0.test\nlisted-1.test\n", atomic=True)
            # names: 3 unrelated rules + 2 list entries
            ev = reload_event(rp, m, "file change", extra=lambda e: e.get("names") == 5)
            assert ev is not None, "list file change: no policy_reload ok with 5 names: %r" % \
                reloads(m)
            seen.append(ev)
            m = rp.mark()
            rp.proc.send_signal(signal.SIGHUP)
            ev = reload_event(rp, m, "SIGHUP")
            assert ev is not None, "SIGHUP: no policy_reload ok/'SIGHUP' line: %r" % reloads(m)
            seen.append(ev)
            during = stats["ok"] + stats["fail"] - before
            alive = sum(th.is_alive() for th in threads)
        finally:
            stop.set()
            for th in threads:
                if th.is_alive() or th.ident is not None:
                    th.join(30)
        assert during > 0, "no request completed while the policy was reloading"
        assert alive == len(threads), "traffic ended before the reloads did (cap reached)"
        gens = [e.get("generation") for e in seen]
        assert gens == sorted(gens) and len(set(gens)) == len(gens), "generations %r" % gens
        t.note("%d requests, %d during the reloads" % (stats["ok"] + stats["fail"], during))

    with t.check("[reload] every request during the reloads succeeded"):
        assert not any(th.is_alive() for th in threads), "traffic threads still running"
        assert stats["fail"] == 0, "%d of %d requests failed: %s" % (
            stats["fail"], stats["ok"] + stats["fail"], stats["errors"])
        assert stats["ok"] >= 8, "only %d requests" % stats["ok"]

    R_LIST = "listed-0.test\nlisted-1.test\n"

    def establish(text, rules, names=None, list_text=R_LIST):
        """Precondition for a check: write the policy (and list) and make sure
        the proxy runs it. A missed file change is made up for with SIGHUP
        (the checks that test file changes do not use this) and noted."""
        m = rp.mark()
        write_file(r_list, list_text)
        write_file(r_pol, text)
        names = names if names is not None else rules - 1 + len(list_text.split())

        def want(e):
            return e.get("rules") == rules and e.get("names") == names

        if reload_event(rp, m, "file change", timeout=3, extra=want) is not None:
            return
        m = rp.mark()
        rp.proc.send_signal(signal.SIGHUP)
        assert reload_event(rp, m, "SIGHUP", extra=want) is not None, \
            "setting up the policy failed, even with SIGHUP: %r" % [
                e for e in rp.events[m:] if e.get("event") == "policy_reload"]
        t.note("setup: file change missed, reloaded by SIGHUP")

    with t.check("[reload] a change saved right after a reload line is picked up (20 saves)"):
        establish(r_text(3), 4)
        # An editor saving twice in a row: each save is made as soon as the
        # previous one's policy_reload line is out.
        for k in range(1, 21):
            atomic = k % 2 == 1
            m = rp.mark()
            write_file(r_pol, r_text(3 + k), atomic=atomic)
            ev = reload_event(rp, m, "file change", timeout=3,
                              extra=lambda e, k=k: e.get("rules") == 4 + k)
            assert ev is not None, "save %d (%s) was never reloaded: no policy_reload within " \
                "3 s; reload lines since: %r" % (k, "rename" if atomic else "in place", [
                    e for e in rp.events[m:] if e.get("event") == "policy_reload"])

    first = [("name", "bypass-localhost"), ("action", "bypass"), ("domains", ["localhost"])]
    bypass_text = r_text(3, first)
    with t.check("[reload] new rule bypassing localhost: new connections bypassed"):
        establish(r_text(3), 4)
        m = rp.mark()
        write_file(r_pol, bypass_text, atomic=True)
        ev = reload_event(rp, m, "file change", extra=lambda e: e.get("rules") == 5)
        assert ev is not None, "no policy_reload ok/'file change' line"
        deadline, tries = time.monotonic() + 5, 0
        while True:
            tries += 1
            mm = rp.mark()
            res = probe(rp.port, lh_target, "localhost")
            if res["fp"] == fp_ec or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        expect_bypass(rp, res, fp_ec, r_ref(bypass_text, "bypass-localhost"), mm)
        t.note("bypassed on attempt %d after the reload line" % tries)

    with t.check("[reload] the in-flight intercepted connection keeps its decision"):
        if inflight is None:
            raise h.Skip("no in-flight connection")
        st, body = inflight_get()
        assert (st, body == one_k) == (200, True), "status %r, %d bytes" % (st, len(body))
        issuer = h.cert_info(ssl.DER_cert_to_PEM_cert(
            inflight.sock.getpeercert(binary_form=True)))["issuer"]
        assert issuer == pki.ca_subject, "issuer %r" % issuer
        inflight.sock.close()

    # ================= bad policy / bad list rejected, old decision stays
    block_lh = [("name", "block-localhost"), ("action", "block"), ("domains", ["localhost"])]
    good_text = r_text(3, block_lh)
    block_ref = r_ref(good_text, "block-localhost")
    with t.check("[reload] switch to blocking localhost: 403 for new CONNECTs; an in-flight "
                 "bypassed connection keeps working"):
        establish(bypass_text, 5)
        bp = probe(rp.port, lh_target, "localhost", cafile=pki.origin_ca)  # bypassed, verified
        assert bp["fp"] == fp_ec, "not bypassed"
        sock, code, head, _ = tunnel("127.0.0.1", rp.port, lh_target)
        ss = h.client_context(pki.origin_ca).wrap_socket(sock, server_hostname="localhost")
        try:
            w = h.Wire(ss)
            w.send(("GET /1k HTTP/1.1\r\nHost: %s\r\n\r\n" % lh_target).encode())
            hd = w.read_head()
            assert hd.status == 200 and w.read_body(hd, "GET")[1] == one_k, "bypassed GET failed"
            establish(good_text, 5)
            expect_blocked_connect(rp, rp.port, lh_target, block_ref)
            w.send(("GET /1k HTTP/1.1\r\nHost: %s\r\n\r\n" % lh_target).encode())
            hd = w.read_head()
            assert hd.status == 200 and w.read_body(hd, "GET")[1] == one_k, \
                "in-flight bypassed connection: status %r" % hd.status
        finally:
            ss.close()

    bad_cases = [
        ("syntax error (unterminated string)", r_pol,
         good_text + '\n[[rule]]\nname = "broken\naction = "bypass"\n',
         len(good_text.splitlines()) + 3),
        ("bad value (action = \"allow\")", r_pol,
         good_text + '\n[[rule]]\nname = "bad-action"\naction = "allow"\n',
         len(good_text.splitlines()) + 4),
        ("bad entry in the list file", r_list,
         "listed-0.test\n# a comment\nbad..name.test\n", 3),
    ]
    for label, path, text, line in bad_cases:
        with t.check("[reload] %s: rejected with %s:%d, old policy stays"
                     % (label, os.path.basename(path), line)):
            establish(good_text, 5)
            expect_blocked_connect(rp, rp.port, lh_target, block_ref)
            m = rp.mark()
            write_file(path, text)
            ev = reload_event(rp, m, "file change", result="error")
            assert ev is not None, "no policy_reload error line; lines: %r" % [
                e for e in rp.events[m:] if e.get("event") == "policy_reload"]
            msg = ev.get("msg", "")
            assert re.search(r"%s:%d\b" % (re.escape(path), line), msg), \
                "msg %r does not name %s:%d" % (msg, path, line)
            expect_blocked_connect(rp, rp.port, lh_target, block_ref)

    with t.check("[reload] SIGHUP with a bad file: error, old policy stays"):
        establish(good_text, 5)
        write_file(r_pol, good_text + "\n[[rule]]\nname = \"no-action\"\n")
        m = rp.mark()
        rp.proc.send_signal(signal.SIGHUP)
        ev = reload_event(rp, m, "SIGHUP", result="error")
        assert ev is not None, "no policy_reload error/'SIGHUP' line"
        want = "%s:%d" % (r_pol, len(good_text.splitlines()) + 2)
        assert want in ev.get("msg", ""), "msg %r does not name %s" % (ev.get("msg"), want)
        expect_blocked_connect(rp, rp.port, lh_target, block_ref)

    stop_check(t, rp)

    # ================= startup with a bad policy
    bad_pol = os.path.join(t.dir, "bad-start.toml")
    bad_text = policy_text([[("name", "ok"), ("action", "bypass"), ("domains", ["a.test"])],
                            [("name", "bad"), ("action", "bypass"), ("ports", [70000])]])
    write_file(bad_pol, bad_text)
    bad_line = [i for i, l in enumerate(bad_text.splitlines(), 1) if l.startswith("ports")][0]
    bad_list_pol = os.path.join(t.dir, "bad-list-start.toml")
    write_file(os.path.join(t.dir, "bad-start.txt"), "fine.test\n*.*.twice.test\n")
    write_file(bad_list_pol, policy_text([[("name", "l"), ("action", "bypass"),
                                           ("domains_file", "bad-start.txt")]]))
    for label, cfg_extra, args, want in (
            ("[policy] files", policy_section([bad_pol]), [], "%s:%d" % (bad_pol, bad_line)),
            ("--policy", "", ["--policy", bad_pol], "%s:%d" % (bad_pol, bad_line)),
            ("bad list file", policy_section([bad_list_pol]), [],
             "%s:2" % os.path.join(t.dir, "bad-start.txt"))):
        with t.check("[startup] bad policy via %s: non-zero exit naming %s"
                     % (label, os.path.basename(want))):
            port = h.free_port()
            rc, text, _ = h.run_sightline_expect_exit(
                t, h.make_config(pki, listen_port=port, extra=cfg_extra), args=args,
                name="badstart-%d" % port, port=port)
            assert rc is not None, "the proxy started (or kept running)"
            assert rc != 0, "exit code 0"
            assert re.search(re.escape(want) + r"\b", text), "output does not name %s:\n%s" % (
                want, text[-1000:])

    # ================= auto-bypass for pinned clients
    adir = os.path.join(t.dir, "ab-policy")
    os.makedirs(adir)
    ab_pol = os.path.join(adir, "policy.toml")
    write_file(ab_pol, policy_text([[("name", "never-auto"), ("action", "inspect"),
                                     ("domains", ["origin.test"]), ("auto_bypass", False)]]))
    blockall = os.path.join(adir, "block-all.toml")
    write_file(blockall, policy_text([], default="block"))
    ab6 = h.free_port("::1")
    ab = t.start_proxy(pki, name="ab", args=["--policy", ab_pol],
                       extra=policy_section([blockall]) + v6_listener(ab6))
    if not h.wait_port("::1", ab6, 10, ab.proc):
        raise h.Fatal("ab proxy not listening on [::1]:%d" % ab6)
    lh_url = "https://localhost:%d/1k" % ec4

    with t.check("[auto-bypass] --policy replaces [policy] files"):
        ev = ab.wait_event(lambda e: e.get("event") == "policy_loaded", 5)
        assert ev is not None and ev.get("files") == [ab_pol], "policy_loaded %r" % ev

    def failures_line(proxy, since, what):
        """The connection line of one counted failure (no auto_bypass line
        may follow it)."""
        ev = proxy.conn_event(lh_target, since=since)
        assert ev is not None, "%s: no connection line" % what
        assert ev.get("action") == "intercept", "%s: connection line %r" % (what, ev)
        return ev

    ab_ok = False
    with t.check("[auto-bypass] one and two rejections (alert, close after the certificate) "
                 "do not bypass; counted on the connection line"):
        m = ab.mark()
        cp = h.curl_via(ab.port, lh_url, pki.origin_ca)
        assert cp.returncode == 60, "curl rc=%d (expected 60): %s" % (cp.returncode, h.curl_err(cp))
        ev = failures_line(ab, m, "first")
        assert ev.get("auto_bypass_failures") == 1 and ev.get("client_alert") == "unknown_ca", \
            "first: line %r" % ev
        m2 = ab.mark()
        abort_after_certificate(ab.port, lh_target, "localhost")
        ev = failures_line(ab, m2, "second")
        assert ev.get("auto_bypass_failures") == 2 and "client_alert" not in ev, "second: line %r" % ev
        # Still intercepted: a client trusting the enterprise root gets the forged certificate.
        m3 = ab.mark()
        res = probe(ab.port, lh_target, "localhost", cafile=pki.root, path="/1k")
        assert res["status"] == 200 and res["body"] == one_k, "status %r" % res["status"]
        ev = expect_inspect(ab, pki, res, fp_ec, m3)
        assert "auto_bypass" not in ev, "auto_bypass in log line"
        abl = [e for e in ab.events[m:] if e.get("event") == "auto_bypass"]
        assert not abl, "auto_bypass logged after %d failures: %r" % (2, abl)

    with t.check("[auto-bypass] the third (a reset after the certificate) bypasses the pair; "
                 "auto_bypass logged with the alert"):
        m = ab.mark()
        abort_after_certificate(ab.port, lh_target, "localhost", reset=True)
        ev = ab.wait_event(lambda e: e.get("event") == "auto_bypass", 10, m)
        assert ev is not None, "no auto_bypass line"
        assert ev.get("client") == "127.0.0.1" and ev.get("sni") == "localhost", "line %r" % ev
        assert ev.get("failures") == 3 and ev.get("alert") == "none", "line %r" % ev
        assert "reset" in ev.get("reason", ""), "reason %r" % ev.get("reason")
        ev = failures_line(ab, m, "third")
        assert ev.get("auto_bypass_failures") == 3, "third: line %r" % ev
        ab_ok = True

    with t.check("[auto-bypass] the next identical connection is bypassed: body ok, logged"):
        if not ab_ok:
            raise h.Skip("no auto-bypass entry")
        m = ab.mark()
        cp = h.curl_via(ab.port, lh_url, pki.origin_ca)
        assert cp.returncode == 0, "curl rc=%d: %s" % (cp.returncode, h.curl_err(cp))
        assert cp.stdout == one_k, "body differs"
        ev = ab.conn_event(lh_target, since=m)
        assert ev is not None, "no connection line"
        assert ev.get("action") == "bypass" and ev.get("auto_bypass") is True, \
            "action %r auto_bypass %r" % (ev.get("action"), ev.get("auto_bypass"))
        assert ev.get("policy") == "default inspect", "policy %r" % ev.get("policy")

    with t.check("[auto-bypass] keyed by client address: an IPv6 client is still intercepted"):
        m = ab.mark()
        res = probe(ab6, lh_target, "localhost", proxy_host="::1", cafile=pki.root, path="/1k")
        assert res["status"] == 200 and res["body"] == one_k, "status %r" % res["status"]
        ev = expect_inspect(ab, pki, res, fp_ec, m)
        assert "auto_bypass" not in ev, "auto_bypass in log line"

    with t.check("[auto-bypass] rule with auto_bypass = false: still fails, no auto_bypass line"):
        conn_to = ["--connect-to", "origin.test:%d:127.0.0.1:%d" % (ec4, ec4)]
        for attempt in (1, 2, 3, 4):
            m = ab.mark()
            cp = h.curl_via(ab.port, "https://origin.test:%d/1k" % ec4, pki.origin_ca, conn_to)
            assert cp.returncode == 60, "attempt %d: curl rc=%d: %s" % (attempt, cp.returncode,
                                                                        h.curl_err(cp))
            ev = ab.wait_event(lambda e: e.get("event") == "connection"
                               and e.get("sni") == "origin.test", 10, m)
            assert ev is not None, "no connection line"
            assert ev.get("action") == "intercept", "attempt %d: action %r" % (attempt,
                                                                              ev.get("action"))
            assert ev.get("policy") == rule_ref(ab_pol, "never-auto"), "policy %r" % ev.get("policy")
            abl = [e for e in ab.events[m:] if e.get("event") == "auto_bypass"]
            assert not abl, "auto_bypass logged: %r" % abl

    stop_check(t, ab)

    noab_pol = os.path.join(adir, "no-auto.toml")
    write_file(noab_pol, policy_text([], auto_bypass=False))
    noab = t.start_proxy(pki, name="noab", extra=policy_section([noab_pol]))
    with t.check("[auto-bypass] [policy] auto_bypass = false: the fourth connection still fails"):
        for attempt in (1, 2, 3, 4):
            m = noab.mark()
            cp = h.curl_via(noab.port, lh_url, pki.origin_ca)
            assert cp.returncode == 60, "attempt %d: curl rc=%d: %s" % (attempt, cp.returncode,
                                                                        h.curl_err(cp))
            ev = noab.conn_event(lh_target, since=m)
            assert ev is not None and ev.get("action") == "intercept", "line %r" % ev
            abl = [e for e in noab.events[m:] if e.get("event") == "auto_bypass"]
            assert not abl, "auto_bypass logged: %r" % abl

    stop_check(t, noab)

    ttl_pol = os.path.join(adir, "ttl.toml")
    write_file(ttl_pol, policy_text([]))
    ttl = t.start_proxy(pki, name="ttl",
                        extra=policy_section([ttl_pol], auto_bypass_ttl="1s",
                                             auto_bypass_threshold=2, auto_bypass_window="2s"))

    def reject(what):
        cp = h.curl_via(ttl.port, lh_url, pki.origin_ca)
        assert cp.returncode == 60, "%s: curl rc=%d: %s" % (what, cp.returncode, h.curl_err(cp))

    with t.check("[auto-bypass] auto_bypass_window = \"2s\": failures further apart do not add up"):
        m = ttl.mark()
        reject("first")
        time.sleep(2.5)
        m2 = ttl.mark()
        reject("second")
        ev = ttl.conn_event(lh_target, since=m2)
        assert ev is not None and ev.get("auto_bypass_failures") == 1, "second: line %r" % ev
        abl = [e for e in ttl.events[m:] if e.get("event") == "auto_bypass"]
        assert not abl, "auto_bypass logged: %r" % abl

    with t.check("[auto-bypass] auto_bypass_threshold = 2, auto_bypass_ttl = \"1s\": "
                 "bypassed at the second failure, expires, is learned again"):
        m = ttl.mark()
        reject("threshold")  # the second within the window (the one above)
        first = ttl.wait_event(lambda e: e.get("event") == "auto_bypass", 10, m)
        assert first is not None, "no auto_bypass line"
        assert first.get("failures") == 2 and first.get("alert") == "unknown_ca", "line %r" % first
        t0 = time.monotonic()
        deadline, bypassed, failed_at = t0 + 10, 0, None
        while time.monotonic() < deadline:
            cp = h.curl_via(ttl.port, lh_url, pki.origin_ca)
            if cp.returncode == 0:
                bypassed += 1
                time.sleep(0.1)
                continue
            assert cp.returncode == 60, "curl rc=%d: %s" % (cp.returncode, h.curl_err(cp))
            failed_at = time.monotonic() - t0
            break
        assert failed_at is not None, "still bypassed 10 s after a 1 s TTL"
        # That failure counts 1 toward the threshold again: not yet bypassed.
        abl = [e for e in ttl.events[ttl.events.index(first) + 1:] if e.get("event") == "auto_bypass"]
        assert not abl, "learned again after one failure: %r" % abl
        reject("again")
        again = ttl.wait_event(lambda e: e.get("event") == "auto_bypass", 10,
                               ttl.events.index(first) + 1)
        assert again is not None, "the expired pair was not learned again"
        t.note("intercepted again after %.1fs, %d bypassed connections before" % (failed_at,
                                                                                  bypassed))

    stop_check(t, ttl)

    # ================= CLI: policy check / explain
    with t.check("[cli] policy check: good files -> exit 0, 'FILE: ok, N rules, M names, "
                 "default ACTION'"):
        rc, out, err = run_cli(["policy", "check", main_pol, blockall])
        assert rc == 0, "rc %d: %s" % (rc, err)
        want = ["%s: ok, %d rules, %d names, default inspect" % (main_pol, len(main_rules),
                                                                  main_names),
                "%s: ok, 0 rules, 0 names, default block" % blockall]
        assert out.splitlines() == want, "output %r, expected %r" % (out, want)

    with t.check("[cli] policy check: a bad file -> non-zero exit naming FILE:LINE"):
        rc, out, err = run_cli(["policy", "check", main_pol, bad_pol])
        assert rc != 0, "exit code 0"
        assert re.search(re.escape("%s:%d" % (bad_pol, bad_line)) + r"\b", out + err), \
            "no %s:%d in %r" % (bad_pol, bad_line, out + err)
        assert ("%s: ok" % main_pol) in out, "the good file is not reported ok: %r" % out
        rc, out, err = run_cli(["policy", "check", bad_list_pol])
        assert rc != 0 and re.search(r"bad-start\.txt:2\b", out + err), "rc %d: %r" % (rc,
                                                                                      out + err)

    def explain_want(rule):
        if rule is None:
            return "inspect  default (no rule matched)"
        with open(main_pol) as f:
            text = f.read()
        action = [dict(r)["action"] for r in main_rules if dict(r)["name"] == rule][0]
        return "%s  rule '%s' at %s:%d" % (action, rule, main_pol, rule_line(text, rule))

    explains = [
        (["--sni", "origin.test"], "bypass-exact"),
        (["--sni", "ORIGIN.Test."], "bypass-exact"),
        (["--sni", "a.wild.test"], "bypass-wildcard"),
        (["--sni", "a.b.wild.test"], None),
        (["--sni", "wild.test"], None),
        (["--sni", "suf.test"], "bypass-suffix"),
        (["--sni", "x.y.suf.test"], "bypass-suffix"),
        (["--sni", "notsuf.test"], None),
        (["--sni", "bücher.test"], "bypass-list"),
        (["--sni", "xn--bcher-kva.test"], "bypass-list"),
        (["--sni", "client.test", "--client", "::1"], "client-v6"),
        (["--sni", "client.test", "--client", "127.1.2.3"], "client-v4"),
        (["--sni", "client.test", "--client", "192.0.2.1"], None),
        (["--sni", "client.test"], None),
        (["--sni", "any.test", "--port", str(port_sink.port)], "block-port"),
        (["--sni", "any.test", "--port", "443"], None),
        (["--sni", "any.test", "--dst", "127.0.0.2"], "block-dst"),
        (["--sni", "any.test", "--dst", "127.0.0.3"], None),
    ]
    for args, rule in explains:
        with t.check("[cli] policy explain %s -> %s" % (" ".join(args), rule or "default")):
            rc, out, err = run_cli(["policy", "explain", "--policy", main_pol] + args)
            assert rc == 0, "rc %d: %s" % (rc, err.strip())
            assert out.strip() == explain_want(rule), "output %r, expected %r" % (
                out.strip(), explain_want(rule))

    with t.check("[cli] policy explain with a bad file: non-zero exit naming FILE:LINE"):
        rc, out, err = run_cli(["policy", "explain", "--policy", bad_pol, "--sni", "a.test"])
        assert rc != 0, "exit code 0: %r" % out
        assert ("%s:%d" % (bad_pol, bad_line)) in out + err, "output %r" % (out + err)


if __name__ == "__main__":
    h.run_test("45_policy", main)
