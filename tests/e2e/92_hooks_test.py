#!/usr/bin/env python3
"""Layer 92: inspection hooks: decrypted PCAP, PCAP-over-IP and key logs.

Requests made through the proxy are found in its PCAP-NG files by tshark's
HTTP dissector (exactly those requests, bodies byte-exact, a response
larger than one 64 KiB segment included); a PCAP-over-IP reader gets a
valid live stream; captures of the real TLS traffic on loopback, of the
upstream leg and of the client leg, are decrypted by tshark with the key
log of that leg.
"""

import glob
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

TSHARK = "/usr/bin/tshark"


def tshark(args, timeout=120):
    cp = h.run([TSHARK, "-n"] + list(args), timeout=timeout)
    assert cp.returncode == 0, "tshark %s failed: %s" % (" ".join(args), cp.stderr.decode()[-500:])
    return cp.stdout.decode(errors="replace")


def uris(path, extra=()):
    out = tshark(["-r", path] + list(extra) + ["-Y", "http.request", "-T", "fields",
                                               "-e", "http.request.uri"])
    return [l.strip() for l in out.splitlines() if l.strip()]


def follow_streams(path):
    """{stream index: (client bytes, server bytes)} from tshark's raw follow."""
    out = tshark(["-r", path, "-T", "fields", "-e", "tcp.stream"])
    streams = sorted({int(x) for x in out.split()})
    result = {}
    for s in streams:
        text = tshark(["-r", path, "-q", "-z", "follow,tcp,raw,%d" % s])
        c, srv = bytearray(), bytearray()
        for line in text.splitlines():
            # Data lines are bare hex: client's at the margin, server's indented.
            if not re.fullmatch(r"\t?[0-9a-f]+", line):
                continue
            if line.startswith("\t"):
                srv += bytes.fromhex(line.strip())
            else:
                c += bytes.fromhex(line.strip())
        result[s] = (bytes(c), bytes(srv))
    return result


