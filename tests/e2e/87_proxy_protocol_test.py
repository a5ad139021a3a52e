#!/usr/bin/env python3
"""Layer 87: the PROXY protocol (HAProxy spec, v1 text and v2 binary) on
sightline's listeners (`proxy_protocol = "v1" | "v2"`).

Everything on loopback; the fake clients named in headers are from
198.51.100.0/24 and 2001:db8::/32 and are never contacted.

  HAProxy    a real HAProxy (Debian `haproxy`, TCP mode) in front of an
             explicit listener with `send-proxy-v2` (and one with
             `send-proxy`, v1): curl's CONNECT through HAProxy is
             intercepted, and sightline's connection line names curl's own
             address (127.0.0.1:<--local-port>), not HAProxy's;
  raw v1/v2  headers for fake clients (IPv4 and IPv6) written by hand: the
             header's source is the logged client and drives the policy
             (a clients = [...] block rule); the header in the same segment
             as the CONNECT, and dribbled byte by byte; v2 LOCAL keeps the
             socket's own address; v2 TLVs are skipped;
  transparent a redirect listener with proxy_protocol = "v2": the header's
             destination is the original destination (intercepted toward
             it); a destination equal to the listener itself is a loop;
  errors     no header (a plain CONNECT), malformed v1 and v2 headers, the
             wrong version: the connection is closed without a byte and the
             log says "bad PROXY protocol header: ..."; a silent client (or a
             partial header) times out with "timed out waiting for the PROXY
             header".
"""

import os
import shutil
import socket
import ssl
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

HAPROXY = os.environ.get("SIGHTLINE_HAPROXY", "haproxy")
HANDSHAKE_TIMEOUT_S = 2

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


# --------------------------------------------------------------------------
# PROXY headers

def pp_v1(src, sport, dst, dport):
    fam = "TCP6" if ":" in src else "TCP4"
    return ("PROXY %s %s %s %d %d\r\n" % (fam, src, dst, sport, dport)).encode()


def pp_v2(src=None, sport=0, dst=None, dport=0, local=False, tlvs=b""):
    """A v2 header: PROXY command with TCP over IPv4/IPv6 addresses, or
    LOCAL (no addresses). tlvs: raw TLV bytes appended to the address block."""
    if local:
        return V2_SIG + bytes([0x20, 0x00]) + struct.pack("!H", len(tlvs)) + tlvs
    if ":" in src:
        fam, body = 0x21, (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
                           + struct.pack("!HH", sport, dport))
    else:
        fam, body = 0x11, (socket.inet_pton(socket.AF_INET, src) + socket.inet_pton(socket.AF_INET, dst)
                           + struct.pack("!HH", sport, dport))
    body += tlvs
    return V2_SIG + bytes([0x21, fam]) + struct.pack("!H", len(body)) + body


def tlv(kind, value):
    return bytes([kind]) + struct.pack("!H", len(value)) + value


# --------------------------------------------------------------------------
# clients

