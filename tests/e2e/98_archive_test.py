#!/usr/bin/env python3
"""Layer 98: the compliance archive in the running proxy.

- Archive everything (--archive-all): HTTP/1.1, HTTP/2, a POST body and a
  plain-HTTP request through the explicit proxy are written as WARC request,
  response and metadata records; bodies are byte-exact, metadata names the
  rule, TLS of both legs, the origin certificate's SHA-256 and verdict; the
  files are standard .warc.gz (Python's gzip reads every member) and
  `sightline archive verify` says intact.
- Archive by policy: only the rule with archive = true is archived.
- Fail closed: on a tmpfs that fills up, archived traffic is refused (CONNECT
  503) while the archive cannot write, the failing exchange is kept and
  written once there is room again, and nothing is lost (verify intact).
- Crashes: kill -9 at arbitrary moments under load, restart; the torn tail
  is cut and logged, and the archive still verifies.
"""

import gzip
import hashlib
import importlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

plain75 = importlib.import_module("75_plain_http_test")


class Mount:
    """A tmpfs the test mounted: unmounted in every path (the harness kills
    registered objects on failures and signals)."""

    def __init__(self, path):
        self.path = path
        h._register(self)

    def kill(self):
        h._unregister(self)
        subprocess.run(["umount", "-l", self.path], capture_output=True)


def members(path):
    """Uncompressed gzip members of a .warc.gz (each must be one record)."""
    data = open(path, "rb").read()
    out = []
    while data:
        d = zlib.decompressobj(31)
        out.append(d.decompress(data))
        data = d.unused_data
    return out


def parse_record(raw):
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "WARC/1.1", lines[0]
    fields = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        fields[k.strip().lower()] = v.strip()
    n = int(fields["content-length"])
    return fields, rest[:n]


def records(d):
    """Every record of every segment in dir d, in file order."""
    out = []
    for name in sorted(os.listdir(d)):
        if name.endswith(".warc.gz") or name.endswith(".warc.gz.open"):
            path = os.path.join(d, name)
            with gzip.open(path) as g:  # the standard library reads the file as one stream
                g.read()
            out += [parse_record(m) for m in members(path)]
    return out


def exchanges(d):
    """{target URI: {'request': block, 'response': block, 'metadata': json}}"""
    recs = records(d)
    by_id = {f["warc-record-id"]: (f, b) for f, b in recs}
    out = {}
    for f, b in recs:
        if f["warc-type"] != "request":
            continue
        ex = {"request": b, "fields": f}
        for f2, b2 in recs:
            if f2.get("warc-concurrent-to") == f["warc-record-id"]:
                ex[f2["warc-type"]] = json.loads(b2) if f2["warc-type"] == "metadata" else b2
        out[f["warc-target-uri"]] = ex
    assert by_id
    return out


def body_of(block):
    return block.partition(b"\r\n\r\n")[2]


def verify(d, key):
    return subprocess.run([h.sightline_bin(), "archive", "verify", d, "--key", key],
                          capture_output=True, text=True, timeout=120)


def status(proxy):
    body = urllib.request.urlopen("http://127.0.0.1:%d/status" % proxy.admin_port, timeout=5).read()
    return json.loads(body)["archive"]


def metric(proxy, name):
    body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % proxy.admin_port, timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("%s not in /metrics" % name)


wait_for = h.wait_until


