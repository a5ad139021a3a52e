#!/usr/bin/env python3
"""Layer 85: transparent interception (redirect and tproxy listeners).

Three network namespaces of the test's own, joined by veth pairs, every
address from 198.51.100.0/24 and 2001:db8::/32 (documentation ranges;
nothing leaves the namespaces):

    client  eth0 198.51.100.2/30  2001:db8:1::2/64   default via the gateway
      |
    gw      veth-c 198.51.100.1/30  2001:db8:1::1/64   forwarding on,
            veth-o 198.51.100.5/30  2001:db8:2::1/64   sightline, nftables
      |
    origin  eth0 198.51.100.6/30  2001:db8:2::6/64   nginx (443/8443 TLS, 80),
                                                     echo (7007), banner (2525)

The client never knows about the proxy: it talks to 198.51.100.6 and
2001:db8:2::6, and the gateway diverts the TCP connections to sightline.

  redirect   nftables `redirect to :PORT` (nat prerouting) toward a
             mode = "redirect" listener (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST):
             HTTPS intercepted (enterprise-CA leaf, exact body, log line with
             the original destination) over IPv4 and IPv6, and with no SNI;
             a bypassed name (the origin's own certificate); a blocked name
             (TLS alert); a client-speaks-first protocol spliced byte-exact
             (v4 and v6); a server-speaks-first banner delivered to a silent
             client after [timeouts] first_byte; plain HTTP on port 80
             through the HTTP/1.1 codec (exchange line); loop protection (a
             connection whose original destination is the listener itself);
             `--transparent ADDR:PORT` replacing the config's listeners.
  tproxy     nftables `tproxy to :PORT` + fwmark policy routing toward a
             mode = "tproxy" listener (IP_TRANSPARENT; the destination is
             the accepted socket's local address): HTTPS intercepted over
             IPv4 and IPv6; spoof_source = true: the origin sees the
             client's own address. Where the kernel lacks TPROXY (or the
             socket match), those checks are SKIPped with the exact error.

Everything (namespaces, and with them the veths, nft tables, routes and
rules; nginx, sightline, the Python servers) is removed in all paths. The
whole layer is SKIPped only when network namespaces cannot be created.
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

CLIENT4, GW_C4, GW_O4, ORIGIN4 = "198.51.100.2", "198.51.100.1", "198.51.100.5", "198.51.100.6"
CLIENT6, GW_C6, GW_O6, ORIGIN6 = "2001:db8:1::2", "2001:db8:1::1", "2001:db8:2::1", "2001:db8:2::6"
NAME = "origin.test"
BYPASS_NAME = "bypass.origin.test"
BLOCK_NAME = "blocked.origin.test"
ECHO_PORT, BANNER_PORT = 7007, 2525
BANNER = b"220 origin.test ESMTP sightline-e2e\r\n"
FIRST_BYTE_S = 1.0

CHECKS = [
    "topology: the client reaches the origin directly (routed through gw, no proxy)",
    "[redirect] HTTPS over IPv4 intercepted: enterprise-CA leaf, exact body, log names the original destination",
    "[redirect] HTTPS over IPv6 intercepted: enterprise-CA leaf, exact body, log names the original destination",
    "[redirect] curl over IPv4 and IPv6: exact body through the enterprise root",
    "[redirect] TLS without SNI (IP-literal URL) intercepted toward the original destination",
    "[redirect] bypassed name: the client gets the origin's own certificate",
    "[redirect] blocked name: TLS access_denied alert, no request reaches the origin",
    "[redirect] client-speaks-first protocol spliced byte-exact (IPv4)",
    "[redirect] client-speaks-first protocol spliced byte-exact (IPv6)",
    "[redirect] server-speaks-first banner reaches a silent client after first_byte",
    "[redirect] plain HTTP on port 80 relayed through the HTTP/1.1 codec (IPv4 and IPv6)",
    "[redirect] loop protection: original destination = the listener itself (IPv4 and IPv6)",
    "[redirect] --transparent ADDR:PORT replaces the config's listeners",
    "[tproxy] HTTPS over IPv4 intercepted via TPROXY: enterprise-CA leaf, exact body",
    "[tproxy] HTTPS over IPv6 intercepted via TPROXY: enterprise-CA leaf, exact body",
    "[tproxy] spoof_source = true: the origin sees the client's own address",
    "[redirect] origin connection reuse: a parked origin connection serves the next HTTPS client "
    "of that destination; plain HTTP to it is connected late and relayed",
]


# --------------------------------------------------------------------------
# helpers

def make_origin_leaf(t, pki):
    """A leaf from the test origin CA for the namespaced origin: DNS names
    origin.test, bypass.origin.test, blocked.origin.test and IP SANs
    198.51.100.6 and 2001:db8:2::6. Returns (fullchain, key, cert)."""
    d = os.path.join(t.dir, "netns-origin-pki")
    os.makedirs(d)
    key, csr, crt = (os.path.join(d, "origin.%s" % x) for x in ("key", "csr", "crt"))
    ext = os.path.join(d, "ext.cnf")
    with open(ext, "w") as f:
        f.write("basicConstraints = critical, CA:FALSE\n"
                "keyUsage = critical, digitalSignature\n"
                "extendedKeyUsage = serverAuth\n"
                "subjectKeyIdentifier = hash\n"
                "authorityKeyIdentifier = keyid\n"
                "subjectAltName = DNS:%s, DNS:%s, DNS:%s, IP:%s, IP:%s\n"
                % (NAME, BYPASS_NAME, BLOCK_NAME, ORIGIN4, ORIGIN6))
    ca_key = os.path.join(pki.origin_dir, "origin-ca.key")
    if not os.path.exists(ca_key):
        raise h.Fatal("tests/pki/make-test-pki left no origin-ca.key to sign with")
    h.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
           "-out", key], check=True)
    h.run(["openssl", "req", "-new", "-key", key, "-subj", "/CN=%s" % NAME, "-out", csr], check=True)
    h.run(["openssl", "x509", "-req", "-in", csr, "-CA", pki.origin_ca, "-CAkey", ca_key,
           "-CAcreateserial", "-days", "30", "-sha256", "-extfile", ext, "-out", crt], check=True)
    full = os.path.join(d, "origin.fullchain.crt")
    with open(full, "w") as f:
        f.write(open(crt).read() + open(pki.origin_ca).read())
    os.chmod(key, 0o600)
    return full, key, crt


def der_sha256_of_file(path):
    with open(path) as f:
        pem = h.pem_certs(f.read())[0]
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


class NsServer:
    """A Python TCP server in a namespace (v4 and v6 sockets on one port):
    'echo' sends back every byte; 'banner' first sends BANNER, then answers
    each line L with b'250 ' + L. Stopped in all paths."""

    def __init__(self, ns, port, kind):
        self.kind = kind
        self.socks = []
        self.conns = []
        self.peers = []
        self.lock = threading.Lock()
        for fam, host in ((socket.AF_INET, ORIGIN4), (socket.AF_INET6, ORIGIN6)):
            s = ns.socket(fam)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((host, port))
            s.listen(64)
            self.socks.append(s)
            threading.Thread(target=self._accept, args=(s,), daemon=True).start()
        h._register(self)

    def _accept(self, ls):
        while True:
            try:
                c, peer = ls.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(c)
                self.peers.append(peer)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(60)
        try:
            if self.kind == "echo":
                while True:
                    b = c.recv(1 << 16)
                    if not b:
                        break
                    c.sendall(b)
            else:
                c.sendall(BANNER)
                buf = b""
                while True:
                    b = c.recv(4096)
                    if not b:
                        break
                    buf += b
                    while b"\r\n" in buf:
                        line, buf = buf.split(b"\r\n", 1)
                        c.sendall(b"250 " + line + b"\r\n")
        except OSError:
            pass
        finally:
            try:
                c.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            c.close()

    def kill(self):
        h._unregister(self)
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def start_origin_nginx(t, ns, fullchain, key):
    d = os.path.join(t.dir, "nginx-netns")
    www, tmp = os.path.join(d, "www"), os.path.join(d, "tmp")
    os.makedirs(www)
    os.makedirs(tmp)
    one_k = os.path.join(www, "1k")
    h.write_pseudorandom(one_k, h.KIB_SIZE, seed=1)
    listens = []
    for port, ssl_flag in ((443, " ssl"), (8443, " ssl"), (80, "")):
        listens.append("        listen %s:%d%s;" % (ORIGIN4, port, ssl_flag))
        listens.append("        listen [%s]:%d%s;" % (ORIGIN6, port, ssl_flag))
    conf = """user root;
