#!/usr/bin/env python3
"""Layer 99: shipping sealed archive segments to S3 Object Lock, against a
real Ceph RADOS Gateway started on loopback (tests/e2e/rgw.py).

- A proxy archives traffic into small segments; `sightline archive ship`
  uploads every sealed segment's files under <prefix>/<node>/<y>/<m>/<d>/,
  each with COMPLIANCE retention until seal time + retention, and records
  the version ids the store returned in the shipping journal: the store's
  versions, retention and bytes match the journal and the local files.
- A locked version cannot be deleted until its retention passes.
- Shipping again uploads nothing (idempotent); a crash that lost journal
  lines (a torn tail, whole lines) is recovered by adopting what the store
  already holds: no second version of any key.
- radosgw down: nothing is lost, the backlog is reported, exit 1; shipping
  resumes when it is back.
- A segment whose bytes differ from its signed manifest is not shipped.
- Wrong credentials: refused by the store, the secret never printed.
- Segments over the multipart threshold go up in parts and are locked too.
- HTTPS: the store's certificate is verified (an unknown CA is refused,
  --ca-file accepted); --legal-hold puts a hold on every version.
- Virtual-host addressing (BUCKET.localhost) ships and verifies.
- In the proxy ([archive.s3]): two nodes ship into one bucket as each
  segment is sealed (keys disjoint, one version per key, journal = store);
  each manifest records the versions shipped before it; `archive verify
  s3://` says intact and `archive search s3://` finds the same exchanges
  as a local search, then verify names a version uploaded over a segment and an
  archived version deleted after its retention; kill -9 during multipart
  uploads, four times: after restarts everything is shipped, no file is
  journaled twice, no key has two versions, and the bucket verifies;
  with radosgw down the backlog grows, passes fail with a logged reason and
  /readyz says not ready; when it is back, shipping resumes and recovers.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import rgw as rgwmod  # noqa: E402

BUCKET = "archive-lock"
RETAIN_S = 120          # `archive ship` checks: the store must refuse deletes throughout
PROXY_RETAIN = "1s"     # the proxies' objects: 10 s (the shipper's floor), so a check can outlive it


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def journal(d):
    path = os.path.join(d, "shipping.journal")
    if not os.path.exists(path):
        return []
    return [json.loads(line) for line in open(path) if line.strip()]


wait_for = h.wait_until


def sealed(d):
    return sorted(n for n in os.listdir(d) if n.endswith(".warc.gz"))


def main(t):
    pki = t.pki()
    nginx = t.start_nginx(pki, certs=["valid-ec"], upload=True)
    port = nginx.port("valid-ec")
    key = os.path.join(t.dir, "archive.key")
    cp = subprocess.run([h.sightline_bin(), "archive", "keygen", key], capture_output=True, text=True)
    assert cp.returncode == 0, cp.stderr

    def archive(d, requests, name):
        """A proxy archiving `requests` exchanges into segments of at most
        256 KiB; stopped, so every segment is sealed."""
        sport = h.free_port()
        p = h.Proxy(t, h.make_config(pki, extra='[[listener]]\naddress = "127.0.0.1:%d"\nmode = "static"\n'
                                     'target = "localhost:%d"\n\n[archive]\ndir = "%s"\nkey = "%s"\n'
                                     'all = true\nmax_segment_bytes = 262144\nwriter_id = "%s"\n'
                                     % (sport, port, d, key, name)),
                    name=name, port=sport)
        cp = subprocess.run(["h2load", "-n", str(requests), "-c", "4", "-m", "1", "--h1",
                             "https://127.0.0.1:%d/1k" % sport], capture_output=True, text=True, timeout=120)
        assert cp.returncode == 0 and "%d succeeded" % requests in cp.stdout, cp.stdout[-600:] + cp.stderr[-300:]
        assert p.stop() == 0
        return sealed(d)

    d = os.path.join(t.dir, "node1")
    segs = archive(d, 300, "node1")
    assert len(segs) >= 3, segs

    rgw = rgwmod.Rgw(os.path.join(t.dir, "rgw"), tls=(pki.fullchain("valid-ec"), pki.key("valid-ec"))).start()
    t.note("radosgw up in %.1f s" % sum(rgw.timings.values()) if rgw.timings else "radosgw up")
    rgw.create_lock_bucket(BUCKET)
    url = "%s/%s/fleet" % (rgw.endpoint, BUCKET)
    creds = os.path.join(t.dir, "s3.credentials")
    with open(creds, "w") as f:
        f.write("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n" % (rgw.access_key, rgw.secret_key))
    os.chmod(creds, 0o600)

    def ship(src, *extra, credentials=creds, retain=RETAIN_S):
        cmd = [h.sightline_bin(), "archive", "ship", src, "--s3", url, "--credentials-file", credentials,
               "--retain-seconds", str(retain)] + list(extra)
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                            env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")})
        lines = [json.loads(x) for x in cp.stdout.splitlines() if x.strip()]
        return cp, lines

    def versions():
        return rgw.list_versions(BUCKET, "fleet/")

    with t.check("ship: every sealed segment's five files, locked COMPLIANCE, version ids journaled", fatal=True):
        cp, lines = ship(d)
        assert cp.returncode == 0, cp.stdout + cp.stderr
        assert "shipped %d segment(s)" % len(segs) in cp.stderr, cp.stderr
        j = journal(d)
        files = [e for e in j if "file" in e]
        assert len(files) == 5 * len(segs) == len(lines), (len(files), len(segs), len(lines))
        assert sorted(e["segment"] for e in j if e.get("complete")) == segs, j[-3:]
        vs = {v["key"]: v for v in versions()}
        assert len(vs) == len(files), (len(vs), len(files))
        for e in files:
            sealed_at = json.load(open(os.path.join(d, e["segment"] + ".manifest.json")))["sealed"]
            day = sealed_at[:10].replace("-", "/")  # the seal's date, UTC
            assert e["key"] == "fleet/node1/%s/%s" % (day, e["file"]), e
            v = vs[e["key"]]
            assert v["version_id"] == e["version_id"], (v, e)
            assert e["sha256"] == sha256(os.path.join(d, e["file"])), e
            mode, until = rgw.get_retention(BUCKET, e["key"], e["version_id"])
            assert mode == "COMPLIANCE", (mode, e["key"])
            # Retained until the seal + retention, to the second.
            assert int(rgwmod.parse_iso8601(until)) == int(rgwmod.parse_iso8601(sealed_at[:19] + "Z")) + RETAIN_S, \
                (until, sealed_at)
        # Manifest and signature go last: a manifest in the bucket means the rest is there.
        for s in segs:
            order = [e["file"] for e in files if e["segment"] == s]
            assert order[0] == s and order[-2:] == [s + ".manifest.json", s + ".manifest.json.sig"], order
        seg0 = [e for e in files if e["file"] == segs[0]][0]
        body = rgw.get_object(BUCKET, seg0["key"], seg0["version_id"])
        assert hashlib.sha256(body).hexdigest() == sha256(os.path.join(d, segs[0])), "segment bytes differ"

    with t.check("a locked version cannot be deleted (403) while retained"):
        st = rgw.delete_version(BUCKET, seg0["key"], seg0["version_id"])
        assert st == 403, st
        assert len(versions()) == 5 * len(segs)

    with t.check("shipping again uploads nothing"):
        cp, lines = ship(d)
        assert cp.returncode == 0 and lines == [], cp.stdout + cp.stderr
        assert len(versions()) == 5 * len(segs)

    with t.check("crash recovery: lost journal lines and a torn tail, no second versions"):
        path = os.path.join(d, "shipping.journal")
        text = open(path).read().splitlines(keepends=True)
        # The last segment's completion line and its last two files' lines are
        # gone; half a line is left where the crash cut the write.
        kept = text[:-3]
        with open(path, "w") as f:
            f.writelines(kept)
            f.write(text[-3][: len(text[-3]) // 2])
        cp, lines = ship(d)
        assert cp.returncode == 0, cp.stdout + cp.stderr
        assert "torn last line" in cp.stderr, cp.stderr
        assert len(lines) == 2 and all(x["adopted"] for x in lines), lines
        assert len(versions()) == 5 * len(segs), "a key was uploaded twice"
        assert sorted(e["segment"] for e in journal(d) if e.get("complete")) == segs

    with t.check("radosgw down: backlog reported, nothing lost; shipped when it is back"):
        more = archive(d, 150, "node1")
        new = [s for s in more if s not in segs]
        assert new, more
        rgw.stop_gateway()
        cp, lines = ship(d)
        assert cp.returncode == 1 and lines == [], cp.stdout + cp.stderr
        assert "unreachable" in cp.stderr or "Couldn't connect" in cp.stderr, cp.stderr
        assert "backlog %d segment(s)" % len(new) in cp.stderr, cp.stderr
        rgw.start_gateway()
        cp, lines = ship(d)
        assert cp.returncode == 0, cp.stdout + cp.stderr
        assert len(lines) == 5 * len(new), len(lines)
        assert len(versions()) == 5 * len(more)

    with t.check("a segment that differs from its signed manifest is not shipped"):
        d2 = os.path.join(t.dir, "node2")
        s2 = archive(d2, 60, "node2")
        victim = os.path.join(d2, s2[0])
        os.chmod(victim, 0o600)
        with open(victim, "r+b") as f:
            f.seek(200)
            b = f.read(1)
            f.seek(200)
            f.write(bytes([b[0] ^ 1]))
        cp, lines = ship(d2)
        assert cp.returncode == 1, cp.stdout + cp.stderr
        assert "differs from its manifest" in cp.stderr, cp.stderr
        assert not any(x["segment"] == s2[0] for x in lines), lines
        assert not any(v["key"].endswith(s2[0]) for v in versions())

    with t.check("wrong secret: refused by the store, never printed"):
        bad = os.path.join(t.dir, "bad.credentials")
        with open(bad, "w") as f:
            f.write("%s\nwrong-secret-do-not-print\n" % rgw.access_key)
        os.chmod(bad, 0o600)
        d3 = os.path.join(t.dir, "node3")
        archive(d3, 20, "node3")
        cp, lines = ship(d3, credentials=bad)
        assert cp.returncode == 1 and lines == [], cp.stdout + cp.stderr
        assert "SignatureDoesNotMatch" in cp.stderr, cp.stderr
        assert "wrong-secret" not in cp.stdout + cp.stderr
        assert journal(d3) == []

    with t.check("https: verified against --ca-file; an unknown CA is refused; legal hold set and read back"):
        d7 = os.path.join(t.dir, "node7")
        archive(d7, 20, "node7")
        tls_url = "%s/%s/tls" % (rgw.tls_endpoint, BUCKET)
        base = [h.sightline_bin(), "archive", "ship", d7, "--s3", tls_url, "--credentials-file", creds,
                "--retain-seconds", str(RETAIN_S), "--legal-hold"]
        cp = subprocess.run(base, capture_output=True, text=True, timeout=120)
        assert cp.returncode == 1 and "SSL certificate problem" in cp.stderr, cp.stderr[-500:]
        assert not [e for e in journal(d7) if "file" in e], "journaled without a verified store"
        cp = subprocess.run(base + ["--ca-file", pki.origin_ca], capture_output=True, text=True, timeout=120)
        assert cp.returncode == 0, cp.stdout[-500:] + cp.stderr[-500:]
        lines = [json.loads(x) for x in cp.stdout.splitlines()]
        assert lines and all(x["key"].startswith("tls/node7/") for x in lines), lines[:2]
        for x in lines:
            st, _, body = rgw.s3("GET", "/%s/%s" % (BUCKET, x["key"]),
                                 query=[("legal-hold", ""), ("versionId", x["version_id"])])
            assert st == 200 and b"<Status>ON</Status>" in body, (st, body[:300])

    with t.check("virtual-host addressing: BUCKET.localhost, shipped and verified"):
        d8 = os.path.join(t.dir, "node8")
        archive(d8, 20, "node8")
        vh_url = "http://%s.localhost:%d/vhost" % (BUCKET, rgw.port)
        cp = subprocess.run([h.sightline_bin(), "archive", "ship", d8, "--s3", vh_url, "--virtual-host",
                             "--credentials-file", creds, "--retain-seconds", str(RETAIN_S)],
                            capture_output=True, text=True, timeout=120)
        assert cp.returncode == 0, cp.stdout[-500:] + cp.stderr[-500:]
        keys = [v["key"] for v in rgw.list_versions(BUCKET, "vhost/")]
        assert keys and all(k.startswith("vhost/node8/") for k in keys), keys[:3]
        cp = subprocess.run([h.sightline_bin(), "archive", "verify", "s3://%s/vhost" % BUCKET, "--virtual-host",
                             "--endpoint", "http://localhost:%d" % rgw.port, "--credentials-file", creds,
                             "--key", key + ".pub"], capture_output=True, text=True, timeout=120)
        assert cp.returncode == 0 and "intact" in cp.stdout, cp.stdout[-800:] + cp.stderr[-300:]

    with t.check("multipart: a segment over the threshold goes up in parts, locked"):
        d4 = os.path.join(t.dir, "node4")
        os.makedirs(d4)
        sport = h.free_port()
        p = h.Proxy(t, h.make_config(pki, extra='[[listener]]\naddress = "127.0.0.1:%d"\nmode = "static"\n'
                                     'target = "localhost:%d"\n\n[archive]\ndir = "%s"\nkey = "%s"\n'
                                     'all = true\ncompression = 0\nwriter_id = "node4"\n' % (sport, port, d4, key)),
                    name="node4", port=sport)
        big = os.path.join(t.dir, "big.bin")
        h.write_pseudorandom(big, 6 << 20, seed=4)
        cp = h.curl(["--cacert", pki.root, "--data-binary", "@" + big, "-o", "/dev/null",
                     "--resolve", "localhost:%d:127.0.0.1" % sport, "https://localhost:%d/upload" % sport])
        assert cp.returncode == 0, h.curl_err(cp)
        assert p.stop() == 0
        seg = sealed(d4)[0]
        assert os.path.getsize(os.path.join(d4, seg)) > 5 << 20
        cp, lines = ship(d4, "--multipart-threshold", str(5 << 20), "--part-size", str(5 << 20))
        assert cp.returncode == 0, cp.stdout + cp.stderr
        e = [x for x in lines if x["file"] == seg][0]
        etag = [x for x in journal(d4) if x.get("file") == seg][0]["etag"]
        assert "-" in etag, etag  # a multipart ETag: "<md5 of the parts' md5s>-<parts>"
        mode, _ = rgw.get_retention(BUCKET, e["key"], e["version_id"])
        assert mode == "COMPLIANCE", mode
        body = rgw.get_object(BUCKET, e["key"], e["version_id"])
        assert hashlib.sha256(body).hexdigest() == e["sha256"] == sha256(os.path.join(d4, seg))

    def metric(proxy, name):
        body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % proxy.admin_port, timeout=5).read().decode()
        for line in body.splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError("%s not in /metrics" % name)

    def readyz(proxy):
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/readyz" % proxy.admin_port, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    proxies_url = "%s/%s/proxies" % (rgw.endpoint, BUCKET)

    def shipping_proxy(d, name, extra="", url_flag=False):
        """url_flag: the config names a dead store, `--archive-s3` the real one."""
        sport = h.free_port()
        p = h.Proxy(t, h.make_config(pki, extra='[[listener]]\naddress = "127.0.0.1:%d"\nmode = "static"\n'
                                     'target = "localhost:%d"\n\n[archive]\ndir = "%s"\nkey = "%s"\n'
                                     'all = true\nmax_segment_bytes = 131072\nwriter_id = "%s"\n\n'
                                     '[archive.s3]\nurl = "%s"\ncredentials_file = "%s"\nretention = "%s"\n'
                                     'interval = "1h"\nbackoff_max = "1s"\nready_backlog_bytes = 1\n%s'
                                     % (sport, port, d, key, name,
                                        "http://127.0.0.1:9/dead/x" if url_flag else proxies_url,
                                        creds, PROXY_RETAIN, extra)),
                    args=["--archive-s3", proxies_url] if url_flag else [], name=name, port=sport)
        return p, sport

    def load(sport, n):
        cp = subprocess.run(["h2load", "-n", str(n), "-c", "2", "-m", "1", "--h1",
                             "https://127.0.0.1:%d/1k" % sport], capture_output=True, text=True, timeout=120)
        assert cp.returncode == 0 and "%d succeeded" % n in cp.stdout, cp.stdout[-600:] + cp.stderr[-300:]

    with t.check("in the proxy: two nodes ship each seal at once, keys disjoint; outage: backlog, "
                 "not ready, resumed", fatal=True):
        before = len(rgw.list_versions(BUCKET, "proxies/"))
        pa, porta = shipping_proxy(os.path.join(t.dir, "proxyA"), "proxyA", url_flag=True)
        pb, portb = shipping_proxy(os.path.join(t.dir, "proxyB"), "proxyB", 'delete_local_after = "1s"\n')
        for p, sp in ((pa, porta), (pb, portb)):
            load(sp, 120)
            # Sealed by size while running: shipped on the seal's poke, not the 1 h interval.
            assert wait_for(lambda: metric(p, "sightline_archive_s3_segments_total") >= 2, 30), \
                p.stderr_text()[-2000:]
            assert wait_for(lambda: "archive_shipped" in p.stderr_text(), 10)
        # proxyB keeps local copies 1 s after the store confirmed them: the
        # pass after the next seal deletes them.
        time.sleep(1.2)
        load(portb, 60)
        assert wait_for(lambda: metric(pb, "sightline_archive_s3_local_deleted_total") >= 1, 30), \
            pb.stderr_text()[-2000:]
        keys = [v["key"] for v in rgw.list_versions(BUCKET, "proxies/")]
        for node in ("proxyA", "proxyB"):
            assert any(k.startswith("proxies/%s/" % node) for k in keys), node
        assert len(set(keys)) == len(keys), "a key has two versions"
        assert len(keys) > before
        rgw.stop_gateway()
        load(porta, 120)
        assert wait_for(lambda: metric(pa, "sightline_archive_s3_backlog_segments") >= 1, 30)
        assert wait_for(lambda: metric(pa, "sightline_archive_s3_failed_passes_total") >= 2, 30)
        st, body = readyz(pa)
        assert st == 503 and "archive S3 backlog" in body, (st, body)
        assert wait_for(lambda: "archive_ship_failed" in pa.stderr_text(), 10)
        shipped = metric(pa, "sightline_archive_s3_segments_total")
        rgw.start_gateway()
        # Backoff is capped at 1 s (backoff_max): the next attempt finds the store again.
        assert wait_for(lambda: metric(pa, "sightline_archive_s3_backlog_segments") == 0, 30), \
            pa.stderr_text()[-2000:]
        assert metric(pa, "sightline_archive_s3_segments_total") > shipped
        assert readyz(pa)[0] == 200
        assert wait_for(lambda: "archive_ship_recovered" in pa.stderr_text(), 10)
        # The proxy's journal matches the store, file for file.
        for p, d in ((pa, "proxyA"), (pb, "proxyB")):
            assert p.stop() == 0
        vs = {v["key"]: v["version_id"] for v in rgw.list_versions(BUCKET, "proxies/")}
        for d in ("proxyA", "proxyB"):
            for e in journal(os.path.join(t.dir, d)):
                if "file" in e:
                    assert vs.get(e["key"]) == e["version_id"], e

    def verify_s3(*extra):
        cp = subprocess.run([h.sightline_bin(), "archive", "verify", "s3://%s/proxies" % BUCKET, "--endpoint",
                             rgw.endpoint, "--credentials-file", creds, "--key", key + ".pub"] + list(extra),
                            capture_output=True, text=True, timeout=120)
        return cp

    with t.check("delete_local_after: shipped local copies go with signed tombstones; both copies verify"):
        db = os.path.join(t.dir, "proxyB")
        done = [e for e in journal(db) if e.get("complete")]
        assert done, journal(db)
        deleted = [e["segment"] for e in done if not os.path.exists(os.path.join(db, e["segment"]))]
        assert deleted, (done, sorted(os.listdir(db)))
        pruned = json.load(open(os.path.join(db, "pruned.json")))
        reasons = {e["segment"]: e["reason"] for e in pruned["entries"]}
        for seg in deleted:
            assert reasons.get(seg, "").startswith("shipped to S3 (proxies/proxyB/"), (seg, reasons)
        assert wait_for(lambda: "archive_pruned" in pb.stderr_text(), 10)
        cp = subprocess.run([h.sightline_bin(), "archive", "verify", db, "--key", key + ".pub"],
                            capture_output=True, text=True, timeout=120)
        assert cp.returncode == 0 and "intact" in cp.stdout, cp.stdout[-1500:]
        assert "pruned" in cp.stdout, cp.stdout[-800:]

    with t.check("manifests record the versions shipped before them; verify s3:// says intact"):
        da = os.path.join(t.dir, "proxyA")
        recorded = {}
        for n in sealed(da):
            m = json.load(open(os.path.join(da, n + ".manifest.json")))
            assert "shipped" in m, m.keys()
            for f in m["shipped"]["files"]:
                recorded[f["file"]] = (f["version_id"], n)
        shipped_a = {e["file"]: e["version_id"] for e in journal(da) if "file" in e}
        # Every confirmed upload but those after the last seal is in a manifest.
        assert recorded and all(shipped_a[f] == v for f, (v, _) in recorded.items()), (recorded, shipped_a)
        assert len(recorded) >= len(shipped_a) - 5, (len(recorded), len(shipped_a))
        # A segment whose upload a stop cut off before its manifest: in flight,
        # a note, not a problem (the next start ships it again).
        inflight = "proxies/proxyB/%s/proxyB-20261127T235959Z-999999.warc.gz" % time.strftime("%Y/%m/%d", time.gmtime())
        st, _ = rgw.put_object(BUCKET, inflight, b"partial upload")
        assert st == 200, st
        cp = verify_s3()
        assert cp.returncode == 0 and "intact" in cp.stdout, cp.stdout[-1500:] + cp.stderr
        assert "2 nodes" in cp.stdout, cp.stdout[-300:]
        assert "unsealed" in cp.stdout and "999999" in cp.stdout, cp.stdout[-800:]

    with t.check("archive search s3:// finds the shipped exchanges of both nodes from their sidecars"):
        def search(*args):
            return subprocess.run([h.sightline_bin(), "archive", "search", "s3://%s/proxies" % BUCKET, "--endpoint",
                                   rgw.endpoint, "--credentials-file", creds, "--json"] + list(args),
                                  capture_output=True, text=True, timeout=120)
        cp = search()
        assert cp.returncode == 0, cp.stdout[-500:] + cp.stderr
        remote = [json.loads(x) for x in cp.stdout.splitlines()]
        assert "of 2 nodes" in cp.stderr and "warning" not in cp.stderr, cp.stderr
        for node in ("proxyA", "proxyB"):
            assert any(x["segment"].startswith(node + "/") for x in remote), node
        # The same exchanges as a local search of proxyA's shipped segments.
        local = subprocess.run([h.sightline_bin(), "archive", "search", da, "--json"], capture_output=True,
                               text=True, timeout=120)
        done_a = {e["segment"] for e in journal(da) if e.get("complete")}
        want = {x["id"] for x in map(json.loads, local.stdout.splitlines()) if x["segment"] in done_a}
        got = {x["id"] for x in remote if x["segment"].startswith("proxyA/")}
        assert want and got == want, (len(got), len(want))
        cp = search("--status", "404")
        assert cp.returncode == 1 and cp.stdout == "", cp.stdout[-300:]
        # --text reads bodies: the segments are downloaded for it.
        cp = search("--text", "no-such-text-in-any-body")
        assert cp.returncode == 1 and "exchanges in" in cp.stderr, cp.stderr

    with t.check("verify s3:// names a version uploaded over an archived segment, exits 1"):
        victim = [e for e in journal(da) if "file" in e and e["file"].endswith(".warc.gz")][0]
        data = bytearray(rgw.get_object(BUCKET, victim["key"], victim["version_id"]))
        data[100] ^= 1
        st, _ = rgw.put_object(BUCKET, victim["key"], bytes(data))
        assert st == 200, st
        cp = verify_s3()
        assert cp.returncode == 1, cp.stdout[-1500:] + cp.stderr
        assert "2 versions" in cp.stdout and victim["file"] in cp.stdout, cp.stdout[-1500:]

    with t.check("retention already over at shipping (a late backlog): locked 10 s, then deletable"):
        d5 = os.path.join(t.dir, "node5")
        s5 = archive(d5, 20, "node5")
        time.sleep(1.1)  # seal + 1 s is in the past now
        shipped_at = time.time()
        cp, lines = ship(d5, retain=1)
        assert cp.returncode == 0, cp.stdout + cp.stderr
        e = [x for x in lines if x["file"] == s5[0]][0]
        mode, until = rgw.get_retention(BUCKET, e["key"], e["version_id"])
        until = rgwmod.parse_iso8601(until)
        assert mode == "COMPLIANCE" and shipped_at + 8 <= until <= time.time() + 11, (mode, until, shipped_at)
        assert rgw.delete_version(BUCKET, e["key"], e["version_id"]) == 403
        time.sleep(max(0.0, until - time.time() + 1.5))
        assert rgw.delete_version(BUCKET, e["key"], e["version_id"]) == 204

    with t.check("kill -9 while shipping multipart uploads, 4 times: nothing lost, no key twice, intact"):
        import random
        import signal
        rng = random.Random(10)
        d6 = os.path.join(t.dir, "crash")
        crash_url = "%s/%s/crash" % (rgw.endpoint, BUCKET)
        big6 = os.path.join(t.dir, "big6.bin")
        h.write_pseudorandom(big6, 6 << 20, seed=6)

        def crash_proxy(i):
            sport = h.free_port()
            p = h.Proxy(t, h.make_config(pki, extra='[[listener]]\naddress = "127.0.0.1:%d"\nmode = "static"\n'
                                         'target = "localhost:%d"\n\n[archive]\ndir = "%s"\nkey = "%s"\n'
                                         'all = true\ncompression = 0\nmax_segment_bytes = 5242880\n'
                                         'writer_id = "crash"\n\n[archive.s3]\nurl = "%s"\n'
                                         'credentials_file = "%s"\nretention = "1s"\ninterval = "1h"\n'
                                         'backoff_max = "1s"\nmultipart_threshold = 5242880\n'
                                         'part_size = 5242880\n' % (sport, port, d6, key, crash_url, creds)),
                        name="crash%d" % i, port=sport)
            return p, sport

        def post(sport):
            return h.curl(["--cacert", pki.root, "--data-binary", "@" + big6, "-o", "/dev/null",
                           "--resolve", "localhost:%d:127.0.0.1" % sport, "https://localhost:%d/upload" % sport])

        for i in range(4):
            p, sport = crash_proxy(i)
            # Two 6 MiB exchanges: the second seals the first's segment,
            # whose upload (two parts) starts at once.
            for _ in range(2):
                assert post(sport).returncode == 0
            time.sleep(rng.random() * 0.4)
            os.kill(p.pid, signal.SIGKILL)
            p.stop(sig=None)
        p, sport = crash_proxy(9)
        # Its start sealed what the last crash left open (before it accepted
        # connections): done once every sealed segment is complete.
        def all_shipped():
            done = {e["segment"] for e in journal(d6) if e.get("complete")}
            return set(sealed(d6)) <= done
        assert wait_for(all_shipped, 60), p.stderr_text()[-2000:]
        assert p.stop() == 0
        j = journal(d6)
        files = [e["file"] for e in j if "file" in e]
        assert len(files) == len(set(files)), "a file journaled twice"
        done = {e["segment"] for e in j if e.get("complete")}
        local = set(sealed(d6))
        assert len(local) >= 4 and local <= done, (sorted(local), sorted(done))
        keys = [v["key"] for v in rgw.list_versions(BUCKET, "crash/")]
        assert len(keys) == len(set(keys)), "a key has two versions"
        cp = subprocess.run([h.sightline_bin(), "archive", "verify", "s3://%s/crash" % BUCKET, "--endpoint",
                             rgw.endpoint, "--credentials-file", creds, "--key", key + ".pub"],
                            capture_output=True, text=True, timeout=120)
        assert cp.returncode == 0 and "intact" in cp.stdout, cp.stdout[-1500:] + cp.stderr
        t.note("%d segments, %d adopted after crashes" % (len(done), sum(1 for e in j if e.get("adopted"))))

    with t.check("verify s3://: an archived version deleted once unlocked is named as gone"):
        # The victim's first version, recorded in a later manifest of proxyA.
        vid, in_manifest = recorded[victim["file"]]
        until = rgwmod.parse_iso8601(rgw.get_retention(BUCKET, victim["key"], vid)[1])
        if until - time.time() + 1.5 > 0:
            time.sleep(until - time.time() + 1.5)
        assert rgw.delete_version(BUCKET, victim["key"], vid) == 204
        cp = verify_s3()
        assert cp.returncode == 1, cp.stdout[-1500:] + cp.stderr
        assert "version %s recorded in %s.manifest.json is gone" % (vid, in_manifest) in cp.stdout, cp.stdout[-1500:]

    rgw.stop()


if __name__ == "__main__":
    h.run_test("99_s3", main)