class Capture:
    """tshark capturing loopback TCP on one port into a file."""

    def __init__(self, t, port, name):
        self.path = os.path.join(t.dir, name + ".pcapng")
        self.proc = subprocess.Popen([TSHARK, "-n", "-i", "lo", "-f", "tcp port %d" % port,
                                      "-w", self.path], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.port = port
        self.probe_ports = []
        t.nginxes.append(self)  # stopped with the test's other processes
        # "Capturing on ..." comes before the capture really runs: probe with
        # TCP connections until one shows up in the file.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as probe:
                self.probe_ports.append(probe.getsockname()[1])
            cp = h.run([TSHARK, "-n", "-r", self.path, "-Y", "tcp.flags.syn == 1"], timeout=60)
            if cp.stdout.strip():
                return
            time.sleep(0.1)
        raise AssertionError("capture on port %d never started" % port)

    def wait_connections(self, count, timeout=30):
        """Until `count` connections (besides the probes) ended with a FIN
        from the captured port: tshark stops without draining what the
        kernel still holds."""
        probes = ",".join(str(p) for p in self.probe_ports)
        self.wait_for("tcp.flags.fin == 1 && tcp.srcport == %d && !(tcp.dstport in {%s})"
                      % (self.port, probes), count, timeout)

    def wait_for(self, display_filter, count, timeout=30):
        """Until the file being written holds `count` packets matching the
        filter: tshark stops without draining what the kernel still holds."""
        deadline = time.monotonic() + timeout
        n = 0
        while time.monotonic() < deadline:
            cp = h.run([TSHARK, "-n", "-r", self.path, "-Y", display_filter], timeout=60)
            n = len([l for l in cp.stdout.decode(errors="replace").splitlines() if l.strip()])
            if n >= count:
                return
            time.sleep(0.2)
        raise AssertionError("capture %s: %d of %d packets matching %r" % (self.path, n, count, display_filter))

    def stop(self):
        # tshark runs dumpcap as a child in its session: signal the whole
        # group, or a dumpcap can outlive a failed test and go on capturing
        # every loopback packet of the machine.
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever is left of the group
        except ProcessLookupError:
            pass
        return self.path

    def kill(self):
        self.stop()

    def log_tail(self, n=20):
        return ""


def read_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise AssertionError("PCAP-over-IP stream ended after %d bytes" % len(buf))
        buf += chunk
    return buf


def main(t):
    if not os.access(TSHARK, os.X_OK):
        raise h.Fatal("tshark is required (Debian package tshark)")
    pki = t.pki()
    origin = t.start_nginx(pki, certs=["valid-ec", "valid-rsa", "manynames"], big=True)
    oport = origin.port("valid-ec")
    one_k = open(origin.files["/1k"], "rb").read()
    big = open(origin.files["/big"], "rb").read(200000)
    pcap_dir = os.path.join(t.dir, "pcap")
    os.makedirs(pcap_dir)
    over_ip = h.free_port()
    static_port = h.free_port()
    klog_client = os.path.join(t.dir, "client.keys")
    klog_upstream = os.path.join(t.dir, "upstream.keys")
    extra = ('[[listener]]\naddress = "127.0.0.1:%d"\nmode = "static"\ntarget = "localhost:%d"\n\n'
             '[pcap]\nport_map = ["%d:80"]\n' % (static_port, oport, oport))
    # The loopback captures count one origin connection per client
    # connection, each ending with a FIN: origin connection reuse is off.
    proxy = t.start_proxy(pki, extra=extra, upstream={"reuse": False},
                          args=["--pcap-dir", pcap_dir, "--pcap-over-ip", "127.0.0.1:%d" % over_ip,
                                "--keylog-client", klog_client, "--keylog-upstream", klog_upstream])

    with t.check("key logging is announced loudly", fatal=True):
        ev = proxy.wait_event(lambda e: e.get("event") == "keylog_enabled")
        assert ev and ev["level"] == "warn", "no keylog_enabled warning"

    reader = socket.create_connection(("127.0.0.1", over_ip), timeout=20)
    up_cap = Capture(t, oport, "upstream-leg")
    cl_cap = Capture(t, static_port, "client-leg")

    wanted = ["/1k?n=%d" % i for i in range(3)]
    with t.check("requests through the proxy (CONNECT and static listener)", fatal=True):
        cp = h.curl(["--cacert", pki.root, "--http1.1", "--resolve",
                     "localhost:%d:127.0.0.1" % static_port,
                     "https://localhost:%d/1k?static" % static_port])
        assert cp.returncode == 0 and cp.stdout == one_k, h.curl_err(cp)
        wanted.append("/1k?static")
        for u in wanted[:3]:
            cp = h.curl_via(proxy.port, "https://localhost:%d%s" % (oport, u), cafile=pki.root,
                            extra=["--http1.1"])
            assert cp.returncode == 0 and cp.stdout == one_k, h.curl_err(cp)
        cp = h.curl_via(proxy.port, "https://localhost:%d/big?range" % oport, cafile=pki.root,
                        extra=["--http1.1", "-r", "0-199999"])
        assert cp.returncode == 0 and cp.stdout == big, h.curl_err(cp)
        wanted.append("/big?range")
        # TLS 1.2 on the client leg: its key log line is CLIENT_RANDOM.
        cp = h.curl_via(proxy.port, "https://localhost:%d/1k?tls12" % oport, cafile=pki.root,
                        extra=["--http1.1", "--tlsv1.2", "--tls-max", "1.2"])
        assert cp.returncode == 0 and cp.stdout == one_k, h.curl_err(cp)
        wanted.append("/1k?tls12")
        cp = h.curl_via(proxy.port, "https://[::1]:%d/1k?v6" % origin.port("valid-ec", "v6"),
                        cafile=pki.root, extra=["--http1.1"])
        assert cp.returncode == 0 and cp.stdout == one_k, h.curl_err(cp)
        wanted.append("/1k?v6")

    with t.check("PCAP-over-IP: a live pcap stream with the plaintext"):
        hdr = read_exact(reader, 24)
        magic = struct.unpack("<I", hdr[:4])[0]
        assert magic in (0xa1b2c3d4, 0xa1b23c4d), "bad pcap magic %x" % magic
        assert struct.unpack("<I", hdr[20:24])[0] == 1, "linktype is not Ethernet"
        data = b""
        deadline = time.monotonic() + 20
        while b"GET /1k?n=0 HTTP/1.1" not in data and time.monotonic() < deadline:
            rec = read_exact(reader, 16)
            incl = struct.unpack("<I", rec[8:12])[0]
            assert incl <= 262144, "record length %d" % incl
            data += read_exact(reader, incl)
        assert b"GET /1k?n=0 HTTP/1.1" in data, "request not seen on PCAP-over-IP"
    reader.close()

    with t.check("the loopback captures hold every connection's end", fatal=True):
        # 5 upstream connections, 1 client-leg connection: a FIN each way.
        up_cap.wait_connections(6)
        cl_cap.wait_connections(1)
    up_path = up_cap.stop()
    cl_path = cl_cap.stop()
    with t.check("the proxy stops cleanly and closes its PCAP files", fatal=True):
        assert proxy.stop() == 0

    files = sorted(glob.glob(os.path.join(pcap_dir, "*")))
    with t.check("PCAP-NG files, readable by their owner only", fatal=True):
        assert files, "no files in %s" % pcap_dir
        for f in files:
            assert os.stat(f).st_mode & 0o077 == 0, "%s mode %o" % (f, os.stat(f).st_mode)
            out = tshark(["-r", f, "-c", "1", "-T", "fields", "-e", "frame.number"])
            assert out.strip() == "1", "tshark cannot read %s" % f

    with t.check("tshark -Y http.request lists exactly the requests made"):
        got = []
        for f in files:
            got += uris(f)
        assert sorted(got) == sorted(wanted), "got %s, want %s" % (got, wanted)

    with t.check("an IPv6 origin is shown with its IPv6 address (IPv4 client as ::ffff:127.0.0.1)"):
        got = []
        for f in files:
            out = tshark(["-r", f, "-Y", "http.request && ipv6.src == ::ffff:127.0.0.1 && ipv6.dst == ::1",
                          "-T", "fields", "-e", "http.request.uri"])
            got += [l.strip() for l in out.splitlines() if l.strip()]
        assert got == ["/1k?v6"], "IPv6 requests: %s" % got

    with t.check("no malformed packets or bad checksums"):
        for f in files:
            out = tshark(["-r", f, "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE",
                          "-Y", "_ws.malformed || tcp.checksum.status == 0 || ip.checksum.status == 0 "
                                "|| tcp.analysis.flags"])
            assert not out.strip(), "problems in %s:\n%s" % (f, out[:800])

    with t.check("following the streams gives the bodies byte-exact, both directions"):
        found_big = found_1k = False
        for f in files:
            for c, s in follow_streams(f).values():
                if b"GET /big?range" in c:
                    assert s.endswith(big), "big response body differs (%d bytes)" % len(s)
                    found_big = True
                if b"GET /1k?n=1 " in c:
                    assert s.endswith(one_k), "1k body differs"
                    found_1k = True
        assert found_big and found_1k, "streams not found (big=%s 1k=%s)" % (found_big, found_1k)

    with t.check("key log files: 0600, TLS 1.3 secrets"):
        for p in (klog_client, klog_upstream):
            assert os.stat(p).st_mode & 0o777 == 0o600, "%s mode %o" % (p, os.stat(p).st_mode)
            text = open(p).read()
            for label in ("CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
                          "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0"):
                assert label in text, "%s has no %s" % (p, label)
            assert all(len(l.split()) == 3 for l in text.splitlines()), "malformed lines in %s" % p
        assert "CLIENT_RANDOM " in open(klog_client).read(), "no TLS 1.2 CLIENT_RANDOM line in the client key log"

    with t.check("the upstream key log decrypts a capture of the upstream leg"):
        got = uris(up_path, ["-o", "tls.keylog_file:" + klog_upstream, "-d", "tcp.port==%d,tls" % oport])
        v4 = [u for u in wanted if u != "/1k?v6"]  # the capture has the IPv4 port only
        assert sorted(got) == sorted(v4), "decrypted %s, want %s" % (got, v4)
        assert not uris(up_path, ["-d", "tcp.port==%d,tls" % oport]), "decrypted without keys?"

    with t.check("the client key log decrypts a capture of the client leg"):
        got = uris(cl_path, ["-o", "tls.keylog_file:" + klog_client, "-d", "tcp.port==%d,tls" % static_port])
        assert got == ["/1k?static"], "decrypted %s" % got

    policy_phase(t, pki, origin, one_k)
    blocking_phase(t, pki, origin)


def metric(proxy, name):
    import urllib.request
    body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % proxy.admin_port, timeout=10).read().decode()
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def blocking_phase(t, pki, origin):
    """on_overflow = "block" with the smallest queue: a 50 MiB download is
    paused and resumed many times, arrives intact, and the capture has
    every byte (nothing dropped)."""
    pcap_dir = os.path.join(t.dir, "pcap-block")
    extra = '[pcap]\ndir = "%s"\nqueue_size = 65536\non_overflow = "block"\n' % pcap_dir
    proxy = t.start_proxy(pki, name="block", extra=extra)
    out = os.path.join(t.dir, "big.out")
    with t.check("a blocking consumer with a 64 KiB queue: 50 MiB arrive intact", fatal=True):
        cp = h.curl_via(proxy.port, "https://localhost:%d/big" % origin.port("valid-ec"), cafile=pki.root,
                        extra=["--http1.1", "-o", out], timeout=120)
        assert cp.returncode == 0, h.curl_err(cp)
        assert h.sha256_file(out) == origin.sha["/big"], "download differs"
        assert metric(proxy, "sightline_hook_dropped_total") == 0, "events dropped in block mode"
        assert metric(proxy, "sightline_hook_backpressure_total") > 0, "the connection was never paused"
        assert proxy.stop() == 0
    with t.check("... and the capture holds all of it"):
        files = sorted(glob.glob(os.path.join(pcap_dir, "*")))
        total = 0
        for f in files:
            lens = tshark(["-r", f, "-T", "fields", "-e", "tcp.len"], timeout=300)
            total += sum(int(x) for x in lens.split())
        assert total >= h.BIG_SIZE, "captured %d payload bytes, want at least %d" % (total, h.BIG_SIZE)