daemon off;
master_process on;
worker_processes 1;
pid %(d)s/nginx.pid;
error_log stderr warn;
events { worker_connections 1024; }
http {
    log_format e2e '$remote_addr $remote_port $server_port "$request" $status';
    access_log %(d)s/access.log e2e;
    default_type application/octet-stream;
    client_body_temp_path %(tmp)s/body;
    proxy_temp_path %(tmp)s/proxy;
    fastcgi_temp_path %(tmp)s/fastcgi;
    uwsgi_temp_path %(tmp)s/uwsgi;
    scgi_temp_path %(tmp)s/scgi;
    server {
%(listens)s
        server_name _;
        ssl_certificate %(full)s;
        ssl_certificate_key %(key)s;
        ssl_protocols TLSv1.2 TLSv1.3;
        root %(www)s;
        location = /1k { }
        location = /whoami { return 200 "$remote_addr\\n"; }
    }
}
""" % {"d": d, "tmp": tmp, "listens": "\n".join(listens), "full": fullchain, "key": key,
       "www": www}
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    nginx = h.Daemon(t, [h.NGINX, "-p", d, "-e", "stderr", "-c", path], "nginx-origin", netns=ns)
    t.nginxes.append(nginx)
    for host in (ORIGIN4, ORIGIN6):
        for port in (443, 8443, 80):
            if not ns.wait_port(host, port, 10, nginx.proc):
                raise h.Fatal("nginx in the origin namespace not up on %s:\n%s"
                              % (h.hostport(host, port), nginx.log_tail()))
    with open(one_k, "rb") as f:
        return nginx, f.read()


def same_ip(a, b):
    fam = socket.AF_INET6 if ":" in b else socket.AF_INET
    try:
        return socket.inet_pton(fam, a) == socket.inet_pton(fam, b)
    except OSError:
        return False


def spoofed_whoami(ns, src_ip, host, port, cafile):
    """From ns: a TCP connection bound to src_ip (not local: IP_TRANSPARENT),
    TLS to host:port, GET /whoami; the address the origin saw."""
    v6 = ":" in host
    s = ns.socket(socket.AF_INET6 if v6 else socket.AF_INET)
    s.settimeout(10)
    ss = None
    try:
        if v6:
            s.setsockopt(socket.IPPROTO_IPV6, 75, 1)     # IPV6_TRANSPARENT
        else:
            s.setsockopt(socket.IPPROTO_IP, 19, 1)       # IP_TRANSPARENT
        s.bind((src_ip, 0))
        s.connect((host, port))
        ss = ssl.create_default_context(cafile=cafile).wrap_socket(s, server_hostname=NAME)
        ss.sendall(b"GET /whoami HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n")
        status, _, body = h.read_http_response(ss)
        return body.strip().decode(errors="replace")
    finally:
        (ss or s).close()


def access_log_lines(t):
    try:
        with open(os.path.join(t.dir, "nginx-netns", "access.log"), errors="replace") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def tls_get(ns, host, port, sni, cafile, path="/1k", timeout=20.0):
    """From namespace ns: TCP to host:port, TLS with SNI sni (None: no SNI),
    verified against cafile (hostname check against sni, or the IP when
    there is no SNI), GET path. Returns dict client ('ip:port' as sightline
    logs it), der, fp, leaf (cert_info), status, body."""
    s = ns.connect(host, port, timeout)
    client = h.hostport(*s.getsockname()[:2])
    ctx = ssl.create_default_context(cafile=cafile)
    if sni is None:
        ctx.check_hostname = False          # checked by hand below (IP SAN)
    ss = None
    try:
        ss = ctx.wrap_socket(s, server_hostname=sni)
        der = ss.getpeercert(binary_form=True)
        if sni is None:
            sans = [v.strip() for k, v in ss.getpeercert().get("subjectAltName", ())
                    if k == "IP Address"]
            assert any(same_ip(v, host) for v in sans), \
                "leaf IP SANs %r do not include %s" % (sans, host)
        ss.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                    % (path, sni or h.hostport(host, port))).encode())
        status, _, body = h.read_http_response(ss)
        return {"client": client, "der": der, "fp": hashlib.sha256(der).hexdigest(),
                "leaf": h.cert_info(ssl.DER_cert_to_PEM_cert(der)), "status": status, "body": body}
    finally:
        (ss or s).close()


def ns_curl(ns, args, timeout=20):
    """curl inside namespace ns; -w prints the local address after the body
    (separated by a newline). Returns (CompletedProcess, body, local 'ip:port')."""
    cp = ns.run(["curl", "--silent", "--show-error", "--max-time", str(timeout),
                 "-w", "\n%{local_ip} %{local_port}"] + list(args), check=False, timeout=timeout + 10)
    body, _, tail = cp.stdout.rpartition(b"\n")
    parts = tail.decode(errors="replace").split()
    local = h.hostport(parts[0], int(parts[1])) if len(parts) == 2 and parts[1].isdigit() else None
    return cp, body, local


def conn_line(proxy, client, since, timeout=10.0):
    ev = h.connection_line(proxy, client, since, timeout)
    assert ev is not None, "no connection line for client %s" % client
    return ev


def expect_intercept(proxy, pki, res, body, target, since):
    assert res["status"] == 200, "status %r" % res["status"]
    assert res["body"] == body, "body differs (%d bytes, expected %d)" % (len(res["body"]), len(body))
    assert res["leaf"]["issuer"] in (pki.ca_subject, pki.root_subject), \
        "leaf issuer %r is not the enterprise CA (%r)" % (res["leaf"]["issuer"], pki.ca_subject)
    ev = conn_line(proxy, res["client"], since)
    assert ev.get("action") == "intercept", "log action %r (close_reason %r)" % (
        ev.get("action"), ev.get("close_reason"))
    assert ev.get("target") == target, "log target %r, expected the original destination %r" % (
        ev.get("target"), target)
    return ev


def splice_roundtrip(ns, host, port, size, seed):
    """Client-speaks-first: send size pseudo-random bytes (non-TLS,
    non-HTTP first bytes) while reading the echo. Returns (client, sent, got)."""
    rng = random.Random(seed)
    data = b"\x00SLE2E-splice\x01" + rng.randbytes(size - 15)
    s = ns.connect(host, port, 20)
    client = h.hostport(*s.getsockname()[:2])
    got = bytearray()
    err = []

    def reader():
        try:
            while len(got) < len(data):
                b = s.recv(1 << 16)
                if not b:
                    break
                got.extend(b)
        except OSError as e:
            err.append(e)

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    try:
        s.sendall(data)
        th.join(30)
    finally:
        s.close()
    if err:
        raise AssertionError("reading the echo: %r (after %d of %d bytes)" % (err[0], len(got), len(data)))
    return client, data, bytes(got)


def recv_until(s, delim, limit=65536):
    buf = b""
    while delim not in buf and len(buf) < limit:
        b = s.recv(4096)
        if not b:
            break
        buf += b
    return buf


def nft_apply(t, ns, text, name):
    """Load an nft ruleset (a file in the test dir) in the namespace.
    Returns (ok, error text)."""
    path = os.path.join(t.dir, "%s.nft" % name)
    with open(path, "w") as f:
        f.write(text)
    cp = ns.run(["nft", "-f", path], check=False)
    return cp.returncode == 0, cp.stderr.decode(errors="replace").strip()


# --------------------------------------------------------------------------

def main(t):
    pki = t.pki()
    try:
        client = h.Netns("client")
    except h.NetnsUnavailable as e:
        for name in CHECKS:
            with t.check(name):
                raise h.Skip("network namespaces unavailable: %s" % e)
        return
    gw = h.Netns("gw")
    origin = h.Netns("origin")

    # ---- topology
    h.veth(gw, "veth-c", client, "eth0")
    h.veth(gw, "veth-o", origin, "eth0")
    client.ip("addr", "add", CLIENT4 + "/30", "dev", "eth0")
    client.ip("-6", "addr", "add", CLIENT6 + "/64", "dev", "eth0", "nodad")
    gw.ip("addr", "add", GW_C4 + "/30", "dev", "veth-c")
    gw.ip("-6", "addr", "add", GW_C6 + "/64", "dev", "veth-c", "nodad")
    gw.ip("addr", "add", GW_O4 + "/30", "dev", "veth-o")
    gw.ip("-6", "addr", "add", GW_O6 + "/64", "dev", "veth-o", "nodad")
    origin.ip("addr", "add", ORIGIN4 + "/30", "dev", "eth0")
    origin.ip("-6", "addr", "add", ORIGIN6 + "/64", "dev", "eth0", "nodad")
    client.ip("route", "add", "default", "via", GW_C4)
    client.ip("-6", "route", "add", "default", "via", GW_C6)
    origin.ip("route", "add", "default", "via", GW_O4)
    origin.ip("-6", "route", "add", "default", "via", GW_O6)
    gw.sysctl("net.ipv4.ip_forward", 1)
    gw.sysctl("net.ipv6.conf.all.forwarding", 1)

    fullchain, key, leaf_crt = make_origin_leaf(t, pki)
    origin_fp = der_sha256_of_file(leaf_crt)
    nginx, one_k = start_origin_nginx(t, origin, fullchain, key)
    NsServer(origin, ECHO_PORT, "echo")
    NsServer(origin, BANNER_PORT, "banner")

    with t.check(CHECKS[0], fatal=True):
        for host in (ORIGIN4, ORIGIN6):
            res = tls_get(client, host, 443, NAME, pki.origin_ca)
            assert res["fp"] == origin_fp, "not the origin's certificate on %s" % host
            assert res["body"] == one_k, "body differs on %s" % host
            res = tls_get(client, host, 443, NAME, pki.origin_ca, path="/whoami")
            want = CLIENT4 if host == ORIGIN4 else CLIENT6
            assert res["body"].strip().decode() == want, \
                "origin saw %r, expected the client %s" % (res["body"], want)

    # ---- redirect listeners + policy
    port, port_cli = 3129, 3139
    pol = os.path.join(t.dir, "policy.toml")
    with open(pol, "w") as f:
        f.write('[policy]\ndefault = "inspect"\nauto_bypass = false\n\n'
                '[[rule]]\nname = "bypass-netns"\naction = "bypass"\ndomains = ["%s"]\n\n'
                '[[rule]]\nname = "block-netns"\naction = "block"\ndomains = ["%s"]\n'
                % (BYPASS_NAME, BLOCK_NAME))
    # Every proxy here uses this policy (the default policy file bypasses
    # 198.51.100.0/24 as "unmanaged devices").
    policy = '[policy]\nfiles = ["%s"]\n' % pol
    l4, l6 = "%s:%d" % (GW_C4, port), "[%s]:%d" % (GW_C6, port)
    extra = ('[[listener]]\naddress = "%s"\nmode = "redirect"\n\n'
             '[[listener]]\naddress = "%s"\nmode = "redirect"\n\n' % (l4, l6)) + policy
    cfg = h.make_config(pki, timeouts={"first_byte": "%ds" % FIRST_BYTE_S}, extra=extra)
    proxy = h.NetnsProxy(t, gw, cfg, name="redirect", listening=[l4, l6])

    ruleset = """table inet sl_e2e_redirect {
    chain pre {
        type nat hook prerouting priority dstnat; policy accept;
        iifname "veth-c" tcp dport { 80, 443, %d, %d } redirect to :%d
        iifname "veth-c" tcp dport 8443 redirect to :%d
    }
}
""" % (ECHO_PORT, BANNER_PORT, port, port_cli)
    ok, err = nft_apply(t, gw, ruleset, "redirect")
    if not ok:
        # Fallback: iptables / ip6tables REDIRECT (same rules).
        errs = ["nft: " + err]
        for tool in ("iptables", "ip6tables"):
            for dports, to in (("80,443,%d,%d" % (ECHO_PORT, BANNER_PORT), port), ("8443", port_cli)):
                cp = gw.run([tool, "-t", "nat", "-A", "PREROUTING", "-i", "veth-c", "-p", "tcp",
                             "-m", "multiport", "--dports", dports, "-j", "REDIRECT",
                             "--to-ports", str(to)], check=False)
                if cp.returncode != 0:
                    errs.append("%s: %s" % (tool, cp.stderr.decode(errors="replace").strip()))
        if len(errs) > 1:
            raise h.Fatal("cannot install the REDIRECT rules in the gateway namespace:\n"
                          + "\n".join(errs))
        print("note: nft failed (%s); using iptables REDIRECT" % err, flush=True)

    with t.check(CHECKS[1]):
        m = proxy.mark()
        res = tls_get(client, ORIGIN4, 443, NAME, pki.root)
        ev = expect_intercept(proxy, pki, res, one_k, "%s:443" % ORIGIN4, m)
        assert ev.get("sni") == NAME, "log sni %r" % ev.get("sni")
        assert res["client"].startswith(CLIENT4 + ":"), res["client"]
        t.note("client %s, upstream %s" % (res["client"], ev.get("upstream_addr")))

    with t.check(CHECKS[2]):
        m = proxy.mark()
        res = tls_get(client, ORIGIN6, 443, NAME, pki.root)
        ev = expect_intercept(proxy, pki, res, one_k, "[%s]:443" % ORIGIN6, m)
        assert ev.get("sni") == NAME, "log sni %r" % ev.get("sni")
        t.note("client %s" % res["client"])

    with t.check(CHECKS[3]):
        for host in (ORIGIN4, ORIGIN6):
            m = proxy.mark()
            resolve = "%s:443:%s" % (NAME, host if ":" not in host else "[%s]" % host)
            cp, body, local = ns_curl(client, ["--cacert", pki.root, "--resolve", resolve,
                                               "https://%s/1k" % NAME])
            assert cp.returncode == 0, "%s: %s" % (host, h.curl_err(cp))
            assert body == one_k, "%s: body differs" % host
            ev = conn_line(proxy, local, m)
            assert ev.get("action") == "intercept", "%s: action %r" % (host, ev.get("action"))

    with t.check(CHECKS[4]):
        for host in (ORIGIN4, ORIGIN6):
            m = proxy.mark()
            res = tls_get(client, host, 443, None, pki.root)
            expect_intercept(proxy, pki, res, one_k, h.hostport(host, 443), m)

    with t.check(CHECKS[5]):
        m = proxy.mark()
        res = tls_get(client, ORIGIN4, 443, BYPASS_NAME, pki.origin_ca)
        assert res["fp"] == origin_fp, "presented leaf is not the origin's own (issuer %s)" % (
            res["leaf"]["issuer"])
        assert res["body"] == one_k, "body differs"
        ev = conn_line(proxy, res["client"], m)
        assert ev.get("action") == "bypass", "log action %r" % ev.get("action")
        assert ev.get("target") == "%s:443" % ORIGIN4, "log target %r" % ev.get("target")
        assert "bypass-netns" in (ev.get("policy") or ""), "log policy %r" % ev.get("policy")

    with t.check(CHECKS[6]):
        m = proxy.mark()
        before = access_log_lines(t)
        s = client.connect(ORIGIN4, 443, 20)
        cl = h.hostport(*s.getsockname()[:2])
        ctx = ssl.create_default_context(cafile=pki.root)
        err = None
        try:
            ss = ctx.wrap_socket(s, server_hostname=BLOCK_NAME)
            ss.sendall(b"GET /1k HTTP/1.1\r\nHost: %s\r\n\r\n" % BLOCK_NAME.encode())
            got = ss.recv(4096)
            err = "handshake completed and got %r" % got[:80]
        except (ssl.SSLError, OSError) as e:
            msg = str(e)
            if "ACCESS_DENIED" not in msg.upper() and "access denied" not in msg.lower():
                err = "expected an access_denied alert, got %r" % msg
        finally:
            s.close()
        assert err is None, err
        ev = conn_line(proxy, cl, m)
        assert "blocked by policy" in (ev.get("close_reason") or ""), \
            "close_reason %r" % ev.get("close_reason")
        assert "block-netns" in (ev.get("close_reason") or "") + (ev.get("policy") or ""), \
            "rule not named: %r / %r" % (ev.get("close_reason"), ev.get("policy"))
        time.sleep(0.3)
        after = access_log_lines(t)
        assert after[len(before):] == [], "the origin got requests: %r" % after[len(before):]

    for idx, host in ((7, ORIGIN4), (8, ORIGIN6)):
        with t.check(CHECKS[idx]):
            m = proxy.mark()
            cl, sent, got = splice_roundtrip(client, host, ECHO_PORT, 256 * 1024, seed=idx)
            assert got == sent, "echo differs: %d bytes back of %d, first difference at %s" % (
                len(got), len(sent),
                next((i for i, (a, b) in enumerate(zip(got, sent)) if a != b), min(len(got), len(sent))))
            ev = conn_line(proxy, cl, m)
            assert ev.get("action") == "splice", "log action %r" % ev.get("action")
            assert ev.get("target") == h.hostport(host, ECHO_PORT), "log target %r" % ev.get("target")

    with t.check(CHECKS[9]):
        m = proxy.mark()
        s = client.connect(ORIGIN4, BANNER_PORT, 20)
        cl = h.hostport(*s.getsockname()[:2])
        try:
            t0 = time.monotonic()
            s.settimeout(FIRST_BYTE_S + 8)
            banner = recv_until(s, b"\r\n")
            waited = time.monotonic() - t0
            assert banner == BANNER, "banner %r, expected %r" % (banner, BANNER)
            s.sendall(b"EHLO client.test\r\n")
            reply = recv_until(s, b"\r\n")
            assert reply == b"250 EHLO client.test\r\n", "reply %r" % reply
        finally:
            s.close()
        ev = conn_line(proxy, cl, m)
        assert ev.get("action") == "splice", "log action %r" % ev.get("action")
        assert ev.get("target") == "%s:%d" % (ORIGIN4, BANNER_PORT), "log target %r" % ev.get("target")
        t.note("banner after %.2fs (first_byte %gs)" % (waited, FIRST_BYTE_S))

    with t.check(CHECKS[10]):
        for host in (ORIGIN4, ORIGIN6):
            m = proxy.mark()
            resolve = "%s:80:%s" % (NAME, host if ":" not in host else "[%s]" % host)
            cp, body, local = ns_curl(client, ["--resolve", resolve, "http://%s/1k" % NAME])
            assert cp.returncode == 0, "%s: %s" % (host, h.curl_err(cp))
            assert body == one_k, "%s: body differs (%d bytes)" % (host, len(body))
            ex = proxy.wait_event(lambda e: e.get("event") == "exchange" and e.get("client") == local,
                                  10, m)
            assert ex is not None, "%s: no exchange line for client %s" % (host, local)
            assert ex.get("method") == "GET" and ex.get("status") == 200, \
                "%s: exchange %r %r" % (host, ex.get("method"), ex.get("status"))
            ev = conn_line(proxy, local, m)
            assert ev.get("action") == "http", "%s: log action %r" % (host, ev.get("action"))
            assert ev.get("target") == h.hostport(host, 80), "%s: log target %r" % (host, ev.get("target"))

    with t.check(CHECKS[16]):
        m = proxy.mark()
        res = tls_get(client, ORIGIN4, 443, NAME, pki.root)  # "Connection: close": the client leg ends
        ev = conn_line(proxy, res["client"], m)
        assert ev.get("upstream_parked") is True, "first connection line: %r" % ev
        res = tls_get(client, ORIGIN4, 443, NAME, pki.root)
        expect_intercept(proxy, pki, res, one_k, "%s:443" % ORIGIN4, m)
        ev = conn_line(proxy, res["client"], m)
        assert (ev.get("upstream_reused") or 0) >= 2, "second connection line: %r" % ev
        # Plain HTTP to the same destination: no TLS, so nothing parked fits;
        # the proxy connects once it has seen the request (nginx answers 400
        # to plain HTTP on its TLS port).
        s = client.connect(ORIGIN4, 443, 20)
        cl = h.hostport(*s.getsockname()[:2])
        try:
            s.sendall(b"GET /1k HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n")
            s.settimeout(20)
            got = h.Wire(s).recv_all()
        finally:
            s.close()
        assert got.startswith(b"HTTP/1.1 400"), "plain HTTP to :443 got %r" % got[:120]
        ev = conn_line(proxy, cl, m)
        assert ev.get("action") == "http" and ev.get("upstream_addr"), "connection line %r" % ev

    with t.check(CHECKS[11]):
        for gw_addr in (GW_C4, GW_C6):
            m = proxy.mark()
            s = client.connect(gw_addr, port, 10)
            cl = h.hostport(*s.getsockname()[:2])
            got = b""
            try:
                s.sendall(b"\x16\x03\x01\x00\x05hello")   # whatever: it must not be relayed
                s.settimeout(10)
                while True:
                    b = s.recv(4096)
                    if not b:
                        break
                    got += b
            except ConnectionResetError:
                pass
            finally:
                s.close()
            assert got == b"", "%s: the proxy sent %r" % (gw_addr, got[:80])
            ev = conn_line(proxy, cl, m)
            reason = ev.get("close_reason") or ""
            assert reason.startswith("loop:"), "%s: close_reason %r" % (gw_addr, reason)
            assert h.hostport(gw_addr, port) in reason, "%s: close_reason %r does not name %s" % (
                gw_addr, reason, h.hostport(gw_addr, port))

    with t.check(CHECKS[12]):
        explicit = h.free_port()
        cli_addr = "%s:%d" % (GW_C4, port_cli)
        cfg2 = h.make_config(pki, listen_port=explicit, extra=policy)
        p2 = h.NetnsProxy(t, gw, cfg2, args=["--transparent", cli_addr], name="cli-transparent",
                          listening=[cli_addr])
        try:
            listening = [e.get("address") for e in p2.events if e.get("event") == "listening"
                         and e.get("mode") != "admin"]
            assert listening == [cli_addr], "listening on %r" % listening
            ev = next(e for e in p2.events if e.get("event") == "listening" and e.get("address") == cli_addr)
            assert ev.get("mode") == "redirect", "listening mode %r" % ev.get("mode")
            assert not gw.wait_port("127.0.0.1", explicit, 0.5), \
                "the config's explicit listener 127.0.0.1:%d is still open" % explicit
            m = p2.mark()
            res = tls_get(client, ORIGIN4, 8443, NAME, pki.root)
            expect_intercept(p2, pki, res, one_k, "%s:8443" % ORIGIN4, m)
        finally:
            p2.stop()

    # ---- TPROXY
    proxy.stop()
    gw.run(["nft", "delete", "table", "inet", "sl_e2e_redirect"], check=False)
    for tool in ("iptables", "ip6tables"):
        gw.run([tool, "-t", "nat", "-F", "PREROUTING"], check=False)
    tport, sport = 3130, 3131
    tp_errors = []
    for fam in ("-4", "-6"):
        for args in (("rule", "add", "fwmark", "1", "lookup", "100"),
                     ("route", "add", "local", "0.0.0.0/0" if fam == "-4" else "::/0",
                      "dev", "lo", "table", "100")):
            cp = gw.ip(fam, *args, check=False)
            if cp.returncode != 0:
                tp_errors.append("ip %s %s: %s" % (fam, " ".join(args),
                                                   cp.stderr.decode(errors="replace").strip()))
    tp_rules = """table inet sl_e2e_tproxy {
    chain pre {
        type filter hook prerouting priority mangle; policy accept;
        iifname "veth-c" tcp dport 443 meta mark set 1 tproxy to :%d accept
    }
}
""" % tport
    ok, err = nft_apply(t, gw, tp_rules, "tproxy")
    if not ok:
        tp_errors.append("nft tproxy rule: %s" % err)
    spoof_rules = """table inet sl_e2e_tproxy_spoof {
    chain pre {
        type filter hook prerouting priority mangle; policy accept;
        iifname "veth-c" tcp dport 8443 meta mark set 1 tproxy to :%d accept
        iifname "veth-o" tcp sport 8443 socket transparent 1 meta mark set 1 accept
    }
}
""" % sport
    spoof_err = None
    if not tp_errors:
        ok, err = nft_apply(t, gw, spoof_rules, "tproxy-spoof")
        if not ok:
            spoof_err = "nft tproxy + socket rules: %s" % err

    if tp_errors:
        for idx in (13, 14, 15):
            with t.check(CHECKS[idx]):
                raise h.Skip("TPROXY unavailable in this kernel: " + "; ".join(tp_errors))
        return

    tl = ["0.0.0.0:%d" % tport, "[::]:%d" % tport, "0.0.0.0:%d" % sport, "[::]:%d" % sport]
    extra = ('[[listener]]\naddress = "%s"\nmode = "tproxy"\n\n'
             '[[listener]]\naddress = "%s"\nmode = "tproxy"\n\n'
             '[[listener]]\naddress = "%s"\nmode = "tproxy"\nspoof_source = true\n\n'
             '[[listener]]\naddress = "%s"\nmode = "tproxy"\nspoof_source = true\n' % tuple(tl))
    tproxy = h.NetnsProxy(t, gw, h.make_config(pki, extra=extra + "\n" + policy), name="tproxy",
                          listening=tl)

    for idx, host, gw_side in ((13, ORIGIN4, GW_O4), (14, ORIGIN6, GW_O6)):
        with t.check(CHECKS[idx]):
            m = tproxy.mark()
            res = tls_get(client, host, 443, NAME, pki.root)
            ev = expect_intercept(tproxy, pki, res, one_k, h.hostport(host, 443), m)
            assert ev.get("sni") == NAME, "log sni %r" % ev.get("sni")
            who = tls_get(client, host, 443, NAME, pki.root, path="/whoami")
            assert who["body"].strip().decode() == gw_side, \
                "origin saw %r, expected the gateway %s" % (who["body"], gw_side)

    with t.check(CHECKS[15]):
        if spoof_err:
            raise h.Skip("TPROXY socket match unavailable in this kernel: " + spoof_err)
        # Control: the gateway itself can open a connection from the
        # client's address (IP_TRANSPARENT + the socket-match rule), so a
        # failure below is sightline's, not the topology's.
        for host, client_ip in ((ORIGIN4, CLIENT4), (ORIGIN6, CLIENT6)):
            seen = spoofed_whoami(gw, client_ip, host, 8443, pki.origin_ca)
            assert seen == client_ip, "control (Python IP_TRANSPARENT socket in gw): origin saw " \
                "%r, expected %s: the topology cannot carry spoofed connections" % (seen, client_ip)
        for host, client_ip in ((ORIGIN4, CLIENT4), (ORIGIN6, CLIENT6)):
            m = tproxy.mark()
            res = tls_get(client, host, 8443, NAME, pki.root, path="/whoami")
            assert res["status"] == 200, "%s: status %r" % (host, res["status"])
            assert res["leaf"]["issuer"] in (pki.ca_subject, pki.root_subject), \
                "%s: leaf issuer %r" % (host, res["leaf"]["issuer"])
            seen = res["body"].strip().decode()
            assert seen == client_ip, "%s: origin saw %r, expected the client's own %s" % (
                host, seen, client_ip)
            ev = conn_line(tproxy, res["client"], m)
            assert ev.get("action") == "intercept", "%s: action %r" % (host, ev.get("action"))


if __name__ == "__main__":
    h.run_test("85_transparent", main)
