"""Shared harness for the sightline end-to-end tests (Python 3 stdlib only).

Each test script does:

    from harness import run_test
    def main(t):            # t: TestRun
        pki = t.pki()
        origin = t.start_nginx(pki)
        proxy = t.start_proxy(pki)
        with t.check("something"):
            assert ..., "message"
    run_test("NN_name", main)

Every process the harness starts (nginx, sightline, the upload sink thread)
is stopped in all paths: normal exit, assertion failure, exception, SIGTERM
or SIGINT to the test, and at interpreter exit.

Environment:
    SIGHTLINE_BIN        path to the sightline binary (default: SRC/build/sightline)
    SIGHTLINE_SRC        repository root (default: two levels above this file)
    SIGHTLINE_E2E_KEEP   if set, keep the per-test temp dir and print its path
"""

import atexit
import contextlib
import hashlib
import http.server
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("SIGHTLINE_SRC") or os.path.dirname(os.path.dirname(HERE))
NGINX = os.environ.get("SIGHTLINE_NGINX", "/usr/sbin/nginx")

# Cert names produced by tests/pki/make-test-pki (fixed by contract).
ALL_CERTS = ["valid-ec", "valid-rsa", "expired", "notyetvalid", "wronghost",
             "selfsigned", "unknownroot", "revoked", "manynames"]

BIG_SIZE = 50 * 1024 * 1024
KIB_SIZE = 1024
UPLOAD_SIZE = 20 * 1024 * 1024


class Fatal(Exception):
    """Setup failure: the test cannot continue."""


# --------------------------------------------------------------------------
# process registry and cleanup

_live = []            # list of objects with .kill()
_live_lock = threading.Lock()


def _register(obj):
    with _live_lock:
        _live.append(obj)


def _unregister(obj):
    with _live_lock:
        if obj in _live:
            _live.remove(obj)


def kill_all():
    with _live_lock:
        objs = list(reversed(_live))
    for o in objs:
        try:
            o.kill()
        except Exception:
            pass


def _on_signal(signum, _frame):
    # Turn the signal into SystemExit so finally blocks and atexit run.
    raise SystemExit(128 + signum)


atexit.register(kill_all)
for _s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(_s, _on_signal)


def _stop_process(proc, term_signal=signal.SIGTERM, grace=5.0):
    """Stop a Popen started with start_new_session=True. Returns its exit code."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        proc.send_signal(term_signal)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    # The child leads its own process group (start_new_session): kill that
    # group, which holds only what we started (e.g. nginx workers).
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        return proc.wait(5)
    except subprocess.TimeoutExpired:
        return None


# --------------------------------------------------------------------------
# small utilities

def free_ports(n, host="127.0.0.1"):
    """n distinct free TCP ports on host (bind port 0, all held until the end)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def free_port(host="127.0.0.1"):
    return free_ports(1, host)[0]


def wait_port(host, port, timeout=10.0, proc=None):
    """Poll until a TCP connect to (host, port) succeeds. Returns True/False.
    If proc is given and exits, return False early."""
    deadline = time.monotonic() + timeout
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(0.5)
        try:
            s.connect((host, port))
            return True
        except OSError:
            time.sleep(0.05)
        finally:
            s.close()
    return False


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def write_pseudorandom(path, size, seed):
    """Deterministic pseudo-random content (same seed -> same bytes)."""
    rng = random.Random(seed)
    chunk = 1 << 20
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(chunk, left)
            f.write(rng.randbytes(n))
            left -= n