def policy_phase(t, pki, origin, one_k):
    """Policy rules choose which traffic hooks see: only inspected traffic,
    `hooks = []` opts a rule out, key logs limited to named rules."""
    ec, rsa, many = origin.port("valid-ec"), origin.port("valid-rsa"), origin.port("manynames")
    pol = os.path.join(t.dir, "hooks-policy.toml")
    with open(pol, "w") as f:
        f.write('[[rule]]\nname = "debug"\naction = "inspect"\nports = [%d]\n\n'
                '[[rule]]\nname = "quiet"\naction = "inspect"\nports = [%d]\nhooks = []\n\n'
                '[[rule]]\nname = "pass"\naction = "bypass"\nports = [%d]\n' % (ec, rsa, many))
    pcap_dir = os.path.join(t.dir, "pcap2")
    keys = os.path.join(t.dir, "debug-only.keys")
    extra = '[keylog]\nupstream_file = "%s"\nrules = ["debug"]\n' % keys
    proxy = t.start_proxy(pki, name="policy", extra=extra, args=["--pcap-dir", pcap_dir, "--policy", pol])
    with t.check("requests under three rules (h2 under 'debug')", fatal=True):
        cp = h.curl_via(proxy.port, "https://localhost:%d/1k?debug-h2" % ec, cafile=pki.root,
                        extra=["--http2"])
        assert cp.returncode == 0 and cp.stdout == one_k, h.curl_err(cp)
        cp = h.curl_via(proxy.port, "https://localhost:%d/1k?quiet" % rsa, cafile=pki.root,
                        extra=["--http1.1"])
        assert cp.returncode == 0 and cp.stdout == one_k, h.curl_err(cp)
        cp = h.curl_via(proxy.port, "https://localhost:%d/1k?bypass" % many, cafile=pki.origin_ca,
                        extra=["--http1.1"])
        assert cp.returncode == 0 and cp.stdout == one_k, h.curl_err(cp)
        assert proxy.stop() == 0
    files = sorted(glob.glob(os.path.join(pcap_dir, "*")))
    with t.check("only the 'debug' rule's connection is in the PCAP, and its HTTP/2 is dissected"):
        assert files, "no PCAP written"
        ports = set()
        paths = []
        for f in files:
            ports |= {int(p) for p in tshark(["-r", f, "-Y", "tcp.flags.syn == 1 && tcp.flags.ack == 0",
                                              "-T", "fields", "-e", "tcp.dstport"]).split()}
            out = tshark(["-r", f, "-d", "tcp.port==%d,http2" % ec, "-Y", "http2.headers.path",
                          "-T", "fields", "-e", "http2.headers.path"])
            paths += [l.strip() for l in out.splitlines() if l.strip()]
        assert ports == {ec}, "connections to ports %s in the PCAP, want only %d" % (ports, ec)
        assert "/1k?debug-h2" in paths, "HTTP/2 paths seen: %s" % paths
    with t.check("the key log holds only the 'debug' rule's connection"):
        text = open(keys).read()
        assert text.count("CLIENT_TRAFFIC_SECRET_0") == 1, "key log:\n%s" % text


h.run_test("92_hooks", main)
