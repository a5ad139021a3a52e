"""A real Ceph RADOS Gateway (S3) on loopback, for the end-to-end tests.

    from harness import run_test
    from rgw import Rgw

    def main(t):
        with Rgw(t.dir) as rgw:               # or: rgw = Rgw(t.dir).start()
            rgw.create_lock_bucket("archive")
            st, vid = rgw.put_object("archive", "a.txt", b"hello",
                                     mode="COMPLIANCE", retain_until=time.time() + 60)
            ...

One throwaway single-node cluster per Rgw: a monitor (msgr2 only), one OSD
on memstore (RAM, nothing on disk but the monitor's small store), and
radosgw (beast) on 127.0.0.1:<free port>, all in a data dir made under the
caller's tmpdir. Authentication inside the cluster is off; the gateway has
one S3 user (`access_key` / `secret_key`). Every daemon listens on
127.0.0.1 only.

The daemons run in the foreground (-f) as our own children, each in its own
session, so the fixture knows their exact pids: stop() (also run by
harness.kill_all on failure, exception, SIGTERM/SIGINT/SIGHUP and at exit)
stops exactly those, then removes the data dir (kept with
SIGHTLINE_E2E_KEEP=1). Nothing is ever killed by name.

Daemons started from the main thread also get PR_SET_PDEATHSIG=SIGKILL, so
even a test killed with SIGKILL (no cleanup at all) leaves none behind.

Needs the Debian packages ceph-mon, ceph-osd, radosgw and ceph-common;
without them start() raises harness.Skip (inside `with t.check(...)` that
is a SKIP line). Requests are signed with AWS SigV4 here (stdlib
hmac/hashlib): no curl, and any query form works ('versions',
'versions=', a dict).
"""

import base64
import calendar
import datetime
import hashlib
import hmac
import http.client
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET

from harness import Fatal, Skip, _register, _unregister, _stop_process, free_ports, proc_table, run, wait_port

CEPH_MON = os.environ.get("SIGHTLINE_CEPH_MON", "ceph-mon")
CEPH_OSD = os.environ.get("SIGHTLINE_CEPH_OSD", "ceph-osd")
RADOSGW = os.environ.get("SIGHTLINE_RADOSGW", "radosgw")
RADOSGW_ADMIN = os.environ.get("SIGHTLINE_RADOSGW_ADMIN", "radosgw-admin")
CEPH = os.environ.get("SIGHTLINE_CEPH", "ceph")
MONMAPTOOL = os.environ.get("SIGHTLINE_MONMAPTOOL", "monmaptool")

S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
REGION = "us-east-1"

# Daemon names (ceph entity names) and their log files in <data>/log.
MON, OSD, GW = "mon.a", "osd.0", "client.rgw.a"


def iso8601(ts):
    """Unix time -> '2026-01-02T03:04:05Z' (whole seconds, rounded UP so a
    retention never ends before the time asked for)."""
    secs = int(ts) if ts == int(ts) else int(ts) + 1
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(secs))


def parse_iso8601(text):
    """'2026-01-02T03:04:05[.123]Z' -> Unix time (float)."""
    text = text.strip()
    frac = 0.0
    if text.endswith("Z"):
        text = text[:-1]
    if "." in text:
        text, f = text.split(".", 1)
        frac = float("0." + f) if f.isdigit() else 0.0
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%S")) + frac


def _quote(s, safe="-_.~"):
    return urllib.parse.quote(s, safe=safe)


def _query_pairs(query):
    """query as str ('versions&prefix=a', '?retention=', raw values
    percent-decoded, '+' kept), dict or list of pairs -> [(key, value)]."""
    if not query:
        return []
    if isinstance(query, dict):
        return [(str(k), "" if v is None else str(v)) for k, v in query.items()]
    if not isinstance(query, str):
        return [(str(k), "" if v is None else str(v)) for k, v in query]
    out = []
    for part in query.lstrip("?").split("&"):
        if not part:
            continue
        k, _, v = part.partition("=")
        out.append((urllib.parse.unquote(k), urllib.parse.unquote(v)))
    return out


def _group_members(pgid):
    """Pids whose process group is pgid."""
    return [p for p, _, g in proc_table() if g == pgid]