def run(cmd, timeout=60, input=None, check=False, **kw):
    """subprocess.run with capture; never hangs past timeout."""
    try:
        cp = subprocess.run(cmd, input=input, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("command timed out after %ss: %s" % (timeout, " ".join(map(str, cmd)))) from e
    if check and cp.returncode != 0:
        raise Fatal("command failed (rc=%d): %s\n%s" % (
            cp.returncode, " ".join(map(str, cmd)), cp.stderr.decode(errors="replace")[-2000:]))
    return cp


def hostport(host, port):
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def proc_table():
    """(pid, ppid, pgid) of every process, from /proc/PID/stat."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
            fields = st[st.rindex(")") + 2:].split()
            out.append((int(d), int(fields[1]), int(fields[2])))
        except (OSError, ValueError, IndexError):
            continue
    return out


def proc_tree(pid):
    """pid plus all its descendants (by /proc ppid)."""
    children = {}
    for p, ppid, _ in proc_table():
        children.setdefault(ppid, []).append(p)
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def wait_until(pred, timeout, interval=0.05):
    """pred() once true, polled every `interval` up to `timeout` seconds;
    then its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def rss_bytes(pid):
    """Sum of VmRSS over pid and its descendants."""
    total = 0
    for p in proc_tree(pid):
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def rchar(pid):
    """Sum of /proc/PID/io rchar over pid and its descendants."""
    total = 0
    for p in proc_tree(pid):
        try:
            with open("/proc/%d/io" % p) as f:
                for line in f:
                    if line.startswith("rchar:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


# --------------------------------------------------------------------------
# PKI

class Pki:
    """Origin test PKI (tests/pki/make-test-pki) + enterprise CA (ca/sightline-ca)."""

    def __init__(self, base):
        self.origin_dir = os.path.join(base, "origin-pki")
        self.ent_dir = os.path.join(base, "enterprise-ca")
        gen = os.path.join(SRC, "tests", "pki", "make-test-pki")
        ca = os.path.join(SRC, "ca", "sightline-ca")
        for script in (gen, ca):
            if not os.path.exists(script):
                raise Fatal("missing PKI script %s" % script)
        self.base = base
        run([gen, self.origin_dir], timeout=120, check=True)
        run([ca, "--out", self.ent_dir], timeout=120, check=True)
        self.origin_ca = os.path.join(self.origin_dir, "origin-ca.crt")
        self.origin_crl = os.path.join(self.origin_dir, "origin-ca.crl")
        self.root = os.path.join(self.ent_dir, "root.crt")
        self.ca_cert = os.path.join(self.ent_dir, "ca.crt")
        self.ca_key = os.path.join(self.ent_dir, "ca.key")
        need = [self.origin_ca, self.origin_crl, self.root, self.ca_cert, self.ca_key]
        for n in ALL_CERTS:
            need += [self.crt(n), self.key(n), self.fullchain(n)]
        missing = [p for p in need if not os.path.exists(p)]
        if missing:
            raise Fatal("PKI scripts did not produce: %s" % ", ".join(missing))
        # The proxy insists on 0600; make sure a lax umask in the script
        # doesn't make every test fail for an unrelated reason.
        os.chmod(self.ca_key, 0o600)
        self.ca_subject = cert_field(self.ca_cert, "subject")
        self.root_subject = cert_field(self.root, "subject")

    def extra_enterprise_ca(self, name, *args):
        """Another enterprise CA made by ca/sightline-ca with extra options
        (e.g. '--intermediate'). Returns an EnterpriseCa."""
        d = os.path.join(self.base, "enterprise-ca-" + name)
        run([os.path.join(SRC, "ca", "sightline-ca"), "--out", d] + list(args),
            timeout=120, check=True)
        return EnterpriseCa(d)

    def crt(self, name):
        return os.path.join(self.origin_dir, name + ".crt")

    def key(self, name):
        return os.path.join(self.origin_dir, name + ".key")

    def fullchain(self, name):
        return os.path.join(self.origin_dir, name + ".fullchain.crt")


class EnterpriseCa:
    """An enterprise CA directory: root.crt (clients), ca.crt + ca.key (proxy)."""

    def __init__(self, d):
        self.dir = d
        self.root = os.path.join(d, "root.crt")
        self.ca_cert = os.path.join(d, "ca.crt")
        self.ca_key = os.path.join(d, "ca.key")
        for p in (self.root, self.ca_cert, self.ca_key):
            if not os.path.exists(p):
                raise Fatal("ca/sightline-ca did not produce %s" % p)
        os.chmod(self.ca_key, 0o600)
        self.ca_subject = cert_field(self.ca_cert, "subject")
        self.root_subject = cert_field(self.root, "subject")


def cert_field(path_or_pem, field):
    """'subject' or 'issuer' of the first cert, RFC 2253 form."""
    return cert_info(path_or_pem)[field]


def cert_info(path_or_pem):
    """Parse a certificate (path or PEM text) with the openssl CLI.
    Returns dict: subject, issuer, cn, sans (frozenset of str), key_type
    ('EC'|'RSA'|other), key_bits (int or None), text."""
    if "-----BEGIN" not in path_or_pem:
        with open(path_or_pem) as f:
            pem = f.read()
    else:
        pem = path_or_pem
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", pem, re.S)
    if not m:
        raise AssertionError("no PEM certificate found")
    pem = m.group(0) + "\n"
    cp = run(["openssl", "x509", "-noout", "-nameopt", "RFC2253", "-subject", "-issuer",
              "-text"], input=pem.encode(), timeout=30)
    if cp.returncode != 0:
        raise AssertionError("openssl x509 failed: %s" % cp.stderr.decode(errors="replace"))
    out = cp.stdout.decode(errors="replace")
    subject = re.search(r"^subject=(.*)$", out, re.M).group(1).strip()
    issuer = re.search(r"^issuer=(.*)$", out, re.M).group(1).strip()
    cn = None
    mcn = re.search(r"(?:^|,)CN=((?:[^,\\]|\\.)*)", subject)
    if mcn:
        cn = mcn.group(1)
    sans = frozenset()
    msan = re.search(r"X509v3 Subject Alternative Name:[^\n]*\n\s*([^\n]*)", out)
    if msan:
        sans = frozenset(s.strip() for s in msan.group(1).split(",") if s.strip())
    if "id-ecPublicKey" in out:
        key_type = "EC"
    elif "rsaEncryption" in out:
        key_type = "RSA"
    else:
        mk = re.search(r"Public Key Algorithm:\s*(\S+)", out)
        key_type = mk.group(1) if mk else "unknown"
    mb = re.search(r"Public-Key:\s*\((\d+) bit\)", out)
    key_bits = int(mb.group(1)) if mb else None
    return {"subject": subject, "issuer": issuer, "cn": cn, "sans": sans,
            "key_type": key_type, "key_bits": key_bits, "text": out, "pem": pem}


def pem_certs(text):
    return re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)


# --------------------------------------------------------------------------
# upload sink (nginx proxies POST /upload here; replies with sha256+length)

class _SinkHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        h = hashlib.sha256()
        n = 0
        length = self.headers.get("Content-Length")
        if length is not None:
            left = int(length)
            while left > 0:
                b = self.rfile.read(min(left, 1 << 20))
                if not b:
                    break
                h.update(b)
                n += len(b)
                left -= len(b)
        elif self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                b = self.rfile.read(size)
                h.update(b)
                n += len(b)
                self.rfile.readline()
        body = json.dumps({"sha256": h.hexdigest(), "length": n}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


class _LocalHttpServer:
    """An http.server on 127.0.0.1 (a free port) serving from a thread,
    stopped with every other process the harness started."""

    def __init__(self, handler):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        _register(self)

    def kill(self):
        _unregister(self)
        self.server.shutdown()
        self.server.server_close()


class UploadSink(_LocalHttpServer):
    def __init__(self):
        super().__init__(_SinkHandler)


class PlainOrigin(_LocalHttpServer):
    """A plain-HTTP/1.1 origin on 127.0.0.1 answering every GET with `body`;
    `seen` holds each request's headers ({lower-case name: value})."""

    def __init__(self, body):
        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                seen.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        super().__init__(Handler)


# --------------------------------------------------------------------------
# nginx origin

class Nginx:
    """One nginx, one TLS server per cert, each on its own 127.0.0.1 port and
    its own [::1] port. Locations: /1k, /big, /upload (POST, sha256 reply)."""

    def __init__(self, t, pki, certs=ALL_CERTS, big=False, upload=False):
        self.dir = os.path.join(t.dir, "nginx")
        www = os.path.join(self.dir, "www")
        tmp = os.path.join(self.dir, "tmp")
        os.makedirs(www)
        os.makedirs(tmp)
        self.files = {}
        p = os.path.join(www, "1k")
        write_pseudorandom(p, KIB_SIZE, seed=1)
        self.files["/1k"] = p
        if big:
            p = os.path.join(www, "big")
            write_pseudorandom(p, BIG_SIZE, seed=50)
            self.files["/big"] = p
        self.sha = {k: sha256_file(v) for k, v in self.files.items()}
        self.sink = UploadSink() if upload else None

        v4 = free_ports(len(certs), "127.0.0.1")
        v6 = free_ports(len(certs), "::1")
        self.ports = {}
        servers = []
        for i, name in enumerate(certs):
            self.ports[name] = {"v4": v4[i], "v6": v6[i]}
            upload_loc = ""
            if self.sink:
                upload_loc = """
        location = /upload {
            client_max_body_size 100m;
            proxy_pass http://127.0.0.1:%d;
            proxy_http_version 1.1;
            proxy_read_timeout 120s;
        }""" % self.sink.port
            servers.append("""
    server {
        listen 127.0.0.1:%d ssl http2;
        listen [::1]:%d ssl http2;
        server_name _;
        ssl_certificate %s;
        ssl_certificate_key %s;
        ssl_protocols TLSv1.2 TLSv1.3;
        root %s;
        location = /1k { }
        location = /big { }%s
    }""" % (v4[i], v6[i], pki.fullchain(name), pki.key(name), www, upload_loc))

        user = ""
        if os.geteuid() == 0:
            # workers would otherwise drop to 'nobody' and could not read the
            # 0700 temp dir; as non-root the directive is not needed.
            user = "user root;"
        conf = """%s
daemon off;
master_process on;
worker_processes 1;
pid %s/nginx.pid;
error_log %s/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 100000;
    send_timeout 120s;
    client_body_timeout 120s;
    client_body_temp_path %s/body;
    proxy_temp_path %s/proxy;
    fastcgi_temp_path %s/fastcgi;
    uwsgi_temp_path %s/uwsgi;
    scgi_temp_path %s/scgi;
%s
}
""" % (user, self.dir, self.dir, tmp, tmp, tmp, tmp, tmp, "\n".join(servers))
        self.conf = os.path.join(self.dir, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(conf)
        self.error_log = os.path.join(self.dir, "error.log")
        self.proc = subprocess.Popen(
            [NGINX, "-p", self.dir, "-e", self.error_log, "-c", self.conf],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.dir, "stderr.log"), "wb"),
            start_new_session=True)
        _register(self)
        for name in certs:
            for fam, host in (("v4", "127.0.0.1"), ("v6", "::1")):
                if not wait_port(host, self.ports[name][fam], 10, self.proc):
                    raise Fatal("nginx did not come up on %s:\n%s" % (
                        hostport(host, self.ports[name][fam]), self.log_tail()))

    def port(self, name, fam="v4"):
        return self.ports[name][fam]

    def log_tail(self, n=20):
        out = []
        for f in ("stderr.log", "error.log"):
            p = os.path.join(self.dir, f)
            if os.path.exists(p):
                with open(p, errors="replace") as fh:
                    out += fh.read().splitlines()[-n:]
        return "\n".join(out)

    def kill(self):
        _unregister(self)
        _stop_process(self.proc, signal.SIGTERM)   # SIGTERM = fast shutdown
        if self.sink:
            self.sink.kill()


# --------------------------------------------------------------------------
# sightline

def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)        # TOML basic strings are JSON-compatible here
    raise TypeError(v)