def main(t):
    pki = t.pki()
    nginx = t.start_nginx(pki, certs=["valid-ec", "valid-rsa"], upload=True)
    port, other_port = nginx.port("valid-ec"), nginx.port("valid-rsa")
    one_k = open(nginx.files["/1k"], "rb").read()
    key = os.path.join(t.dir, "archive.key")
    cp = subprocess.run([h.sightline_bin(), "archive", "keygen", key], capture_output=True, text=True)
    assert cp.returncode == 0, cp.stderr
    pub = key + ".pub"
    plain = plain75.Origin()

    d1 = os.path.join(t.dir, "archive-all")
    proxy = t.start_proxy(pki, args=["--archive-dir", d1, "--archive-key", key, "--archive-all"])

    with t.check("archive everything: h1, h2, a POST body, plain HTTP", fatal=True):
        for extra, q in ((["--http1.1"], "h1"), (["--http2"], "h2")):
            cp = h.curl_via(proxy.port, "https://localhost:%d/1k?%s" % (port, q), cafile=pki.root, extra=extra)
            assert cp.returncode == 0 and cp.stdout == one_k, h.curl_err(cp)
        post = os.path.join(t.dir, "post.bin")
        h.write_pseudorandom(post, 300_000, seed=9)
        cp = h.curl_via(proxy.port, "https://localhost:%d/upload" % port, cafile=pki.root,
                        extra=["--http1.1", "--data-binary", "@" + post])
        assert cp.returncode == 0, h.curl_err(cp)
        cp = h.curl(["--proxy", "http://127.0.0.1:%d" % proxy.port, "http://127.0.0.1:%d/plain" % plain.port])
        assert cp.returncode == 0, h.curl_err(cp)
        assert wait_for(lambda: status(proxy)["written"] >= 4, 10), status(proxy)
        assert proxy.stop() == 0

    with t.check("WARC records: bodies byte-exact, linked, with metadata"):
        ex = exchanges(d1)
        h1 = ex["https://localhost:%d/1k?h1" % port]
        assert body_of(h1["response"]) == one_k, "h1 response body differs"
        assert h1["request"].startswith(b"GET /1k?h1 HTTP/1.1\r\n"), h1["request"][:60]
        m = h1["metadata"]
        assert m["upstream_verdict"] == "ok" and len(m["upstream_cert_sha256"]) == 64, m
        assert m["client_tls"].startswith("TLSv1.3") and m["upstream_tls"].startswith("TLSv1.3"), m
        assert m["response"]["status"] == 200 and m["outcome"] == "complete", m
        # Heads are in the request/response records, not copied into the metadata.
        assert "headers" not in m["request"] and "headers" not in m["response"], m
        h2 = ex["https://localhost:%d/1k?h2" % port]
        assert body_of(h2["response"]) == one_k and h2["metadata"]["protocol"] == "HTTP/2", h2["metadata"]
        up = ex["https://localhost:%d/upload" % port]
        assert body_of(up["request"]) == open(post, "rb").read(), "POST body differs"
        digest = "sha256:" + __import__("base64").b32encode(hashlib.sha256(open(post, "rb").read()).digest()).decode()
        assert up["fields"]["warc-payload-digest"] == digest, up["fields"]
        pl = ex["http://127.0.0.1:%d/plain" % plain.port]
        assert pl["metadata"]["client_tls"] == "" and body_of(pl["response"]).startswith(b"/plain "), pl

    with t.check("sightline archive verify: intact"):
        cp = verify(d1, pub)
        assert cp.returncode == 0 and "intact" in cp.stdout, cp.stdout + cp.stderr

    with t.check("a changed byte in a proxy-written segment: verify names the record, exits 1"):
        import shutil
        bad = os.path.join(t.dir, "archive-tampered")
        shutil.copytree(d1, bad)
        seg = sorted(n for n in os.listdir(bad) if n.endswith(".warc.gz"))[0]
        path = os.path.join(bad, seg)
        ms = members(path)
        # Rewrite the response record holding /1k?h1 with one body byte changed,
        # as a tamperer would (a valid gzip member, the digests left as they were).
        i = next(k for k, m in enumerate(ms) if b"WARC-Type: response" in m and b"/1k?h1" in m)
        m = bytearray(ms[i])
        m[-5] ^= 0x01
        ms[i] = bytes(m)
        os.chmod(path, 0o600)
        with open(path, "wb") as f:
            for m in ms:
                f.write(gzip.compress(m))
        cp = verify(bad, pub)
        assert cp.returncode == 1, cp.stdout + cp.stderr
        assert "modified" in cp.stdout, cp.stdout

    with t.check("archive by policy: the supervised group's traffic to one service only, with the user"):
        d2 = os.path.join(t.dir, "archive-policy")
        pol = os.path.join(t.dir, "archive-policy.toml")
        with open(pol, "w") as f:
            f.write('[[rule]]\nname = "supervised"\naction = "inspect"\ngroups = ["supervised"]\n'
                    'ports = [%d]\narchive = true\n' % port)
        users = os.path.join(t.dir, "users.map")
        with open(users, "w") as f:
            f.write("127.0.0.1/32 alice\n")
        groups = os.path.join(t.dir, "groups")
        with open(groups, "w") as f:
            f.write("supervised: alice\n")
        p2 = t.start_proxy(pki, name="by-policy",
                           args=["--archive-dir", d2, "--archive-key", key, "--policy", pol,
                                 "--user-map", users],
                           extra='[identity]\ngroups = "%s"\n' % groups)
        for pp in (port, other_port):
            cp = h.curl_via(p2.port, "https://localhost:%d/1k?p" % pp, cafile=pki.root, extra=["--http1.1"])
            assert cp.returncode == 0 and cp.stdout == one_k, h.curl_err(cp)
        assert wait_for(lambda: status(p2)["written"] >= 1, 10), status(p2)
        assert p2.stop() == 0
        got = sorted(exchanges(d2))
        assert got == ["https://localhost:%d/1k?p" % port], got
        meta = exchanges(d2)[got[0]]["metadata"]
        assert meta["rule"] == "supervised" and meta["user"] == "alice" and meta["groups"] == ["supervised"], meta
        cp = subprocess.run([h.sightline_bin(), "archive", "search", d2, "--user", "alice"],
                            capture_output=True, text=True, timeout=60)
        assert cp.returncode == 0 and "/1k?p" in cp.stdout, cp.stdout + cp.stderr
        assert verify(d2, pub).returncode == 0

    with t.check("fail closed on a full disk: 503, nothing lost, recovers when there is room"):
        if os.geteuid() != 0:
            raise h.Skip("needs root to mount a small tmpfs")
        small = os.path.join(t.dir, "small")
        os.makedirs(small)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", small], check=True)
        mount = Mount(small)
        d3 = os.path.join(small, "archive")
        p3 = t.start_proxy(pki, name="full-disk", args=["--archive-dir", d3, "--archive-key", key, "--archive-all"])
        cp = h.curl_via(p3.port, "https://localhost:%d/1k?before" % port, cafile=pki.root, extra=["--http1.1"])
        assert cp.returncode == 0, h.curl_err(cp)
        assert wait_for(lambda: status(p3)["written"] >= 1, 10), status(p3)
        # Fill the filesystem, then send a 300 kB POST that cannot be written.
        filler = os.path.join(small, "filler")
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"\0" * 4096) > 0:
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        cp = h.curl_via(p3.port, "https://localhost:%d/upload" % port, cafile=pki.root,
                        extra=["--http1.1", "--data-binary", "@" + post])
        assert cp.returncode == 0, h.curl_err(cp)  # the exchange itself completed
        assert wait_for(lambda: status(p3)["state"] == "failing", 10), status(p3)
        cp = h.curl_via(p3.port, "https://localhost:%d/1k?refused" % port, cafile=pki.root,
                        extra=["--http1.1", "-w", "%{http_connect}"])
        assert cp.returncode != 0 and cp.stdout.endswith(b"503"), (cp.returncode, cp.stdout[-50:], h.curl_err(cp))
        ev = p3.wait_event(lambda e: e.get("event") == "archive_write_failed", 5)
        assert ev and ev.get("on_failure") == "closed", ev
        os.unlink(filler)
        assert wait_for(lambda: status(p3)["state"] == "ok", 10), status(p3)
        cp = h.curl_via(p3.port, "https://localhost:%d/1k?after" % port, cafile=pki.root, extra=["--http1.1"])
        assert cp.returncode == 0 and cp.stdout == one_k, h.curl_err(cp)
        assert wait_for(lambda: status(p3)["written"] >= 3, 10), status(p3)
        st = status(p3)
        assert st["dropped"] == 0 and st["failures"] >= 1, st
        assert p3.stop() == 0
        got = sorted(exchanges(d3))
        want = sorted("https://localhost:%d%s" % (port, p) for p in ("/1k?before", "/upload", "/1k?after"))
        assert got == want, got
        cp = verify(d3, pub)
        assert cp.returncode == 0, cp.stdout + cp.stderr
        mount.kill()

    with t.check("a 64 KiB archive queue under h2load: connections pause and resume, nothing is lost"):
        d5 = os.path.join(t.dir, "archive-small-queue")
        sport = h.free_port()
        p6 = h.Proxy(t, h.make_config(pki, extra='[[listener]]\naddress = "127.0.0.1:%d"\nmode = "static"\n'
                                 'target = "localhost:%d"\n\n[archive]\ndir = "%s"\nkey = "%s"\n'
                                 'all = true\nqueue_bytes = 65536\n' % (sport, port, d5, key)),
                     name="small-queue", port=sport)
        n = 3000
        cp = subprocess.run(["h2load", "-n", str(n), "-c", "16", "-m", "1", "--h1",
                             "https://127.0.0.1:%d/1k" % sport], capture_output=True, text=True, timeout=120)
        assert cp.returncode == 0 and "%d succeeded" % n in cp.stdout, cp.stdout[-800:] + cp.stderr[-400:]
        assert wait_for(lambda: status(p6)["written"] == n, 30), status(p6)
        bp = metric(p6, "sightline_archive_backpressure_total")
        assert p6.stop() == 0
        cp = verify(d5, pub)
        assert cp.returncode == 0, cp.stdout[-1000:]
        segs, recs = re.search(r"(\d+) segments, (\d+) records", cp.stdout).groups()
        assert int(recs) == 3 * n + int(segs), cp.stdout[-300:]  # 3 per exchange, a warcinfo per segment
        t.note("%d pauses" % bp)

    with t.check("kill -9 under load, 3 times: the torn tail is cut and the archive verifies"):
        d4 = os.path.join(t.dir, "archive-crash")
        rng = random.Random(4)
        recovered = 0
        for i in range(3):
            p4 = t.start_proxy(pki, name="crash%d" % i,
                               args=["--archive-dir", d4, "--archive-key", key, "--archive-all"])
            stop = threading.Event()

            def load():
                n = 0
                while not stop.is_set() and n < 400:
                    h.curl_via(p4.port, "https://localhost:%d/1k?c%d-%d" % (port, i, n), cafile=pki.root,
                               extra=["--http1.1"], timeout=10)
                    n += 1
            threads = [threading.Thread(target=load) for _ in range(3)]
            for th in threads:
                th.start()
            wait_for(lambda: status(p4)["written"] >= 5, 20)
            time.sleep(rng.random() * 0.5)
            os.kill(p4.pid, signal.SIGKILL)
            stop.set()
            for th in threads:
                th.join(30)
            p4.stop()
            recovered += sum(1 for n in os.listdir(d4) if n.endswith(".open"))
        p5 = t.start_proxy(pki, name="crash-final",
                           args=["--archive-dir", d4, "--archive-key", key, "--archive-all"])
        assert recovered == 0 or p5.wait_event(lambda e: e.get("event") == "archive_recovered", 10), \
            "no archive_recovered line after a crash"
        assert p5.stop() == 0
        assert not [n for n in os.listdir(d4) if n.endswith(".open")], os.listdir(d4)
        cp = verify(d4, pub)
        assert cp.returncode == 0 and "intact" in cp.stdout, cp.stdout[-2000:] + cp.stderr
        t.note(cp.stdout.strip().splitlines()[-1])

    plain.close()


if __name__ == "__main__":
    h.run_test("98_archive", main)