def _clean_env():
    env = dict(os.environ)
    for k in ("CEPH_ARGS", "CEPH_CONF", "CEPH_KEYRING"):
        env.pop(k, None)
    return env


_PR_SET_PDEATHSIG = 1


def _die_with_parent_fn():
    """preexec_fn: SIGKILL the child when the thread that started it dies,
    so a test killed with SIGKILL (no cleanup runs) leaves no daemons (they
    are in their own sessions: a kill of the test's process group misses
    them). Linux ties this to the parent *thread*, so it is only used for
    daemons started from the main thread."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def fn():
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:          # parent already gone
            os._exit(1)
    return fn


class _Daemon:
    """One ceph daemon run in the foreground in its own session; stdout and
    stderr (where errors before its log is set up go) to log/<name>.out."""

    def __init__(self, name, cmd, out_path):
        self.name = name
        self.out_path = out_path
        self._out = open(out_path, "ab")
        pre = None
        if threading.current_thread() is threading.main_thread():
            pre = _die_with_parent_fn()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     env=_clean_env(), preexec_fn=pre)
        self.pid = self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, grace=5.0):
        """sig, SIGKILL to its process group after grace; reaped. Also kills
        anything left in its process group (it leads it: start_new_session).
        Returns the exit code (None if it had to be killed)."""
        try:
            rc = _stop_process(self.proc, sig, grace)
        finally:
            # Members of the group keep the pgid from being reused, so a
            # group found here is still the one we started.
            for _ in range(3):
                left = [p for p in _group_members(self.pid) if p != os.getpid()]
                if not left:
                    break
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    break
                time.sleep(0.05)
            try:
                self._out.close()
            except OSError:
                pass
        return rc


class Rgw:
    """A throwaway Ceph cluster + radosgw on loopback (see the module doc)."""

    def __init__(self, tmpdir, start_timeout=30.0, keep=None, access_key="sightline-ak",
                 secret_key="sightline-sk-0123456789abcdef", uid="tester", tls=None):
        """tls: (certificate chain PEM, key PEM) to also serve HTTPS on
        `tls_port` (tls_endpoint: https://localhost:PORT)."""
        self.tmpdir = tmpdir
        self.tls = tls
        self.tls_port = None
        self.tls_endpoint = None
        self.start_timeout = start_timeout
        self.keep = bool(os.environ.get("SIGHTLINE_E2E_KEEP")) if keep is None else keep
        self.access_key = access_key
        self.secret_key = secret_key
        self.uid = uid
        self.dir = None                 # data dir (made by start())
        self._stopped = False
        self.conf = None
        self.mon_port = self.port = None
        self.endpoint = None
        self.daemons = {}               # name -> _Daemon (running or stopped, not yet reaped)
        self.all_pids = []              # every daemon pid ever started (for checks)
        self.timings = {}               # step -> seconds, of the last start()/start_gateway()
        self._lock = threading.RLock()
        self._registered = False

    # ------------------------------------------------------------------
    # lifecycle

    def __enter__(self):
        if self.dir is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def start(self):
        """Build the cluster and start mon, osd and radosgw; returns self once
        the gateway answers and the S3 user exists. Raises Skip without the
        ceph binaries, Fatal (with the relevant log tails) on any failure,
        after stopping whatever it had started."""
        if self.dir is not None:
            raise Fatal("Rgw.start() called twice (make a new Rgw)")
        missing = [b for b in (CEPH_MON, CEPH_OSD, RADOSGW, RADOSGW_ADMIN, CEPH, MONMAPTOOL)
                   if not shutil.which(b)]
        if missing:
            raise Skip("radosgw not installed (missing %s; Debian packages ceph-mon ceph-osd "
                       "radosgw ceph-common)" % ", ".join(missing))
        t0 = time.monotonic()
        self.deadline = t0 + self.start_timeout
        self.timings = {}
        os.makedirs(self.tmpdir, exist_ok=True)
        self.dir = tempfile.mkdtemp(prefix="rgw-", dir=self.tmpdir)
        with self._lock:
            _register(self)
            self._registered = True
        try:
            self._start()
        except BaseException as e:
            tails = self.log_tails() if not isinstance(e, Fatal) else ""
            self.stop()
            if isinstance(e, (Fatal, Skip, KeyboardInterrupt, SystemExit)):
                raise
            raise Fatal("radosgw start failed: %s: %s\n%s" % (type(e).__name__, e, tails)) from e
        self.timings["total"] = time.monotonic() - t0
        return self

    def _step(self, name, t0):
        self.timings[name] = time.monotonic() - t0
        return time.monotonic()

    def _left(self):
        return max(0.5, self.deadline - time.monotonic())

    def _start(self):
        d = self.dir
        for sub in ("mon", "osd0", "run", "log", "rgw", "crash"):
            os.makedirs(os.path.join(d, sub))
        self.mon_port, self.port, tls_port = free_ports(3)
        self.endpoint = "http://127.0.0.1:%d" % self.port
        ssl = ""
        if self.tls:
            self.tls_port = tls_port
            self.tls_endpoint = "https://localhost:%d" % tls_port
            ssl = " ssl_endpoint=127.0.0.1:%d ssl_certificate=%s ssl_private_key=%s" % (
                tls_port, self.tls[0], self.tls[1])
        fsid = str(uuid.uuid4())
        # Unix socket paths are limited to 107 bytes: no admin socket when
        # the caller's dir is deep (they are only for debugging).
        asok = os.path.join(d, "run", "$name.asok")
        if len(os.path.join(d, "run", GW + ".asok")) > 100:
            asok = ""
        self.conf = os.path.join(d, "ceph.conf")
        with open(self.conf, "w") as f:
            f.write(_CONF % {"fsid": fsid, "d": d, "mon_port": self.mon_port,
                             "rgw_port": self.port, "asok": asok, "ssl": ssl})
        t = time.monotonic()
        monmap = os.path.join(d, "monmap")
        self._run([MONMAPTOOL, "--create", "--addv", "a", "[v2:127.0.0.1:%d]" % self.mon_port,
                   "--fsid", fsid, monmap])
        self._run([CEPH_MON, "--mkfs", "-i", "a", "--monmap", monmap, "-c", self.conf], MON)
        t = self._step("mon mkfs", t)
        self._spawn(MON, [CEPH_MON, "-f", "-i", "a", "-c", self.conf])
        if not wait_port("127.0.0.1", self.mon_port, self._left(), self.daemons[MON].proc):
            raise Fatal("ceph-mon not listening on 127.0.0.1:%d (rc=%s)%s" % (
                self.mon_port, self.daemons[MON].proc.poll(), self._why(MON)))
        t = self._step("mon up", t)
        cp = self._run([CEPH, "-c", self.conf, "--connect-timeout", "%d" % self._left(),
                        "osd", "create"], MON)
        if cp.stdout.strip() != b"0":
            raise Fatal("'ceph osd create' printed %r, expected 0" % cp.stdout[:200])
        t = self._step("osd create", t)
        self._run([CEPH_OSD, "-i", "0", "--mkfs", "-c", self.conf], OSD)
        t = self._step("osd mkfs", t)
        self._spawn(OSD, [CEPH_OSD, "-f", "-i", "0", "-c", self.conf])
        self._spawn(GW, [RADOSGW, "-f", "-c", self.conf, "-n", GW])
        self._wait_gateway()
        if self.tls_port and not wait_port("127.0.0.1", self.tls_port, self._left(), self.daemons[GW].proc):
            raise Fatal("radosgw not serving TLS on 127.0.0.1:%d%s" % (self.tls_port, self._why(GW)))
        t = self._step("gateway up", t)
        self._run([RADOSGW_ADMIN, "-c", self.conf, "user", "create", "--uid", self.uid,
                   "--display-name", self.uid, "--access-key", self.access_key,
                   "--secret-key", self.secret_key], GW)
        t = self._step("user create", t)

    def _run(self, cmd, logname=None):
        """A short setup command, bounded by the start deadline; Fatal with
        its output (and the daemon log `logname`) on failure."""
        timeout = self._left()
        try:
            cp = run(cmd, timeout=timeout, env=_clean_env(), cwd=self.dir)
        except AssertionError:
            raise Fatal("%s timed out after %.0fs%s" % (
                " ".join(cmd), timeout, self._why(logname) if logname else ""))
        if cp.returncode != 0:
            raise Fatal("%s failed (rc=%d):\n%s%s" % (
                " ".join(cmd), cp.returncode,
                (cp.stdout + cp.stderr).decode(errors="replace")[-2000:],
                self._why(logname) if logname else ""))
        return cp

    def _spawn(self, name, cmd):
        with self._lock:
            if self._stopped:
                raise Fatal("Rgw stopped")
            d = _Daemon(name, cmd, os.path.join(self.dir, "log", name + ".out"))
            self.daemons[name] = d
            self.all_pids.append(d.pid)
        return d

    def _gateway_answers(self, timeout=1.0):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request("GET", "/")
            r = c.getresponse()
            r.read()
            return r.status == 200
        except OSError:
            return False
        finally:
            c.close()

    def _wait_gateway(self):
        """Poll GET / until 200; Fatal naming the first daemon that exited,
        or with all log tails on the deadline."""
        while True:
            for name in (MON, OSD, GW):
                dm = self.daemons.get(name)
                if dm is not None and not dm.alive():
                    raise Fatal("%s exited (rc=%s) while radosgw was starting%s" % (
                        name, dm.proc.returncode, self._why(name)))
            if self._gateway_answers():
                return
            if time.monotonic() >= self.deadline:
                raise Fatal("radosgw not answering 200 on %s within %.0fs\n%s" % (
                    self.endpoint, self.start_timeout, self.log_tails()))
            time.sleep(0.05)

    # ------------------------------------------------------------------
    # stopping

    def stop_gateway(self, sig=signal.SIGTERM, grace=5.0):
        """Stop only radosgw (its port then refuses connections); the
        cluster keeps running. Returns its exit code (None: killed)."""
        with self._lock:
            d = self.daemons.get(GW)
            if d is None:
                return None
            rc = d.stop(sig, grace)
            del self.daemons[GW]
            return rc

    def start_gateway(self, timeout=30.0):
        """Start radosgw again on the same port; returns once it answers."""
        if self.dir is None or self._stopped:
            raise Fatal("Rgw not running")
        if GW in self.daemons:
            raise Fatal("radosgw already running")
        t0 = time.monotonic()
        self.deadline = t0 + timeout
        self._spawn(GW, [RADOSGW, "-f", "-c", self.conf, "-n", GW])
        self._wait_gateway()
        self.timings["gateway restart"] = time.monotonic() - t0
        return self

    def stop(self, grace=5.0):
        """Stop exactly the daemons this fixture started (radosgw, osd, mon,
        in that order: clients before the monitor) and remove the data dir.
        Idempotent; also harness's kill() hook."""
        with self._lock:
            self._stopped = True
            for name in (GW, OSD, MON):
                d = self.daemons.get(name)
                if d is not None:
                    d.stop(signal.SIGTERM, grace)
                    del self.daemons[name]
            if self.dir is not None and not self.keep:
                shutil.rmtree(self.dir, ignore_errors=True)
            if self._registered:
                _unregister(self)
                self._registered = False

    kill = stop         # harness.kill_all() calls kill()

    def pids(self):
        """{name: pid} of the daemons running now."""
        with self._lock:
            return {n: d.pid for n, d in self.daemons.items() if d.alive()}

    # ------------------------------------------------------------------
    # logs

    def log_tail(self, name, n=30):
        """Last n lines of a daemon's log (its .out file, then its .log)."""
        out = []
        if self.dir is None:
            return ""
        for suffix in (".out", ".log"):
            p = os.path.join(self.dir, "log", name + suffix)
            try:
                with open(p, errors="replace") as f:
                    lines = f.read().splitlines()[-n:]
            except OSError:
                continue
            if lines:
                out.append("---- %s ----" % p)
                out += lines
        return "\n".join(out)

    def log_tails(self, n=15):
        return "\n".join(t for t in (self.log_tail(x, n) for x in (MON, OSD, GW)) if t)

    def _why(self, name):
        tail = self.log_tail(name) if name else ""
        return ("\n" + tail) if tail else ""

    # ------------------------------------------------------------------
    # S3

    def s3(self, method, path, body=b"", headers=None, query="", timeout=30.0):
        """One SigV4-signed request (path style: '/bucket/key', unencoded;
        query as 'a=1&b' or a dict/list of pairs). Returns (status, headers
        with lower-case names, body). Connection errors propagate (OSError)."""
        if self.port is None:
            raise Fatal("Rgw not started")
        if isinstance(body, str):
            body = body.encode()
        body = body or b""
        host = "127.0.0.1:%d" % self.port
        uri = _quote(path if path.startswith("/") else "/" + path, safe="/-_.~")
        pairs = sorted((_quote(k), _quote(v)) for k, v in _query_pairs(query))
        qs = "&".join("%s=%s" % kv for kv in pairs)
        now = datetime.datetime.now(datetime.timezone.utc)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        hdrs = {}
        for k, v in (headers or {}).items():
            hdrs[k.lower()] = str(v).strip()
        hdrs["host"] = host
        hdrs["x-amz-date"] = amz_date
        hdrs.setdefault("x-amz-content-sha256", hashlib.sha256(body).hexdigest())
        if body or method in ("PUT", "POST"):
            hdrs["content-length"] = str(len(body))
        signed = sorted(hdrs)
        canonical = "\n".join([
            method, uri, qs,
            "".join("%s:%s\n" % (k, " ".join(hdrs[k].split())) for k in signed),
            ";".join(signed), hdrs["x-amz-content-sha256"]])
        scope = "%s/%s/s3/aws4_request" % (day, REGION)
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        key = ("AWS4" + self.secret_key).encode()
        for part in (day, REGION, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        sig = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        hdrs["authorization"] = "AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s" % (
            self.access_key, scope, ";".join(signed), sig)
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.putrequest(method, uri + ("?" + qs if qs else ""), skip_host=True,
                         skip_accept_encoding=True)
            for k, v in hdrs.items():
                c.putheader(k, v)
            c.endheaders(body if body else None)
            r = c.getresponse()
            data = r.read()
            rh = {}
            for k, v in r.getheaders():
                k = k.lower()
                rh[k] = rh[k] + ", " + v if k in rh else v
            return r.status, rh, data
        finally:
            c.close()

    @staticmethod
    def _err(what, status, body):
        return AssertionError("%s: HTTP %d %s" % (what, status, body.decode(errors="replace")[:500]))

    def create_bucket(self, name, lock=False):
        st, _, b = self.s3("PUT", "/" + name, headers={
            "x-amz-bucket-object-lock-enabled": "true"} if lock else None)
        if st != 200:
            raise self._err("create bucket %s" % name, st, b)

    def create_lock_bucket(self, name):
        """A bucket with Object Lock enabled (which implies versioning)."""
        self.create_bucket(name, lock=True)

    def put_object(self, bucket, key, data, headers=None, mode=None, retain_until=None):
        """PUT with Content-MD5. mode ('COMPLIANCE'/'GOVERNANCE') and
        retain_until (Unix time or ISO 8601 text) add the object-lock
        headers. Returns (status, version_id or None)."""
        if isinstance(data, str):
            data = data.encode()
        h = {"content-md5": base64.b64encode(hashlib.md5(data).digest()).decode()}
        if mode:
            h["x-amz-object-lock-mode"] = mode
        if retain_until is not None:
            h["x-amz-object-lock-retain-until-date"] = (
                retain_until if isinstance(retain_until, str) else iso8601(retain_until))
        h.update({k.lower(): v for k, v in (headers or {}).items()})
        st, rh, _ = self.s3("PUT", "/%s/%s" % (bucket, key), body=data, headers=h)
        return st, rh.get("x-amz-version-id")

    def get_object(self, bucket, key, version_id=None):
        st, _, b = self.s3("GET", "/%s/%s" % (bucket, key),
                           query={"versionId": version_id} if version_id else "")
        if st != 200:
            raise self._err("GET %s/%s (version %s)" % (bucket, key, version_id), st, b)
        return b

    def delete_version(self, bucket, key, version_id):
        """DELETE one version; the status (204 done, 403 locked...)."""
        return self.s3("DELETE", "/%s/%s" % (bucket, key), query={"versionId": version_id})[0]

    def get_retention(self, bucket, key, version_id=None):
        """(mode, retain_until text) or None when the version has none."""
        q = [("retention", "")] + ([("versionId", version_id)] if version_id else [])
        st, _, b = self.s3("GET", "/%s/%s" % (bucket, key), query=q)
        # AWS says NoSuchObjectLockConfiguration, RGW (16.2)
        # ObjectLockConfigurationNotFoundError; NoSuchKey is an error.
        if st == 404 and (b"NoSuchObjectLockConfiguration" in b
                          or b"ObjectLockConfigurationNotFoundError" in b):
            return None
        if st != 200:
            raise self._err("GET retention %s/%s (version %s)" % (bucket, key, version_id), st, b)
        root = ET.fromstring(b)
        mode = root.findtext(S3_NS + "Mode") or root.findtext("Mode")
        until = root.findtext(S3_NS + "RetainUntilDate") or root.findtext("RetainUntilDate")
        if not mode and not until:
            return None
        return mode, until

    def list_versions(self, bucket, prefix="", delete_markers=False):
        """Every object version under prefix (all pages): dicts with key,
        version_id, size, etag (unquoted), is_latest, last_modified; with
        delete_markers=True also the delete markers (delete_marker=True,
        size 0, etag None)."""
        out = []
        marker = None
        while True:
            q = [("versions", ""), ("prefix", prefix)]
            if marker:
                q += [("key-marker", marker[0]), ("version-id-marker", marker[1])]
            st, _, b = self.s3("GET", "/" + bucket, query=q)
            if st != 200:
                raise self._err("list versions %s prefix %r" % (bucket, prefix), st, b)
            root = ET.fromstring(b)
            for el in root:
                tag = el.tag.replace(S3_NS, "")
                if tag not in ("Version", "DeleteMarker"):
                    continue
                if tag == "DeleteMarker" and not delete_markers:
                    continue

                def text(n, el=el):
                    return el.findtext(S3_NS + n) or el.findtext(n)
                etag = text("ETag")
                out.append({"key": text("Key"), "version_id": text("VersionId"),
                            "size": int(text("Size") or 0),
                            "etag": etag.strip('"') if etag else None,
                            "is_latest": text("IsLatest") == "true",
                            "last_modified": text("LastModified"),
                            "delete_marker": tag == "DeleteMarker"})
            if (root.findtext(S3_NS + "IsTruncated") or "") != "true":
                return out
            nk = root.findtext(S3_NS + "NextKeyMarker")
            nv = root.findtext(S3_NS + "NextVersionIdMarker")
            if not nk or (nk, nv) == marker:
                return out
            marker = (nk, nv or "")

    def admin(self, *args, timeout=30.0):
        """radosgw-admin ARGS against this cluster (CompletedProcess)."""
        return run([RADOSGW_ADMIN, "-c", self.conf] + [str(a) for a in args], timeout=timeout,
                   env=_clean_env())


# The cluster's config. Everything (sockets, pid files, logs, crash dumps,
# keyrings) stays inside the data dir; every daemon binds 127.0.0.1 only.
_CONF = """\
[global]
fsid = %(fsid)s
mon host = v2:127.0.0.1:%(mon_port)d
public addr = 127.0.0.1
cluster addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc
mon allow pool size one = true
mon allow pool delete = true
mon data avail crit = 0
mon data avail warn = 0
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
run dir = %(d)s/run
admin socket = %(asok)s
log file = %(d)s/log/$name.log
pid file = %(d)s/run/$name.pid
crash dir = %(d)s/crash
keyring = %(d)s/keyring
[mon.a]
mon data = %(d)s/mon
paxos propose interval = 0.05
paxos min wait = 0.01
[osd.0]
osd objectstore = memstore
osd data = %(d)s/osd0
memstore device bytes = 536870912
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:%(rgw_port)d%(ssl)s
rgw data = %(d)s/rgw
# Virtual-host style: BUCKET.localhost (curl resolves *.localhost to loopback).
rgw dns name = localhost
"""