def make_config(pki, listen_port=None, workers=1, client=None, upstream=None,
                timeouts=None, ca_key=None, ca=None, extra="", admin_port=None):
    """TOML config text. upstream defaults to {ca_file: origin CA}; ca is an
    EnterpriseCa (default: the PKI's own). The admin listener gets a free
    port unless `extra` configures [admin] itself (several proxies run at
    once, so the default 9464 would collide)."""
    ca = ca or pki
    lines = ["workers = %d" % workers]
    if "[admin]" not in extra:
        lines += ["", "[admin]", 'listen = "127.0.0.1:%d"' % (admin_port or free_port())]
    if listen_port is not None:
        lines += ["", "[[listener]]", 'address = "127.0.0.1:%d"' % listen_port,
                  'mode = "explicit"']
    lines += ["", "[ca]", "cert = %s" % toml_value(ca.ca_cert),
              "key = %s" % toml_value(ca_key or ca.ca_key)]
    if client:
        lines += ["", "[client]"] + ["%s = %s" % (k, toml_value(v)) for k, v in client.items()]
    up = {"ca_file": pki.origin_ca}
    up.update(upstream or {})
    lines += ["", "[upstream]"] + ["%s = %s" % (k, toml_value(v)) for k, v in up.items()]
    if timeouts:
        lines += ["", "[timeouts]"] + ["%s = %s" % (k, toml_value(v)) for k, v in timeouts.items()]
    text = "\n".join(lines) + "\n"
    if extra:
        text += extra if extra.endswith("\n") else extra + "\n"
    return text


# The tests' origins listen on loopback ports of any number, and their
# clients come from 198.51.100.0/24 namespaces too: a config that does not
# set [access] itself gets this instead of the (stricter) defaults.
PERMISSIVE_ACCESS = """
[access]
allow_clients = ["0.0.0.0/0", "::/0"]
connect_ports = ["1-65535"]
http_ports = ["1-65535"]
allow_destinations = ["127.0.0.0/8", "::1"]
"""


def with_test_access(config_text):
    if re.search(r"^\[access\]", config_text, re.M):
        return config_text
    return config_text + PERMISSIVE_ACCESS


def sightline_bin():
    b = os.environ.get("SIGHTLINE_BIN") or os.path.join(SRC, "build", "sightline")
    if not os.access(b, os.X_OK):
        raise Fatal("sightline binary not found or not executable: %s "
                    "(set SIGHTLINE_BIN or build with meson)" % b)
    return b


class Proxy:
    """A running sightline. stderr is captured line by line; JSON lines are
    parsed into self.events."""

    def __init__(self, t, config_text, args=(), name="sightline", port=None,
                 wait=True, ready_timeout=10.0):
        self.t = t
        self.name = name
        self.port = port
        self.config = os.path.join(t.dir, "%s.toml" % name)
        config_text = with_test_access(config_text)
        with open(self.config, "w") as f:
            f.write(config_text)
        m = re.search(r'^\[admin\]\s*\nlisten = "127\.0\.0\.1:(\d+)"', config_text, re.M)
        self.admin_port = int(m.group(1)) if m else None
        self.stderr_path = os.path.join(t.dir, "%s.stderr" % name)
        self.lines = []
        self.events = []
        self.cond = threading.Condition()
        self.cmd = [sightline_bin(), "run", "-c", self.config] + list(args)
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.pid = self.proc.pid
        _register(self)
        t.proxies.append(self)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if wait and port is not None:
            if not wait_port("127.0.0.1", port, ready_timeout, self.proc):
                rc = self.proc.poll()
                raise Fatal("sightline not accepting on 127.0.0.1:%d within %ss (rc=%s); stderr:\n%s"
                            % (port, ready_timeout, rc, self.stderr_text()[-3000:]))

    def _read(self):
        with open(self.stderr_path, "wb") as out:
            for raw in self.proc.stderr:
                out.write(raw)
                out.flush()
                line = raw.decode(errors="replace").rstrip("\n")
                ev = None
                if line.lstrip().startswith("{"):
                    try:
                        ev = json.loads(line)
                    except ValueError:
                        ev = None
                with self.cond:
                    self.lines.append(line)
                    if isinstance(ev, dict):
                        self.events.append(ev)
                    self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def stderr_text(self):
        with self.cond:
            return "\n".join(self.lines)

    def mark(self):
        """Index into self.events; pass as since= to only see later events."""
        with self.cond:
            return len(self.events)

    def wait_event(self, pred, timeout=10.0, since=0):
        """First event (index >= since) matching pred, or None after timeout."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for ev in self.events[since:]:
                    try:
                        if pred(ev):
                            return ev
                    except Exception:
                        pass
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(min(left, 0.2))

    def wait_events(self, pred, count, timeout=10.0, since=0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [ev for ev in self.events[since:] if _safe(pred, ev)]
                if len(found) >= count or time.monotonic() >= deadline:
                    return found
                self.cond.wait(0.2)

    def conn_event(self, target, since=0, timeout=10.0):
        """The 'connection' log line for CONNECT target 'host:port'."""
        return self.wait_event(lambda e: e.get("event") == "connection"
                               and e.get("target") == target, timeout, since)

    def alive(self):
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        """Signal the proxy (sig None: it already was) and return its exit
        code (None if it had to be killed)."""
        _unregister(self)
        if self.proc.poll() is not None:
            rc = self.proc.returncode
        else:
            if sig is not None:
                self.proc.send_signal(sig)
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _stop_process(self.proc, signal.SIGKILL, 1)
                rc = None
        self.reader.join(5)
        return rc

    def kill(self):
        _unregister(self)
        _stop_process(self.proc, signal.SIGTERM)


def _safe(pred, ev):
    try:
        return pred(ev)
    except Exception:
        return False


def run_sightline_expect_exit(t, config_text, args=(), name="cfg", timeout=10.0, port=None):
    """Run sightline with a config that should be refused. Returns
    (exit_code or None if it kept running, stdout+stderr text, config path).
    A process still running after timeout, or accepting on port (it started
    after all), is killed at once."""
    cfg = os.path.join(t.dir, "%s.toml" % name)
    with open(cfg, "w") as f:
        f.write(config_text)
    cmd = [sightline_bin(), "run", "-c", cfg] + list(args)
    outf = open(os.path.join(t.dir, "%s.out" % name), "w+b")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=outf,
                            stderr=subprocess.STDOUT, start_new_session=True)
    holder = _ProcHolder(proc)
    _register(holder)
    rc = None
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                rc = proc.returncode
                break
            if port is not None and wait_port("127.0.0.1", port, 0.05):
                break
            time.sleep(0.02)
        if rc is None:
            _stop_process(proc, signal.SIGKILL, 1)
    finally:
        _unregister(holder)
    outf.seek(0)
    text = outf.read().decode(errors="replace")
    outf.close()
    return rc, text, cfg


class _ProcHolder:
    def __init__(self, proc):
        self.proc = proc

    def kill(self):
        _stop_process(self.proc, signal.SIGKILL, 1)


# --------------------------------------------------------------------------
# clients

def connect_tunnel(proxy_port, target, timeout=10.0, rcvbuf=None, extra_headers=""):
    """Open a CONNECT tunnel through the proxy. Returns (sock, status_code,
    head_text). The socket is positioned right after the response head."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", proxy_port))
    req = "CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (target, target, extra_headers)
    s.sendall(req.encode())
    code, head = read_response_head(s)
    return s, code, head


def read_response_head(s, limit=65536):
    """Read an HTTP response head byte by byte (so no bytes past it are
    consumed). Returns (status_code or None, head_text)."""
    buf = b""
    while not buf.endswith(b"\r\n\r\n") and len(buf) < limit:
        try:
            b = s.recv(1)
        except socket.timeout:
            break
        if not b:
            break
        buf += b
    head = buf.decode("latin-1")
    m = re.match(r"HTTP/1\.[01] (\d{3})", head)
    return (int(m.group(1)) if m else None), head