def open_raw(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s, "127.0.0.1:%d" % s.getsockname()[1]


def pp_tunnel_get(port, header, target, cafile, split=False, path="/1k"):
    """header (+ CONNECT target) to an explicit listener, TLS verified
    against cafile with SNI localhost, GET path. split: the header is sent
    one byte at a time (with pauses), then the CONNECT separately; otherwise
    header and CONNECT go in one send. Returns (socket address, status, body)."""
    s, sock_addr = open_raw(port)
    ss = None
    try:
        connect = ("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target)).encode()
        if split:
            for i in range(len(header)):
                s.sendall(header[i:i + 1])
                time.sleep(0.002)
            time.sleep(0.05)
            s.sendall(connect)
        else:
            s.sendall(header + connect)
        code, head = h.read_response_head(s)
        assert code == 200, "CONNECT -> %r" % head.split("\r\n", 1)[0]
        ss = h.client_context(cafile).wrap_socket(s, server_hostname="localhost")
        ss.sendall(("GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % path).encode())
        status, _, body = h.read_http_response(ss)
        return sock_addr, status, body
    finally:
        (ss or s).close()


def expect_closed(port, data, timeout=10.0):
    """Send data, read until the proxy closes. Returns (socket address,
    bytes received, seconds until the close). Fails if it stays open."""
    s, sock_addr = open_raw(port)
    got = b""
    t0 = time.monotonic()
    try:
        if data:
            s.sendall(data)
        s.settimeout(timeout)
        while True:
            try:
                b = s.recv(4096)
            except ConnectionResetError:
                break
            except socket.timeout:
                raise AssertionError("still open after %.0fs (got %r)" % (timeout, got[:80]))
            if not b:
                break
            got += b
    finally:
        s.close()
    return sock_addr, got, time.monotonic() - t0


def conn_by_client(proxy, client, since, timeout=10.0):
    ev = h.connection_line(proxy, client, since, timeout)
    assert ev is not None, "no connection line for client %s" % client
    return ev


# --------------------------------------------------------------------------

def main(t):
    pki = t.pki()
    origin = t.start_nginx(pki, certs=["valid-ec"])
    ngx = origin.port("valid-ec")
    target = "localhost:%d" % ngx
    with open(origin.files["/1k"], "rb") as f:
        one_k = f.read()

    pol = os.path.join(t.dir, "policy.toml")
    with open(pol, "w") as f:
        f.write('[policy]\ndefault = "inspect"\nauto_bypass = false\n\n'
                '[[rule]]\nname = "block-pp-client"\naction = "block"\n'
                'clients = ["198.51.100.66/32", "2001:db8::66/128"]\n')
    p_v2, p_v1, p_tr = h.free_ports(3)
    extra = ('[[listener]]\naddress = "127.0.0.1:%d"\nmode = "explicit"\nproxy_protocol = "v2"\n\n'
             '[[listener]]\naddress = "127.0.0.1:%d"\nmode = "explicit"\nproxy_protocol = "v1"\n\n'
             '[[listener]]\naddress = "127.0.0.1:%d"\nmode = "redirect"\nproxy_protocol = "v2"\n\n'
             '[policy]\nfiles = ["%s"]\n' % (p_v2, p_v1, p_tr, pol))
    cfg = h.make_config(pki, timeouts={"handshake": "%ds" % HANDSHAKE_TIMEOUT_S}, extra=extra)
    proxy = h.Proxy(t, cfg, name="pp", port=p_v2)

    with t.check("listening lines name proxy_protocol per listener", fatal=True):
        for port, want in ((p_v2, 2), (p_v1, 1), (p_tr, 2)):
            ev = proxy.wait_event(lambda e: e.get("event") == "listening"
                                  and e.get("address") == "127.0.0.1:%d" % port, 5)
            assert ev is not None, "no listening line for 127.0.0.1:%d" % port
            assert ev.get("proxy_protocol") in (want, "v%d" % want), \
                "127.0.0.1:%d: proxy_protocol %r" % (port, ev.get("proxy_protocol"))

    # ---- HAProxy in front
    hap_bin = shutil.which(HAPROXY)
    if not hap_bin:
        raise h.Fatal("haproxy not found (install the Debian package 'haproxy')")
    hp2, hp1 = h.free_ports(2)
    hcfg = os.path.join(t.dir, "haproxy.cfg")
    with open(hcfg, "w") as f:
        f.write("""global
    maxconn 256

defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend fe_v2
    bind 127.0.0.1:%d
    default_backend be_v2

backend be_v2
    server sightline 127.0.0.1:%d send-proxy-v2

frontend fe_v1
    bind 127.0.0.1:%d
    default_backend be_v1

backend be_v1
    server sightline 127.0.0.1:%d send-proxy
""" % (hp2, p_v2, hp1, p_v1))
    cp = h.run([hap_bin, "-c", "-f", hcfg], timeout=30)
    if cp.returncode != 0:
        raise h.Fatal("haproxy -c rejected the config:\n%s" % (cp.stdout + cp.stderr).decode(errors="replace"))
    hap = h.Daemon(t, [hap_bin, "-db", "-f", hcfg], "haproxy")
    for p in (hp2, hp1):
        if not h.wait_port("127.0.0.1", p, 10, hap.proc):
            raise h.Fatal("haproxy not listening on 127.0.0.1:%d:\n%s" % (p, hap.log_tail()))

    for version, hport in (("send-proxy-v2", hp2), ("send-proxy (v1)", hp1)):
        with t.check("HAProxy %s: curl CONNECT intercepted, log client = curl's own address" % version):
            m = proxy.mark()
            lport = h.free_port()
            cp = h.curl(["--proxy", "http://127.0.0.1:%d" % hport, "--local-port", str(lport),
                         "--cacert", pki.root, "https://%s/1k" % target])
            assert cp.returncode == 0, h.curl_err(cp)
            assert cp.stdout == one_k, "body differs (%d bytes)" % len(cp.stdout)
            want = "127.0.0.1:%d" % lport
            ev = proxy.conn_event(target, since=m)
            assert ev is not None, "no connection line for %s" % target
            assert ev.get("client") == want, \
                "log client %r, expected curl's own %s (HAProxy's address leaked?)" % (ev.get("client"), want)
            assert ev.get("action") == "intercept", "action %r" % ev.get("action")
            t.note("client %s" % ev.get("client"))

    # ---- raw headers
    cases = [
        ("v1 TCP4 header: log client = the header's source", p_v1,
         pp_v1("198.51.100.77", 40077, "127.0.0.1", p_v1), "198.51.100.77:40077", False),
        ("v1 TCP6 header: log client = the header's source", p_v1,
         pp_v1("2001:db8::77", 40078, "::1", p_v1), "[2001:db8::77]:40078", False),
        ("v2 IPv4 header in the same segment as the CONNECT", p_v2,
         pp_v2("198.51.100.88", 40088, "127.0.0.1", p_v2), "198.51.100.88:40088", False),
        ("v2 IPv6 header with TLVs (skipped)", p_v2,
         pp_v2("2001:db8::88", 40089, "::1", p_v2,
               tlvs=tlv(0x02, b"origin.test") + tlv(0x04, b"")), "[2001:db8::88]:40089", False),
        ("v2 header dribbled one byte at a time, CONNECT after it", p_v2,
         pp_v2("198.51.100.89", 40090, "127.0.0.1", p_v2), "198.51.100.89:40090", True),
        ("v1 header dribbled one byte at a time", p_v1,
         pp_v1("198.51.100.78", 40079, "127.0.0.1", p_v1), "198.51.100.78:40079", True),
    ]
    for name, port, header, want, split in cases:
        with t.check(name):
            m = proxy.mark()
            sock_addr, status, body = pp_tunnel_get(port, header, target, pki.root, split=split)
            assert status == 200 and body == one_k, "status %r, %d bytes" % (status, len(body))
            ev = conn_by_client(proxy, want, m)
            assert ev.get("action") == "intercept", "action %r" % ev.get("action")
            assert ev.get("target") == target, "target %r" % ev.get("target")
            assert not proxy.wait_events(lambda e: e.get("event") == "connection"
                                         and e.get("client") == sock_addr, 1, 0.2, m), \
                "a connection line names the socket address %s" % sock_addr

    with t.check("v2 LOCAL command: the socket's own address is the client"):
        m = proxy.mark()
        sock_addr, status, body = pp_tunnel_get(p_v2, pp_v2(local=True), target, pki.root)
        assert status == 200 and body == one_k, "status %r, %d bytes" % (status, len(body))
        conn_by_client(proxy, sock_addr, m)

    with t.check("v1 PROXY UNKNOWN: the socket's own address is the client"):
        m = proxy.mark()
        sock_addr, status, body = pp_tunnel_get(p_v1, b"PROXY UNKNOWN\r\n", target, pki.root)
        assert status == 200 and body == one_k, "status %r, %d bytes" % (status, len(body))
        conn_by_client(proxy, sock_addr, m)

    with t.check("policy uses the header's client: a clients rule blocks 198.51.100.66 and 2001:db8::66"):
        for src, port, header in (
                ("198.51.100.66:40066", p_v1, pp_v1("198.51.100.66", 40066, "127.0.0.1", p_v1)),
                ("[2001:db8::66]:40067", p_v2, pp_v2("2001:db8::66", 40067, "::1", p_v2))):
            m = proxy.mark()
            s, _ = open_raw(port)
            try:
                s.sendall(header + ("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target)).encode())
                code, head = h.read_response_head(s)
            finally:
                s.close()
            assert code == 403, "%s: CONNECT -> %r, expected 403" % (src, head.split("\r\n", 1)[0])
            ev = conn_by_client(proxy, src, m)
            assert "block-pp-client" in (ev.get("close_reason") or "") + (ev.get("policy") or ""), \
                "%s: rule not named: close_reason %r policy %r" % (src, ev.get("close_reason"), ev.get("policy"))

    # ---- transparent listener behind a PROXY v2 sender
    with t.check("redirect listener + v2: the header's destination is the original destination"):
        m = proxy.mark()
        s, sock_addr = open_raw(p_tr)
        ss = None
        try:
            s.sendall(pp_v2("198.51.100.99", 45099, "127.0.0.1", ngx))
            ss = h.client_context(pki.root).wrap_socket(s, server_hostname="localhost")
            leaf = h.cert_info(ssl.DER_cert_to_PEM_cert(ss.getpeercert(binary_form=True)))
            ss.sendall(b"GET /1k HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            status, _, body = h.read_http_response(ss)
        finally:
            (ss or s).close()
        assert status == 200 and body == one_k, "status %r, %d bytes" % (status, len(body))
        assert leaf["issuer"] in (pki.ca_subject, pki.root_subject), "leaf issuer %r" % leaf["issuer"]
        ev = conn_by_client(proxy, "198.51.100.99:45099", m)
        assert ev.get("target") == "127.0.0.1:%d" % ngx, "target %r" % ev.get("target")
        assert ev.get("action") == "intercept", "action %r" % ev.get("action")

    with t.check("redirect listener + v2: a destination equal to the listener itself is a loop"):
        m = proxy.mark()
        sock_addr, got, _ = expect_closed(p_tr, pp_v2("198.51.100.98", 45098, "127.0.0.1", p_tr)
                                          + b"\x16\x03\x01\x00\x05hello")
        assert got == b"", "the proxy sent %r" % got[:80]
        ev = conn_by_client(proxy, "198.51.100.98:45098", m)
        reason = ev.get("close_reason") or ""
        assert reason.startswith("loop:"), "close_reason %r" % reason

    # ---- errors: closed without a byte, reason logged
    connect = ("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target)).encode()
    v2_ok = pp_v2("198.51.100.90", 40091, "127.0.0.1", p_v2)
    bad = [
        ("no header (plain CONNECT) on a v2 listener", p_v2, connect),
        ("no header (plain CONNECT) on a v1 listener", p_v1, connect),
        ("v1 header on a v2 listener", p_v2, pp_v1("198.51.100.91", 40092, "127.0.0.1", p_v2) + connect),
        ("v2 header on a v1 listener", p_v1, v2_ok + connect),
        ("v2: version nibble 3", p_v2, V2_SIG + bytes([0x31]) + v2_ok[13:] + connect),
        ("v2: command 0xF", p_v2, V2_SIG + bytes([0x2F]) + v2_ok[13:] + connect),
        ("v2: IPv4 family with a 4-byte address block", p_v2,
         V2_SIG + bytes([0x21, 0x11]) + struct.pack("!H", 4) + b"\xc6\x33\x64\x5a" + connect),
        ("v2: UNIX family with the PROXY command", p_v2,
         V2_SIG + bytes([0x21, 0x31]) + struct.pack("!H", 216) + bytes(216) + connect),
        ("v2: length beyond the cap (65535)", p_v2,
         V2_SIG + bytes([0x21, 0x11]) + struct.pack("!H", 65535) + bytes(64)),
        ("v1: bad address 198.51.100.300", p_v1,
         b"PROXY TCP4 198.51.100.300 127.0.0.1 40093 %d\r\n" % p_v1 + connect),
        ("v1: TCP4 with IPv6 addresses", p_v1,
         b"PROXY TCP4 2001:db8::1 ::1 40094 %d\r\n" % p_v1 + connect),
        ("v1: port 70000", p_v1, b"PROXY TCP4 198.51.100.92 127.0.0.1 70000 %d\r\n" % p_v1 + connect),
        ("v1: missing field", p_v1, b"PROXY TCP4 198.51.100.93 127.0.0.1 40095\r\n" + connect),
        ("v1: no CRLF within 107 bytes (PROXY UNKNOWN + 120 bytes)", p_v1,
         b"PROXY UNKNOWN " + b"x" * 120 + b"\r\n" + connect),
        ("v1: lower-case 'proxy'", p_v1, b"proxy TCP4 198.51.100.95 127.0.0.1 40097 %d\r\n" % p_v1 + connect),
    ]
    for name, port, data in bad:
        with t.check("malformed: %s -> closed, 'bad PROXY protocol header' logged" % name):
            m = proxy.mark()
            sock_addr, got, _ = expect_closed(port, data)
            assert got == b"", "the proxy answered %r" % got[:80]
            ev = conn_by_client(proxy, sock_addr, m)
            reason = ev.get("close_reason") or ""
            assert reason.startswith("bad PROXY protocol header: "), "close_reason %r" % reason
            assert len(reason) > len("bad PROXY protocol header: "), "no detail in %r" % reason
            t.note(reason[len("bad PROXY protocol header: "):][:60])

    for name, data in (("a silent client", b""), ("a partial v2 header", v2_ok[:20])):
        with t.check("header timeout: %s is closed after [timeouts] handshake" % name):
            m = proxy.mark()
            sock_addr, got, waited = expect_closed(p_v2, data, timeout=HANDSHAKE_TIMEOUT_S + 8)
            assert got == b"", "the proxy sent %r" % got[:80]
            assert waited >= HANDSHAKE_TIMEOUT_S - 0.5, "closed after %.2fs already" % waited
            ev = conn_by_client(proxy, sock_addr, m)
            assert ev.get("close_reason") == "timed out waiting for the PROXY header", \
                "close_reason %r" % ev.get("close_reason")
            t.note("closed after %.2fs" % waited)

    with t.check("the proxy is still serving after the bad headers"):
        sock_addr, status, body = pp_tunnel_get(p_v2, v2_ok, target, pki.root)
        assert status == 200 and body == one_k, "status %r, %d bytes" % (status, len(body))
        assert proxy.alive(), "sightline exited"
        assert hap.alive(), "haproxy exited:\n%s" % hap.log_tail()


if __name__ == "__main__":
    h.run_test("87_proxy_protocol", main)