def raw_exchange(proxy_port, data, timeout=10.0):
    """Send raw bytes to the proxy, return (status_code, head_text)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(("127.0.0.1", proxy_port))
        s.sendall(data)
        return read_response_head(s)
    finally:
        s.close()


def client_context(cafile, alpn=None, min_version=None, max_version=None, verify=True):
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile if verify else None)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if min_version:
        ctx.minimum_version = min_version
    if max_version:
        ctx.maximum_version = max_version
    return ctx


def tls_over(sock, ctx, server_hostname):
    ss = ctx.wrap_socket(sock, server_hostname=server_hostname)
    return ss


def read_http_response(ss):
    """Minimal HTTP/1.1 response reader (Content-Length or until close).
    Returns (status, headers dict lower-case, body bytes)."""
    code, head = read_response_head(ss)
    if code is None:
        raise AssertionError("no HTTP response head (got %r)" % head[:200])
    headers = {}
    for line in head.split("\r\n")[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    body = bytearray()
    if "content-length" in headers:
        left = int(headers["content-length"])
        while left > 0:
            b = ss.recv(min(left, 1 << 16))
            if not b:
                break
            body += b
            left -= len(b)
    else:
        while True:
            b = ss.recv(1 << 16)
            if not b:
                break
            body += b
    return code, headers, bytes(body)


def https_get_via_proxy(proxy_port, target, path, cafile, server_hostname=None, timeout=30.0):
    """CONNECT target, TLS verified against cafile, GET path. Returns
    (status, body)."""
    host = target.rsplit(":", 1)[0].strip("[]")
    s, code, head = connect_tunnel(proxy_port, target, timeout)
    ss = None
    try:
        if code != 200:
            raise AssertionError("CONNECT %s -> %r" % (target, head.splitlines()[:1]))
        ss = tls_over(s, client_context(cafile), server_hostname or host)
        ss.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                    % (path, target)).encode())
        st, _, body = read_http_response(ss)
        return st, body
    finally:
        (ss or s).close()


def curl(args, timeout=60):
    """Run curl; returns CompletedProcess (stdout bytes = body)."""
    return run(["curl", "--silent", "--show-error", "--max-time", str(timeout)]
               + list(args), timeout=timeout + 10)


def curl_err(cp):
    """curl's one-line error ('curl: (60) ...') or the last stderr line."""
    lines = [l for l in cp.stderr.decode(errors="replace").splitlines() if l.strip()]
    for l in lines:
        if l.startswith("curl: ("):
            return l.strip()
    return lines[-1].strip() if lines else ""


def curl_via(proxy_port, url, cafile=None, extra=(), timeout=60):
    a = ["--proxy", "http://127.0.0.1:%d" % proxy_port]
    if cafile:
        a += ["--cacert", cafile]
    return curl(a + list(extra) + [url], timeout=timeout)


def s_client(proxy_port, connect, servername=None, cafile=None, extra=(), verify_error=True,
             timeout=30):
    """openssl s_client through the proxy. Returns (rc, stdout, stderr, certs)."""
    cmd = ["openssl", "s_client", "-proxy", "127.0.0.1:%d" % proxy_port,
           "-connect", connect, "-showcerts"]
    if servername:
        cmd += ["-servername", servername]
    if cafile:
        cmd += ["-CAfile", cafile]
    if verify_error:
        cmd += ["-verify_return_error"]
    cmd += list(extra)
    cp = run(cmd, input=b"", timeout=timeout)
    out = cp.stdout.decode(errors="replace")
    err = cp.stderr.decode(errors="replace")
    return cp.returncode, out, err, pem_certs(out)


def verify_return_code(out):
    m = re.search(r"Verify return code: (\d+) \(([^)]*)\)", out)
    return (int(m.group(1)), m.group(2)) if m else (None, None)


# --------------------------------------------------------------------------
# test run + checks

class TestRun:
    def __init__(self, name):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix="sightline-e2e-%s-" % name)
        self.proxies = []
        self.nginxes = []
        self.failed = []
        self.passed = 0
        self.skipped = 0
        self._pki = None
        self._notes = []

    # setup helpers
    def pki(self):
        if self._pki is None:
            self._pki = Pki(self.dir)
        return self._pki

    def start_nginx(self, pki, **kw):
        n = Nginx(self, pki, **kw)
        self.nginxes.append(n)
        return n

    def start_proxy(self, pki, name="sightline", port=None, args=(), **cfg):
        port = port or free_port()
        text = make_config(pki, listen_port=port, **cfg)
        return Proxy(self, text, args=args, name=name, port=port)

    # checks
    @contextlib.contextmanager
    def check(self, name, fatal=False):
        """One sub-check: prints 'ok', 'FAIL' or 'SKIP' with the name. With
        fatal=True a failure stops the test (later checks depend on it)."""
        t0 = time.monotonic()
        self._notes = []
        try:
            yield
        except Skip as e:
            self.skipped += 1
            print("SKIP  %s: %s" % (name, e), flush=True)
        except (AssertionError, Exception) as e:
            self.failed.append(name)
            if isinstance(e, AssertionError):
                print("FAIL  %s: %s" % (name, e), flush=True)
            else:
                print("FAIL  %s: %s: %s" % (name, type(e).__name__, e), flush=True)
                traceback.print_exc(limit=4, file=sys.stdout)
            if fatal:
                raise Fatal("cannot continue after failed check: %s" % name)
        else:
            self.passed += 1
            notes = "".join(", " + n for n in self._notes)
            print("ok    %s (%.1fs%s)" % (name, time.monotonic() - t0, notes), flush=True)
        self._notes = []

    def note(self, text):
        """Extra detail printed on the current check's result line."""
        self._notes.append(text)

    def cleanup(self, success):
        kill_all()
        if not success:
            for p in self.proxies:
                print("---- %s stderr (tail) ----" % p.name)
                print("\n".join(p.lines[-40:]))
            for n in self.nginxes:
                print("---- nginx log (tail) ----")
                print(n.log_tail())
        if os.environ.get("SIGHTLINE_E2E_KEEP"):
            print("kept temp dir: %s" % self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


class HostsEntry:
    """Maps `name` to an address in /etc/hosts (needs root) until kill(),
    which puts the file's original text back; also at exit and on signals.
    Only loopback addresses: tests never reach other hosts."""

    PATH = "/etc/hosts"

    def __init__(self, name, addr):
        if os.geteuid() != 0 or not os.access(self.PATH, os.W_OK):
            raise Skip("needs root to edit /etc/hosts")
        with open(self.PATH, "rb") as f:
            self.original = f.read()
        self.name = name
        _register(self)
        self.set(addr)

    # Only the bytes after the original text are ever written or cut, in
    # place (/etc/hosts is often a bind mount: no rename over it), so other
    # tests resolving names meanwhile always see the original entries.
    def set(self, addr):
        assert addr.startswith("127."), addr
        sep = b"" if self.original.endswith(b"\n") or not self.original else b"\n"
        with open(self.PATH, "r+b") as f:
            f.seek(len(self.original))
            f.write(sep + b"%s %s  # sightline e2e, removed after the test\n" % (addr.encode(), self.name.encode()))
            f.truncate()

    def kill(self):
        _unregister(self)
        with open(self.PATH, "r+b") as f:
            f.truncate(len(self.original))


class Skip(Exception):
    pass


def run_test(name, main):
    t = TestRun(name)
    print("== %s (tmp %s)" % (name, t.dir), flush=True)
    ok = False
    t0 = time.monotonic()
    try:
        main(t)
        ok = not t.failed
    except Fatal as e:
        print("FATAL %s" % e, flush=True)
    except SystemExit as e:
        print("FATAL interrupted (%s)" % e.code, flush=True)
    except BaseException as e:
        print("FATAL %s: %s" % (type(e).__name__, e), flush=True)
        traceback.print_exc(file=sys.stdout)
    finally:
        t.cleanup(ok)
    print("== %s: %s (%d passed, %d failed, %d skipped, %.1fs)%s" % (
        name, "PASS" if ok else "FAIL", t.passed, len(t.failed), t.skipped,
        time.monotonic() - t0,
        (" failed: " + ", ".join(t.failed)) if t.failed else ""), flush=True)
    sys.exit(0 if ok else 1)


# ==========================================================================
# Helpers for the HTTP codec tests (70_http1, 80_http2). Nothing above this
# line depends on them.

class HttpHead:
    """A parsed HTTP/1 request or response head (lenient: it is for reading
    what a peer sent, not for judging it). raw is the exact wire bytes."""

    def __init__(self, raw):
        self.raw = bytes(raw)
        lines = self.raw.decode("latin-1").split("\r\n")
        self.start = lines[0]
        self.headers = []
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                self.headers.append((k.strip(), v.strip()))
        parts = self.start.split(" ", 2)
        self.status = self.method = self.target = None
        self.reason = ""
        if self.start.startswith("HTTP/"):
            self.version = parts[0]
            if len(parts) > 1 and parts[1].isdigit():
                self.status = int(parts[1])
            self.reason = parts[2] if len(parts) > 2 else ""
        else:
            parts += ["", "", ""]
            self.method, self.target, self.version = parts[:3]

    def get(self, name, default=None):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    def all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def has_token(self, name, token):
        return any(tok.strip().lower() == token.lower()
                   for v in self.all(name) for tok in v.split(","))

    def __repr__(self):
        return "HttpHead(%r)" % self.raw[:300]


class Wire:
    """Buffered, recording reader/writer over a (TLS) socket. Every byte read
    goes to .received (while .record is true), every byte written to .sent.
    Reads honour the socket timeout (socket.timeout propagates); a peer that
    closes early raises EOFError."""

    def __init__(self, sock=None, record=True):
        self.sock = sock
        self.record = record
        self.received = bytearray()
        self.sent = bytearray()
        self.buf = bytearray()
        self.eof = False

    def _fill(self):
        if self.eof:
            return False
        b = self.sock.recv(1 << 18)
        if not b:
            self.eof = True
            return False
        if self.record:
            self.received += b
        self.buf += b
        return True

    def _take(self, n):
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def recv_until(self, delim, limit=1 << 20):
        """Bytes up to and including delim."""
        start = 0
        while True:
            i = self.buf.find(delim, start)
            if i >= 0:
                return self._take(i + len(delim))
            if len(self.buf) > limit:
                raise AssertionError("no %r within %d bytes" % (delim, limit))
            start = max(0, len(self.buf) - len(delim) + 1)
            if not self._fill():
                raise EOFError("peer closed after %d bytes without %r: %r"
                               % (len(self.buf), delim, bytes(self.buf[:200])))

    def recv_exact(self, n):
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError("peer closed after %d of %d bytes" % (len(self.buf), n))
        return self._take(n)

    def recv_some(self, maximum=1 << 18):
        """Buffered bytes, else one read; b'' at EOF."""
        if not self.buf:
            self._fill()
        return self._take(min(maximum, len(self.buf)))

    def recv_all(self):
        """Everything until the peer closes."""
        while self._fill():
            pass
        return self._take(len(self.buf))

    def send(self, data):
        self.sock.sendall(data)
        if self.record:
            self.sent += data

    def read_head(self, limit=1 << 20):
        return HttpHead(self.recv_until(b"\r\n\r\n", limit))

    def read_body(self, head, request_method=None, sink=None):
        """Body of the message whose head was just read. request_method: the
        method a response answers (HEAD -> no body). Returns (raw, decoded,
        trailers): raw is the body's exact wire bytes (chunk framing and
        trailer section included). With sink, decoded bytes go to
        sink(bytes) and raw/decoded are returned empty."""
        raw, dec = bytearray(), bytearray()
        keep = sink is None

        def out(b):
            if keep:
                dec.extend(b)
            else:
                sink(b)

        def stream(n):
            while n > 0:
                if not self.buf and not self._fill():
                    raise EOFError("peer closed with %d body bytes missing" % n)
                b = self._take(min(n, len(self.buf)))
                if keep:
                    raw.extend(b)
                out(b)
                n -= len(b)

        trailers = []
        if head.status is not None:
            if (request_method == "HEAD" or head.status < 200 or head.status in (204, 304)):
                return b"", b"", []
        if head.has_token("transfer-encoding", "chunked"):
            while True:
                line = self.recv_until(b"\r\n", 4096)
                if keep:
                    raw.extend(line)
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while True:
                        tl = self.recv_until(b"\r\n", 65536)
                        if keep:
                            raw.extend(tl)
                        if tl == b"\r\n":
                            break
                        k, _, v = tl[:-2].decode("latin-1").partition(":")
                        trailers.append((k.strip(), v.strip()))
                    break
                stream(size)
                crlf = self.recv_exact(2)
                if keep:
                    raw.extend(crlf)
                if crlf != b"\r\n":
                    raise AssertionError("chunk data not followed by CRLF: %r" % crlf)
        elif head.get("content-length") is not None:
            stream(int(head.get("content-length")))
        elif head.status is not None:
            b = self.recv_all()
            if keep:
                raw.extend(b)
            out(b)
        return bytes(raw), bytes(dec), trailers


def tls_tunnel(proxy_port, target, cafile, alpn=None, server_hostname="localhost",
               timeout=10.0):
    """CONNECT target through the proxy, TLS verified against cafile, offering
    alpn (list or None). Returns a Wire over the SSLSocket."""
    s, code, head = connect_tunnel(proxy_port, target, timeout)
    if code != 200:
        s.close()
        raise AssertionError("CONNECT %s -> %r" % (target, head.split("\r\n", 1)[0]))
    try:
        ss = client_context(cafile, alpn=alpn).wrap_socket(s, server_hostname=server_hostname)
    except Exception:
        s.close()
        raise
    w = Wire(ss)
    w.client = "%s:%d" % ss.getsockname()[:2]     # as the proxy logs it
    return w


def http_get(w, host, path="/ok", extra=""):
    """GET over a Wire (keep-alive); returns (head, body)."""
    w.send(("GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (path, host, extra)).encode())
    head = w.read_head()
    _, body, _ = w.read_body(head, "GET")
    return head, body


def expect_close(w):
    """The proxy ends the client connection cleanly after what was read."""
    try:
        rest = w.recv_all()
    except socket.timeout:
        raise AssertionError("the proxy did not close the client connection")
    except (ConnectionResetError, BrokenPipeError):
        raise AssertionError("the proxy reset the client connection")
    assert rest == b"", "unexpected bytes after the response: %r" % rest[:200]


def admin_metrics(proxy):
    """The proxy's /metrics text."""
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", proxy.admin_port, timeout=10)
    try:
        c.request("GET", "/metrics")
        r = c.getresponse()
        body = r.read().decode(errors="replace")
        assert r.status == 200, "/metrics -> %d" % r.status
        return body
    finally:
        c.close()


def failure_counts(proxy):
    """sightline_connection_failures_total by cause: {'access_port': 2, ...}."""
    out = {}
    for m in re.finditer(r'^sightline_connection_failures_total\{cause="([a-z_]+)"\} (\S+)$',
                         admin_metrics(proxy), re.M):
        out[m.group(1)] = int(float(m.group(2)))
    return out


def active_connections(proxy):
    """sightline_active_connections summed over its labels."""
    return int(sum(float(m.group(1)) for m in
                   re.finditer(r'^sightline_active_connections\{[^}]*\} (\S+)$', admin_metrics(proxy), re.M)))


def origin_metrics(proxy):
    """The proxy's sightline_origin_* series (origin pool and releases):
    {'name{labels}': value}."""
    out = {}
    for line in admin_metrics(proxy).splitlines():
        if line.startswith("sightline_origin_"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def origin_event(proxy, family, event):
    """sightline_origin_<family>_total{event=...}: family "pool_events" or "releases"."""
    return origin_metrics(proxy).get('sightline_origin_%s_total{event="%s"}' % (family, event), 0.0)


def wait_origin_event(proxy, family, event, at_least, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if origin_event(proxy, family, event) >= at_least:
            return
        time.sleep(0.02)
    raise AssertionError("origin %s %s never reached %d (%r)" % (family, event, at_least,
                                                                origin_metrics(proxy)))


def connection_line(proxy, client, since=0, timeout=10.0):
    """The proxy's 'connection' log line for the client address 'ip:port'
    (e.g. Wire.client from tls_tunnel), or None after timeout."""
    return proxy.wait_event(lambda e: e.get("event") == "connection" and e.get("client") == client,
                            timeout, since)


class OriginConn(Wire):
    """One connection accepted by a TlsOrigin, seen from the origin."""

    def __init__(self, origin, index):
        super().__init__()
        self.origin = origin
        self.index = index
        self.alpn = None
        self.error = None
        self.handshaken = threading.Event()
        self.done = threading.Event()      # handler finished, connection closed
        self.closed_by_handler = False

    def close_now(self, clean=True):
        """End the connection from the handler: clean = close_notify first."""
        self.closed_by_handler = True
        if clean:
            # Non-blocking: send close_notify without waiting for the peer's.
            try:
                self.sock.setblocking(False)
                self.sock = self.sock.unwrap()
            except (OSError, ValueError):
                pass
        self.sock.close()


class TlsOrigin:
    """A scriptable TLS origin on 127.0.0.1 using a test-PKI cert. Every
    accepted connection is an OriginConn (a Wire: .received records every
    byte the origin read) and runs handler(conn) on its own thread. When the
    handler returns, the origin keeps reading (and recording) until its peer
    closes; then conn.done is set. alpn: protocols the origin may select
    (None: it selects none)."""

    def __init__(self, pki, handler, alpn=("http/1.1",), cert="valid-ec", timeout=30.0,
                 host="127.0.0.1", port=0):
        self.handler = handler
        self.timeout = timeout
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(pki.fullchain(cert), pki.key(cert))
        if alpn:
            self.ctx.set_alpn_protocols(list(alpn))
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind((host, port))
        self.lsock.listen(128)
        self.port = self.lsock.getsockname()[1]
        self.conns = []
        self.cond = threading.Condition()
        self.stopped = False
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()
        _register(self)

    def _accept_loop(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            with self.cond:
                if self.stopped:
                    c.close()
                    return
                conn = OriginConn(self, len(self.conns))
                self.conns.append(conn)
                self.cond.notify_all()
            threading.Thread(target=self._serve, args=(c, conn), daemon=True).start()

    def _serve(self, c, conn):
        try:
            c.settimeout(self.timeout)
            conn.sock = self.ctx.wrap_socket(c, server_side=True)
            conn.alpn = conn.sock.selected_alpn_protocol()
            conn.handshaken.set()
            self.handler(conn)
            if not conn.closed_by_handler:
                conn.recv_all()
        except Exception as e:
            conn.error = e
        finally:
            try:
                (conn.sock or c).close()
            except OSError:
                pass
            conn.done.set()

    def count(self):
        with self.cond:
            return len(self.conns)

    def wait_conn(self, index, timeout=10.0):
        """The index-th accepted connection (0-based), once its handshake is done."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.conns) <= index:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("origin accepted %d connections, waited for #%d"
                                         % (len(self.conns), index + 1))
                self.cond.wait(left)
            conn = self.conns[index]
        if not conn.handshaken.wait(max(0.0, deadline - time.monotonic())):
            raise AssertionError("origin connection #%d: no TLS handshake (%r)"
                                 % (index + 1, conn.error))
        return conn

    def kill(self):
        _unregister(self)
        with self.cond:
            self.stopped = True
            conns = list(self.conns)
        try:
            self.lsock.close()
        except OSError:
            pass
        for conn in conns:
            s = conn.sock
            if s is not None:
                try:
                    socket.socket.shutdown(s, socket.SHUT_RDWR)
                except (OSError, TypeError, ValueError):
                    pass


def serve_http1(conn, respond):
    """Origin-side request loop for a TlsOrigin handler: reads each request
    (head + body) and calls respond(conn, head, body), which sends the
    response and returns False to stop. Returns at the peer's close."""
    while True:
        try:
            head = conn.read_head()
        except EOFError:
            return
        _, body, _ = conn.read_body(head)
        if respond(conn, head, body) is False:
            return


def http_response(status, body=b"", reason=None, headers=()):
    """Bytes of a Content-Length framed HTTP/1.1 response."""
    reason = reason or {200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified",
                        404: "Not Found"}.get(status, "Status")
    out = "HTTP/1.1 %d %s\r\n" % (status, reason)
    for k, v in headers:
        out += "%s: %s\r\n" % (k, v)
    if not any(k.lower() == "content-length" for k, _ in headers):
        out += "Content-Length: %d\r\n" % len(body)
    return out.encode("latin-1") + b"\r\n" + body


class TcpServer:
    """A TCP listener on 127.0.0.1: each accepted socket is served by
    self._serve(sock) on a thread of its own. kill() closes the listener and
    shuts every socket down (which wakes threads blocked on them)."""

    def __init__(self, backlog=128):
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(backlog)
        self.port = self.lsock.getsockname()[1]
        self.accepted = 0
        self.socks = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()
        _register(self)

    def _accept_loop(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                self.socks.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        raise NotImplementedError

    def kill(self):
        _unregister(self)
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.lock:
            socks = list(self.socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


class ConnectForwarder(TcpServer):
    """A local TCP port (127.0.0.1) that opens a CONNECT tunnel through the
    proxy to target for every connection it accepts and splices both ways,
    so clients without proxy support (nghttp, h2load) can go through the
    proxy. The client itself must send the target's SNI (e.g.
    https://localhost:FWDPORT/ sends 'localhost')."""

    def __init__(self, proxy_port, target):
        self.proxy_port = proxy_port
        self.target = target
        self.errors = []
        self.clients = []     # local address of each tunnel to the proxy
        super().__init__()

    def _serve(self, c):
        try:
            u, code, head = connect_tunnel(self.proxy_port, self.target, timeout=30)
        except Exception as e:
            self.errors.append("CONNECT: %r" % e)
            c.close()
            return
        if code != 200:
            self.errors.append("CONNECT -> %r" % head.split("\r\n", 1)[0])
            c.close()
            u.close()
            return
        u.settimeout(None)
        with self.lock:
            self.socks.append(u)
            self.clients.append("%s:%d" % u.getsockname()[:2])   # as the proxy logs it
        t1 = threading.Thread(target=self._pipe, args=(c, u), daemon=True)
        t2 = threading.Thread(target=self._pipe, args=(u, c), daemon=True)
        t1.start()
        t2.start()
        t1.join()
        t2.join()
        c.close()
        u.close()

    def _pipe(self, a, b):
        try:
            while True:
                d = a.recv(1 << 18)
                if not d:
                    break
                b.sendall(d)
        except OSError:
            pass
        try:
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class NginxSite:
    """An extra nginx with one TLS server on 127.0.0.1 (test-PKI cert) whose
    location blocks the caller writes; http2 on or off. Its root holds 1k
    (same bytes as Nginx's /1k)."""

    def __init__(self, t, pki, locations, http2=True, cert="valid-ec", name="site",
                 server_extra=""):
        self.dir = os.path.join(t.dir, "nginx-" + name)
        www = os.path.join(self.dir, "www")
        tmp = os.path.join(self.dir, "tmp")
        os.makedirs(www)
        os.makedirs(tmp)
        self.files = {"/1k": os.path.join(www, "1k")}
        write_pseudorandom(self.files["/1k"], KIB_SIZE, seed=1)
        self.www = www
        self.v4 = free_port("127.0.0.1")
        user = "user root;" if os.geteuid() == 0 else ""
        conf = """%s
daemon off;
master_process on;
worker_processes 1;
pid %s/nginx.pid;
error_log %s/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    default_type application/octet-stream;
    keepalive_requests 100000;
    client_body_temp_path %s/body;
    proxy_temp_path %s/proxy;
    fastcgi_temp_path %s/fastcgi;
    uwsgi_temp_path %s/uwsgi;
    scgi_temp_path %s/scgi;
    server {
        listen 127.0.0.1:%d ssl%s;
        server_name _;
        ssl_certificate %s;
        ssl_certificate_key %s;
        ssl_protocols TLSv1.2 TLSv1.3;
        root %s;
%s
%s
    }
}
""" % (user, self.dir, self.dir, tmp, tmp, tmp, tmp, tmp, self.v4, " http2" if http2 else "",
       pki.fullchain(cert), pki.key(cert), www, server_extra, locations)
        self.conf = os.path.join(self.dir, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(conf)
        self.error_log = os.path.join(self.dir, "error.log")
        self.proc = subprocess.Popen(
            [NGINX, "-p", self.dir, "-e", self.error_log, "-c", self.conf],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.dir, "stderr.log"), "wb"),
            start_new_session=True)
        _register(self)
        t.nginxes.append(self)
        if not wait_port("127.0.0.1", self.v4, 10, self.proc):
            raise Fatal("nginx (%s) did not come up:\n%s" % (name, self.log_tail()))

    def port(self, _name=None, _fam="v4"):
        return self.v4

    def log_tail(self, n=20):
        return Nginx.log_tail(self, n)

    def kill(self):
        _unregister(self)
        _stop_process(self.proc, signal.SIGTERM)


# ==========================================================================
# Helpers for the metrics test (90_metrics): a background command and a real
# Prometheus server. Nothing above this line depends on them.

class Background:
    """A command running in the background in its own session (stdout and
    stderr to files in the test dir), stopped in all paths like everything
    else the harness starts."""

    def __init__(self, t, cmd, name="bg"):
        self.cmd = [str(c) for c in cmd]
        self.stdout_path = os.path.join(t.dir, "%s.stdout" % name)
        self.stderr_path = os.path.join(t.dir, "%s.stderr" % name)
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=self._err, start_new_session=True)
        _register(self)

    def running(self):
        return self.proc.poll() is None

    def wait(self, timeout):
        """Exit code, or None if still running after timeout."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stderr_text(self):
        with open(self.stderr_path, errors="replace") as f:
            return f.read()

    def kill(self):
        _unregister(self)
        _stop_process(self.proc, signal.SIGKILL, 1)
        for f in (self._out, self._err):
            try:
                f.close()
            except OSError:
                pass


PROMETHEUS = os.environ.get("SIGHTLINE_PROMETHEUS", "prometheus")
PROMTOOL = os.environ.get("SIGHTLINE_PROMTOOL", "promtool")


class Prometheus:
    """A Prometheus server of the test's own (Debian package `prometheus`):
    listens on a free 127.0.0.1 port, keeps its config and TSDB in the
    test's temp dir, scrapes `targets` ("host:port" list) as job `job` every
    `interval` and evaluates `rule_files` at the same interval. Never the
    system service: nothing outside the temp dir is read or written
    (except the rule files, read in place)."""

    def __init__(self, t, targets, rule_files=(), job="sightline", interval="1s",
                 name="prometheus", ready_timeout=30.0):
        binary = shutil.which(PROMETHEUS)
        if not binary:
            raise Fatal("prometheus not found (install the Debian package 'prometheus')")
        self.dir = os.path.join(t.dir, name)
        self.data = os.path.join(self.dir, "data")
        os.makedirs(self.data)
        self.port = free_port()
        self.job = job
        lines = ["global:",
                 "  scrape_interval: %s" % interval,
                 "  scrape_timeout: %s" % interval,
                 "  evaluation_interval: %s" % interval,
                 "rule_files:"] + ["  - %s" % json.dumps(os.path.abspath(r)) for r in rule_files]
        if not rule_files:
            lines[-1] = "rule_files: []"
        lines += ["scrape_configs:",
                  "  - job_name: %s" % json.dumps(job),
                  "    static_configs:",
                  "      - targets: %s" % json.dumps(list(targets))]
        self.config = os.path.join(self.dir, "prometheus.yml")
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.log_path = os.path.join(self.dir, "prometheus.log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, "--config.file=%s" % self.config,
             "--storage.tsdb.path=%s" % self.data,
             "--web.listen-address=127.0.0.1:%d" % self.port,
             "--web.console.templates=%s" % os.path.join(self.dir, "consoles"),
             "--web.console.libraries=%s" % os.path.join(self.dir, "console_libraries")],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            cwd=self.dir, start_new_session=True)
        _register(self)
        t.prometheus = self
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise Fatal("prometheus exited (rc=%s):\n%s" % (self.proc.returncode, self.log_tail()))
            try:
                if self._get("/-/ready", timeout=1.0)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise Fatal("prometheus not ready within %ss:\n%s" % (ready_timeout, self.log_tail()))
            time.sleep(0.1)

    def _get(self, path, timeout=5.0):
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def api(self, path, **params):
        """GET /api/v1/<path>; returns the 'data' member, raises AssertionError
        on an API error."""
        import urllib.parse
        q = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        status, body = self._get("/api/v1/%s%s" % (path, "?" + q if q else ""))
        try:
            doc = json.loads(body)
        except ValueError:
            raise AssertionError("prometheus /api/v1/%s: HTTP %d, not JSON: %r" % (path, status, body[:300]))
        if doc.get("status") != "success":
            raise AssertionError("prometheus /api/v1/%s %r: %s: %s" % (
                path, params, doc.get("errorType"), doc.get("error")))
        return doc["data"]

    def query(self, expr, at=None):
        """Instant query. Returns {frozenset(labels.items()): float} for a
        vector (a scalar comes back under the empty label set)."""
        data = self.api("query", query=expr, time=at)
        if data["resultType"] == "scalar":
            return {frozenset(): float(data["result"][1])}
        if data["resultType"] != "vector":
            raise AssertionError("query %r: %s result" % (expr, data["resultType"]))
        return {frozenset(r["metric"].items()): float(r["value"][1]) for r in data["result"]}

    def log_tail(self, n=30):
        try:
            with open(self.log_path, errors="replace") as f:
                return "\n".join(f.read().splitlines()[-n:])
        except OSError:
            return ""

    def kill(self):
        _unregister(self)
        _stop_process(self.proc, signal.SIGTERM)
        try:
            self._log.close()
        except OSError:
            pass


def promtool(args, input=None, timeout=60):
    """Run promtool (Debian package 'prometheus'); CompletedProcess."""
    binary = shutil.which(PROMTOOL)
    if not binary:
        raise Fatal("promtool not found (install the Debian package 'prometheus')")
    return run([binary] + list(args), input=input, timeout=timeout)


# ==========================================================================
# Helpers for the transparent-mode tests (85_transparent, 87_proxy_protocol):
# network namespaces of the test's own, sockets and processes inside them,
# and long-running helper daemons (nginx in a namespace, HAProxy). Nothing
# above this line depends on them.

IP_BIN = os.environ.get("SIGHTLINE_IP", "ip")
NETNS_PREFIX = "sl-e2e-"
_CLONE_NEWNET = 0x40000000


class NetnsUnavailable(Fatal):
    """Network namespaces cannot be created here (no CAP_SYS_ADMIN, no
    netns support): the namespace checks are SKIPped, not failed."""


def _netns_reap_stale():
    """Delete namespaces left by an earlier run of these tests that was
    killed hard (SIGKILL: no cleanup ran). Only names of our own prefix
    whose owner pid no longer exists are touched."""
    try:
        names = os.listdir("/run/netns")
    except OSError:
        return
    for n in names:
        m = re.match(r"%s(\d+)-" % re.escape(NETNS_PREFIX), n)
        if not m or int(m.group(1)) == os.getpid():
            continue
        if os.path.exists("/proc/%s" % m.group(1)):
            continue
        run([IP_BIN, "netns", "del", n], timeout=10)


def _in_netns_thread(path, fn):
    """Run fn() on a fresh thread that has joined the network namespace at
    path (setns affects only the calling thread); returns its result or
    re-raises its exception. Sockets created there stay in that namespace
    and can be used from any thread."""
    import ctypes
    box = {}

    def body():
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(path, os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, "setns(%s): %s" % (path, os.strerror(e)))
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as e:      # noqa: B902 - handed to the caller
            box["error"] = e

    th = threading.Thread(target=body, daemon=True)
    th.start()
    th.join(30)
    if th.is_alive():
        raise AssertionError("operation inside netns %s did not finish in 30s" % path)
    if "error" in box:
        raise box["error"]
    return box.get("value")


class Netns:
    """A named network namespace of the test's own: `ip netns add
    sl-e2e-<pid>-<name>` (unique per run), loopback up. kill() deletes it
    in every path (registered like the processes; processes started in it
    are registered after it, so kill_all stops them first). Deleting the
    namespace also removes every veth end in it (and so its peer), and the
    nft tables, iptables rules, addresses, routes and rules configured in
    it: nothing is changed outside the namespaces."""

    _reaped = False

    def __init__(self, name):
        if not Netns._reaped:
            Netns._reaped = True
            _netns_reap_stale()
        if not shutil.which(IP_BIN):
            raise Fatal("'ip' not found (install the Debian package 'iproute2')")
        self.short = name
        self.name = "%s%d-%s" % (NETNS_PREFIX, os.getpid(), name)
        self.path = "/run/netns/" + self.name
        cp = run([IP_BIN, "netns", "add", self.name], timeout=10)
        if cp.returncode != 0:
            raise NetnsUnavailable("ip netns add %s: %s" % (
                self.name, cp.stderr.decode(errors="replace").strip()))
        _register(self)
        self.ip("link", "set", "lo", "up")

    def prefix(self):
        """argv prefix that runs a command inside the namespace."""
        return [IP_BIN, "netns", "exec", self.name]

    def run(self, cmd, check=True, timeout=30, input=None):
        """Run cmd inside the namespace (CompletedProcess); check=True
        raises Fatal on a non-zero exit."""
        return run(self.prefix() + [str(c) for c in cmd], timeout=timeout, input=input,
                   check=check)

    def ip(self, *args, check=True):
        return run([IP_BIN, "-n", self.name] + [str(a) for a in args], timeout=30, check=check)

    def call(self, fn):
        """fn() run on a thread inside the namespace; its result."""
        return _in_netns_thread(self.path, fn)

    def sysctl(self, key, value):
        """Set a per-namespace sysctl (net.*) inside this namespace only."""
        path = "/proc/sys/" + key.replace(".", "/")

        def write():
            with open(path, "w") as f:
                f.write(str(value))
        self.call(write)

    def socket(self, family=socket.AF_INET, type=socket.SOCK_STREAM):
        """A new socket that lives in this namespace."""
        return self.call(lambda: socket.socket(family, type))

    def connect(self, host, port, timeout=10.0, source_port=None):
        """A TCP connection made from inside the namespace."""
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = self.socket(fam)
        s.settimeout(timeout)
        try:
            if source_port:
                s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", source_port))
            s.connect((host, port))
        except BaseException:
            s.close()
            raise
        return s

    def wait_port(self, host, port, timeout=10.0, proc=None):
        """Poll until a TCP connect to (host, port) from inside the namespace
        succeeds (True) or timeout / proc exits (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                return False
            try:
                self.connect(host, port, timeout=0.5).close()
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def kill(self):
        _unregister(self)
        run([IP_BIN, "netns", "del", self.name], timeout=10)


def veth(ns_a, name_a, ns_b, name_b):
    """A veth pair created directly inside two Netns (never in the host's own
    namespace); both ends up. Removed with either namespace."""
    ns_a.ip("link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b.name)
    ns_a.ip("link", "set", name_a, "up")
    ns_b.ip("link", "set", name_b, "up")


class Daemon:
    """A long-running helper (nginx, haproxy...) in its own session, in a
    Netns when netns is given; stdout+stderr to a file in the test dir.
    kill() (all paths): stop_signal, then SIGKILL to its whole process
    group (which holds only what it started, e.g. nginx workers)."""

    def __init__(self, t, cmd, name, netns=None, stop_signal=signal.SIGTERM):
        self.name = name
        self.cmd = (netns.prefix() if netns else []) + [str(c) for c in cmd]
        self.stop_signal = stop_signal
        self.log_path = os.path.join(t.dir, "%s.log" % name)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        _register(self)

    def alive(self):
        return self.proc.poll() is None

    def log_tail(self, n=30):
        try:
            with open(self.log_path, errors="replace") as f:
                return "\n".join(f.read().splitlines()[-n:])
        except OSError:
            return ""

    def kill(self):
        _unregister(self)
        _stop_process(self.proc, self.stop_signal)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)     # leftovers of the group
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self._log.close()
        except OSError:
            pass


class NetnsProxy(Proxy):
    """A sightline running inside a Netns (`ip netns exec NS sightline run -c
    CONFIG ARGS...`; `ip netns exec` execs, so the pid is sightline's own).
    Otherwise a Proxy: parsed stderr events, mark/wait_event, stop(), and
    kill() in all paths. Ready once it has logged a "listening" line for
    every address in `listening` (as written in the config / on the
    command line)."""

    def __init__(self, t, netns, config_text, args=(), name="sightline", listening=(),
                 ready_timeout=10.0):
        self.t = t
        self.netns = netns
        self.name = name
        self.port = None
        self.config = os.path.join(t.dir, "%s.toml" % name)
        config_text = with_test_access(config_text)
        with open(self.config, "w") as f:
            f.write(config_text)
        m = re.search(r'^\[admin\]\s*\nlisten = "127\.0\.0\.1:(\d+)"', config_text, re.M)
        self.admin_port = int(m.group(1)) if m else None
        self.stderr_path = os.path.join(t.dir, "%s.stderr" % name)
        self.lines = []
        self.events = []
        self.cond = threading.Condition()
        self.cmd = netns.prefix() + [sightline_bin(), "run", "-c", self.config] + [str(a) for a in args]
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.pid = self.proc.pid
        _register(self)
        t.proxies.append(self)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        want = set(listening)
        deadline = time.monotonic() + ready_timeout
        while want:
            with self.cond:
                seen = {e.get("address") for e in self.events if e.get("event") == "listening"}
            want -= seen
            if not want:
                break
            if self.proc.poll() is not None or time.monotonic() >= deadline:
                raise Fatal("sightline in netns %s: no 'listening' line for %s within %ss "
                            "(rc=%s); stderr:\n%s" % (netns.short, ", ".join(sorted(want)),
                                                     ready_timeout, self.proc.poll(),
                                                     self.stderr_text()[-3000:]))
            time.sleep(0.05)
