#!/usr/bin/env python3
"""The driver behind bench/run (see bench/README.md).

Starts, on 127.0.0.1 only, an nginx origin and every proxy (sightline,
sslsplit, Squid SslBump with and without upstream reuse, mitmproxy), runs
the workloads W1-W5 against each of them one after another (repetitions
interleaved: rep 1 of every system, then rep 2, ...), measures the CPU and
memory of each proxy's process tree from /proc, and prints one markdown
table of medians with ratios to direct and to sightline.

Not meant to be run by hand: bench/run installs the packages, builds
sightline and then execs this with --build/--build-nometrics.
"""

import argparse
import datetime
import glob
import json
import os
import random
import re
import resource
import shutil
import signal
import urllib.request
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CLK = os.sysconf("SC_CLK_TCK")
MiB = 1024 * 1024
BULK = 100 * MiB


def log(msg):
    print("== " + msg, file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# --------------------------------------------------------------------------
# processes

class Procs:
    """Every process started here runs in its own session (process group);
    stop_all() terminates each group, then kills what is left."""

    def __init__(self):
        self.procs = []

    def start(self, name, cmd, logfile, cwd=None, env=None, stdin=subprocess.DEVNULL):
        out = open(logfile, "ab")
        p = subprocess.Popen(cmd, stdin=stdin, stdout=out, stderr=subprocess.STDOUT,
                             cwd=cwd, env=env, start_new_session=True)
        out.close()
        p.bench_name = name
        p.bench_log = logfile
        self.procs.append(p)
        return p

    def stop(self, p, timeout=5.0):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # The group may outlive its leader (helpers, nginx workers).
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            p.wait(2)
        except subprocess.TimeoutExpired:
            pass
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in list(reversed(self.procs)):
            self.stop(p)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------------
# /proc accounting

def _children_map():
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        ppid = int(st.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
    return children


def tree(pid):
    if pid is None:
        return []
    ch = _children_map()
    out = [pid]
    i = 0
    while i < len(out):
        out += ch.get(out[i], [])
        i += 1
    return out


def cpu_seconds(pids):
    """utime+stime (all threads) plus reaped children's, summed over pids."""
    t = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                f_ = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        t += int(f_[11]) + int(f_[12]) + int(f_[13]) + int(f_[14])
    return t / CLK


def rss_kib(pids):
    t = 0
    for pid in pids:
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        t += int(line.split()[1])
        except OSError:
            continue
    return t


def machine_cpu():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    total = sum(v[:8])
    idle = v[3] + v[4]
    return (total - idle) / CLK, total / CLK


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Meter:
    """CPU of the proxy tree, the origin tree, the load generator (our
    reaped children) and the whole machine over one run."""

    def __init__(self, proxy_pid, origin_pid):
        self.proxy_pid = proxy_pid
        self.origin_pid = origin_pid

    def __enter__(self):
        self.p0 = cpu_seconds(tree(self.proxy_pid))
        self.o0 = cpu_seconds(tree(self.origin_pid))
        self.c0 = children_cpu()
        self.m0, self.t0 = machine_cpu()
        self.w0 = time.time()
        return self

    def __exit__(self, *exc):
        self.proxy = cpu_seconds(tree(self.proxy_pid)) - self.p0 if self.proxy_pid else None
        self.origin = cpu_seconds(tree(self.origin_pid)) - self.o0
        self.client = children_cpu() - self.c0
        m1, t1 = machine_cpu()
        self.machine_busy = m1 - self.m0
        self.machine_total = t1 - self.t0
        self.wall = time.time() - self.w0
        return False

    def record(self):
        other = self.machine_busy - (self.proxy or 0) - self.origin - self.client
        return {"proxy_cpu_s": self.proxy, "origin_cpu_s": self.origin,
                "client_cpu_s": self.client, "machine_busy_s": self.machine_busy,
                "machine_total_s": self.machine_total, "other_cpu_s": max(other, 0.0),
                "wall_s": self.wall}


# --------------------------------------------------------------------------
# the environment

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile 60000;
pid {d}/nginx/nginx.pid;
error_log {d}/nginx/error.log warn;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  default_type application/octet-stream;
  client_body_temp_path {d}/nginx/body;
  proxy_temp_path {d}/nginx/proxy;
  fastcgi_temp_path {d}/nginx/fastcgi;
  uwsgi_temp_path {d}/nginx/uwsgi;
  scgi_temp_path {d}/nginx/scgi;
  keepalive_timeout 300s;
  keepalive_requests 100000000;
  client_max_body_size 200m;
  ssl_protocols TLSv1.3;
  ssl_certificate {pki}/valid-ec.fullchain.crt;
  ssl_certificate_key {pki}/valid-ec.key;
  root {d}/www;

  # The origin every system talks to: TLS 1.3 only, h2, no session
  # resumption (no tickets, no cache): every upstream handshake is a full one.
  server {{
    listen 127.0.0.1:{port} ssl http2;
    listen [::1]:{port} ssl http2;
    ssl_session_tickets off;
    ssl_session_cache off;
    {upload}
  }}
  # The same files with resumption allowed (session tickets + cache), for
  # "sightline (upstream resumption allowed)".
  server {{
    listen 127.0.0.1:{port_resume} ssl http2;
    listen [::1]:{port_resume} ssl http2;
    ssl_session_tickets on;
    ssl_session_cache shared:bench:20m;
    ssl_session_timeout 1h;
    {upload}
  }}
  # An origin whose certificate is issued by a CA the proxies do not trust:
  # every proxy must refuse to relay it (checked before the measurements).
  server {{
    listen 127.0.0.1:{port_bad} ssl;
    listen [::1]:{port_bad} ssl;
    ssl_certificate {pki}/unknownroot.fullchain.crt;
    ssl_certificate_key {pki}/unknownroot.key;
  }}
}}
"""

# POST /upload: the mirror module reads the whole request body before the
# content phase (into one in-memory buffer); the static handler then answers
# 405 for POST, turned into 200 with a tiny body.
UPLOAD_LOCATION = """location = /upload {
      client_body_buffer_size 128m;
      mirror /discard;
      mirror_request_body on;
      error_page 405 =200 /ok.txt;
    }
    location = /discard { internal; return 204; }"""

SQUID_CONF = """\
# Squid SslBump, explicit proxy (clients send CONNECT). Certificates for
# clients are generated by security_file_certgen, signed by the bench CA.
http_port 127.0.0.1:{port} ssl-bump tls-cert={d}/ca.pem generate-host-certificates=on dynamic_cert_mem_cache_size=16MB
sslcrtd_program /usr/lib/squid/security_file_certgen -s {d}/ssl_db -M 16MB
sslcrtd_children 4 startup=1 idle=1
{bump}
# Upstream verification against the origin CA (chain + name); errors refuse.
tls_outgoing_options cafile={d}/origin-ca.crt
sslproxy_cert_error deny all
http_access allow all
# No caching at all: every request goes to the origin.
cache deny all
cache_mem 0 MB
server_persistent_connections {reuse}
access_log stdio:{d}/access.log
cache_log {d}/cache.log
pid_filename {d}/squid.pid
coredump_dir {d}
max_filedescriptors 60000
pinger_enable off
shutdown_lifetime 0 seconds
client_idle_pconn_timeout 10 minutes
"""


def write(path, text, mode=None):
    with open(path, "w") as f:
        f.write(text)
    if mode is not None:
        os.chmod(path, mode)


def random_domain(rng):
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"

    def label():
        return "".join(rng.choice(chars) for _ in range(rng.randint(3, 12)))
    tlds = ["com", "net", "org", "io", "co.uk", "de", "example"]
    parts = [label() for _ in range(rng.randint(1, 3))]
    return ".".join(parts) + "." + rng.choice(tlds)


class Service:
    def __init__(self, name, start):
        self.name = name
        self.start = start
        self.proc = None


class System:
    def __init__(self, name, kind, port, cafile, via=None, host="localhost", workloads=(),
                 h1_h2load=False, h2=False, note="", client_resume=False):
        self.name = name
        self.kind = kind            # "direct", "static" or "connect"
        self.port = port            # where clients connect
        self.via = via              # CONNECT target for kind "connect"
        self.cafile = cafile
        self.host = host
        self.workloads = set(workloads)
        self.h1_h2load = h1_h2load
        self.h2 = h2
        self.note = note
        self.client_resume = client_resume  # loadgen --resume: clients offer their last session
        self.service = None         # the proxy's Service (None for direct)
        self.archive_admin = None   # admin port of a variant with an archive (its queue is drained per run)
        self.broken = None          # reason when the smoke test failed
        self.verify = None          # result of the invalid-upstream check

    @property
    def proc(self):
        return self.service.proc if self.service is not None else None

    @property
    def pid(self):
        return self.proc.pid if self.proc is not None else None

    def url(self, path, origin_port):
        if self.kind == "connect":
            return "https://localhost:%d%s" % (origin_port, path)
        return "https://localhost:%d%s" % (self.port, path)

    def loadgen_args(self):
        a = ["--connect", "127.0.0.1:%d" % self.port, "--host", self.host, "--cafile", self.cafile]
        if self.kind == "connect":
            a += ["--via-connect", self.via]
        if self.client_resume:
            a += ["--resume"]
        return a

    def curl_args(self):
        a = ["--cacert", self.cafile]
        if self.kind == "connect":
            a += ["--proxy", "http://127.0.0.1:%d" % self.port]
        return a


class Env:
    def __init__(self, args):
        self.args = args
        self.procs = Procs()
        self.dir = tempfile.mkdtemp(prefix="sightline-bench-")
        os.chmod(self.dir, 0o711)   # squid's helpers run as user proxy
        self.sightline = os.path.abspath(args.sightline)
        self.loadgen = os.path.abspath(args.loadgen)
        self.systems = []
        self.admin_ports = {}  # sightline config name → its admin port
        self.versions = {}

    # ---- files
    def make_files(self):
        d = self.dir
        log("temp dir %s" % d)
        subprocess.run([os.path.join(REPO, "tests/pki/make-test-pki"), d + "/pki"], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run([os.path.join(REPO, "ca/sightline-ca"), "--out", d + "/ca",
                        "--name", "sightline bench CA"], check=True, stdout=subprocess.DEVNULL)
        self.pki = d + "/pki"
        self.origin_ca = self.pki + "/origin-ca.crt"
        self.root = d + "/ca/root.crt"
        self.ca_cert = d + "/ca/ca.crt"
        self.ca_key = d + "/ca/ca.key"
        subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-out", d + "/leaf.key"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.chmod(d + "/leaf.key", 0o600)
        www = d + "/www"
        os.makedirs(www)
        rnd = random.Random(6)
        with open(www + "/1k", "wb") as f:
            f.write(rnd.randbytes(1024))
        with open(www + "/64k", "wb") as f:
            f.write(rnd.randbytes(64 * 1024))
        # 100 MiB of incompressible bytes (one MiB block repeated) for W3.
        block = rnd.randbytes(MiB)
        with open(www + "/100m", "wb") as f:
            for _ in range(100):
                f.write(block)
        os.link(www + "/100m", d + "/upload.bin")
        write(www + "/upload", "upload target\n")
        write(www + "/ok.txt", "ok\n")
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(d + "/nginx/" + sub, exist_ok=True)
        # W5: a policy with 100,000 names (none of them matches localhost).
        rng = random.Random(100000)
        names = set()
        while len(names) < 100000:
            n = random_domain(rng)
            names.add(("." + n) if rng.random() < 0.3 else n)
        # Policies in their own directory: sightline watches the directory of
        # its policy files, and the logs and load-generator files written
        # during the runs go elsewhere.
        os.makedirs(d + "/policy")
        os.makedirs(d + "/logs")
        write(d + "/policy/names100k.txt", "\n".join(sorted(names)) + "\n")
        # auto_bypass off: a load generator that stops in the middle of a
        # handshake must not turn interception off for 127.0.0.1/localhost.
        write(d + "/policy/100k.toml",
              '[policy]\ndefault = "inspect"\nauto_bypass = false\n\n[[rule]]\nname = "bench-100k"\n'
              'action = "bypass"\ndomains_file = "names100k.txt"\n')
        write(d + "/policy/none.toml", '[policy]\ndefault = "inspect"\nauto_bypass = false\n')

    # ---- services: a process with a start function, restartable (W4
    # measures every proxy fresh, so memory freed by earlier runs and kept
    # by the allocator does not hide the cost of new connections).
    def start_service(self, svc):
        svc.proc = svc.start()
        return svc.proc

    def restart_service(self, svc):
        if svc.proc is not None:
            self.procs.stop(svc.proc)
        time.sleep(0.2)
        return self.start_service(svc)

    # ---- origin
    def start_origin(self):
        d = self.dir
        self.origin_port = free_port()
        self.origin_port_resume = free_port()
        self.origin_port_bad = free_port()
        conf = NGINX_CONF.format(d=d, pki=self.pki, port=self.origin_port,
                                 port_resume=self.origin_port_resume, port_bad=self.origin_port_bad,
                                 workers=os.cpu_count() or 2, upload=UPLOAD_LOCATION)
        write(d + "/nginx/nginx.conf", conf)

        def start():
            p = self.procs.start("nginx", ["nginx", "-p", d + "/nginx", "-c", d + "/nginx/nginx.conf"],
                                 d + "/nginx/stdout.log")
            if not wait_port(self.origin_port, p):
                raise BenchError("nginx origin did not start:\n" + tail(d + "/nginx/error.log")
                                 + tail(d + "/nginx/stdout.log"))
            return p
        self.origin_svc = Service("nginx", start)
        self.start_service(self.origin_svc)

    @property
    def origin(self):
        return self.origin_svc.proc

    # ---- sightline
    def sightline_config(self, name, listeners, policy=None, quiet=False, workers=None, extra="",
                         reuse=False, binary=None):
        d = self.dir
        admin = free_port()
        self.admin_ports[name] = admin
        lines = ["workers = %d" % (self.args.sightline_workers if workers is None else workers), "",
                 "[admin]", 'listen = "127.0.0.1:%d"' % admin, ""]
        for addr_port, mode, target in listeners:
            lines += ["[[listener]]", 'address = "127.0.0.1:%d"' % addr_port, 'mode = "%s"' % mode]
            if target:
                lines.append('target = "%s"' % target)
            lines.append("")
        lines += ["[ca]", 'cert = "%s"' % self.ca_cert, 'key = "%s"' % self.ca_key, "",
                  "[upstream]", 'ca_file = "%s"' % self.origin_ca]
        # Every row but sightline-reuse makes a new origin connection per
        # client connection (W1's "full upstream handshake"); binaries from
        # before upstream.reuse (bench/run --rev) do not know the key.
        if self.binary_knows(b"reuse_per_origin", binary):
            lines.append("reuse = %s" % ("true" if reuse else "false"))
        # The origins are on loopback, the load comes from one address:
        # open what issue 11's defaults close (binaries from before it do
        # not know the keys).
        if self.binary_knows(b"deny_destinations", binary):
            lines += ["", "[access]", 'connect_ports = ["1-65535"]', 'allow_destinations = ["127.0.0.0/8"]',
                      "", "[limits]", "max_connections = 0", "max_connections_per_client = 0"]
        lines += ["",
                  "[policy]", 'files = ["%s"]' % (policy or d + "/policy/none.toml"), "",
                  "[log]", 'file = "%s/logs/%s.log"' % (d, name)]
        if quiet:
            lines += ['level = "warn"', "exchanges = false"]
        lines.append("")
        if extra:
            lines += [extra, ""]
        path = "%s/%s.toml" % (d, name)
        write(path, "\n".join(lines))
        return path

    def binary_knows(self, key, binary=None):
        """Whether a sightline binary (default: the main one) has the string
        `key` (a configuration key it accepts)."""
        binary = binary or self.sightline
        cache = self.__dict__.setdefault("_binary_text", {})
        if binary not in cache:
            with open(binary, "rb") as f:
                cache[binary] = f.read()
        return key in cache[binary]

    def sightline_service(self, name, binary, listeners, policy=None, quiet=False, workers=None, extra="",
                          reuse=False):
        cfg = self.sightline_config(name, listeners, policy, quiet, workers, extra, reuse, binary)
        d = self.dir

        def start():
            p = self.procs.start(name, [binary, "run", "-c", cfg], "%s/logs/%s.stderr" % (d, name), cwd=d)
            for port, _, _ in listeners:
                if not wait_port(port, p):
                    raise BenchError("%s did not start:\n%s" % (name, tail("%s/logs/%s.stderr" % (d, name))
                                                                + tail("%s/logs/%s.log" % (d, name))))
            return p
        svc = Service(name, start)
        self.start_service(svc)
        return svc

    def start_c_icap(self):
        """c-icap with its echo service on loopback (ICAP's added latency);
        None when it is not installed."""
        mods = next((d for d in glob.glob("/usr/lib/*/c_icap") + ["/usr/lib/c_icap"]
                     if os.path.exists(os.path.join(d, "srv_echo.so"))), None)
        if not shutil.which("c-icap") or not mods:
            return None
        d = self.dir + "/c-icap"
        os.makedirs(d, exist_ok=True)
        port = free_port()
        conf = ["PidFile %s/c-icap.pid" % d, "CommandsSocket %s/c-icap.ctl" % d,
                "Port 127.0.0.1:%d" % port, "Timeout 60", "MaxKeepAliveRequests 0",
                # One thread per connection for its life (docs/icap.md): each
                # sightline worker keeps up to icap max_connections (16) per
                # service, REQMOD and RESPMOD being two services. With 16
                # threads W1's 32 concurrent exchanges filled them with
                # REQMOD connections and every RESPMOD waited forever.
                "KeepAliveTimeout 600", "StartServers 1", "MaxServers 1", "ThreadsPerChild 64",
                "MinSpareThreads 4", "MaxSpareThreads 64", "TmpDir %s" % d, "MaxMemObject 1048576",
                "DebugLevel 0", "ModulesDir %s" % mods, "ServicesDir %s" % mods,
                "TemplateDir /usr/share/c_icap/templates/", "LoadMagicFile /etc/c-icap/c-icap.magic",
                "ServerLog %s/server.log" % d, "AccessLog /dev/null", "Service echo srv_echo.so"]
        write(d + "/c-icap.conf", "\n".join(conf) + "\n")

        def start():
            p = self.procs.start("c-icap", ["c-icap", "-N", "-D", "-f", d + "/c-icap.conf"],
                                 "%s/logs/c-icap.stderr" % self.dir)
            if not wait_port(port, p):
                raise BenchError("c-icap did not start:\n" + tail("%s/logs/c-icap.stderr" % self.dir))
            return p
        self.start_service(Service("c-icap", start))
        return port

    def start_all(self):
        a = self.args
        d = self.dir
        O = self.origin_port
        want = set(a.systems.split(",")) if a.systems else None

        def wanted(name):
            return want is None or name in want or name == "direct" or name == "sightline"

        def add(sys_, svc):
            sys_.service = svc
            self.systems.append(sys_)

        # direct: the load generator talks to the origin itself.
        add(System("direct", "direct", O, self.origin_ca,
                   workloads=["W1", "W2ka", "W2lat", "W2h1", "W2h2", "W3", "W4"], h1_h2load=True, h2=True), None)

        # sightline: one process, static listeners toward both origins plus
        # an explicit (CONNECT) listener and one toward the bad origin.
        sl_static, sl_connect, sl_resume, sl_bad = free_port(), free_port(), free_port(), free_port()
        self.sightline_bad_port = sl_bad
        sl = self.sightline_service("sightline", self.sightline, [
            (sl_static, "static", "127.0.0.1:%d" % O),
            (sl_connect, "explicit", None),
            (sl_resume, "static", "127.0.0.1:%d" % self.origin_port_resume),
            (sl_bad, "static", "127.0.0.1:%d" % self.origin_port_bad),
        ])
        add(System("sightline", "static", sl_static, self.root,
                   workloads=["W1", "W2ka", "W2lat", "W2h1", "W2h2", "W3", "W4"], h1_h2load=True, h2=True,
                   note="static listener -> 127.0.0.1:origin"), sl)
        if wanted("sightline-connect"):
            add(System("sightline-connect", "connect", sl_connect, self.root, via="localhost:%d" % O,
                       workloads=["W1", "W2ka"], note="explicit listener, CONNECT localhost:origin"), sl)
        if wanted("sightline-resume"):
            add(System("sightline-resume", "static", sl_resume, self.root, workloads=["W1"],
                       note="static listener -> origin that allows TLS resumption"), sl)
        if wanted("sightline-tickets"):
            add(System("sightline-tickets", "static", sl_resume, self.root, workloads=["W1"], client_resume=True,
                       note="as sightline-resume, and each client resumes with its previous session ticket"), sl)
        if wanted("sightline-reuse") and self.binary_knows(b"reuse_per_origin"):
            p = free_port()
            svc = self.sightline_service("sightline-reuse", self.sightline,
                                         [(p, "static", "127.0.0.1:%d" % self.origin_port_resume)], reuse=True)
            add(System("sightline-reuse", "static", p, self.root, workloads=["W1", "W4"],
                       note="upstream.reuse and release_idle on (the defaults), origin that allows TLS "
                            "resumption"), svc)

        # W5 variants, each its own process with one static listener, and a
        # baseline started the same way (the main process above also serves
        # the other listeners and runs first, so it is not the baseline).
        if wanted("sightline-base") and not a.no_w5:
            p = free_port()
            svc = self.sightline_service("sightline-base", self.sightline, [(p, "static", "127.0.0.1:%d" % O)],
                                         workers=a.w5_workers)
            base_wl = ["W1", "W2lat", "W2h1"] + (["W2ka", "W4"] if a.alt_sightline else [])
            add(System("sightline-base", "static", p, self.root, workloads=base_wl,
                       h1_h2load=True, note="W5 baseline: same as the variants, no feature changed"), svc)
        if wanted("sightline-policy100k") and not a.no_w5:
            p = free_port()
            svc = self.sightline_service("sightline-policy100k", self.sightline,
                                         [(p, "static", "127.0.0.1:%d" % O)], policy=d + "/policy/100k.toml",
                                         workers=a.w5_workers)
            add(System("sightline-policy100k", "static", p, self.root, workloads=["W1", "W2h1"],
                       h1_h2load=True, note="W5: policy with 100,000 names"), svc)
        if wanted("sightline-nolog") and not a.no_w5:
            p = free_port()
            svc = self.sightline_service("sightline-nolog", self.sightline,
                                         [(p, "static", "127.0.0.1:%d" % O)], quiet=True,
                                         workers=a.w5_workers)
            add(System("sightline-nolog", "static", p, self.root, workloads=["W1", "W2lat", "W2h1"],
                       h1_h2load=True, note="W5: log level warn, no exchange lines"), svc)
        if wanted("sightline-pcap") and not a.no_w5:
            p = free_port()
            os.makedirs(d + "/pcap", exist_ok=True)
            # Rotation keeps the disk bounded over a whole run: 8 files of 256 MiB.
            svc = self.sightline_service("sightline-pcap", self.sightline,
                                         [(p, "static", "127.0.0.1:%d" % O)], workers=a.w5_workers,
                                         extra='[pcap]\ndir = "%s/pcap"\nmax_files = 8\n' % d)
            add(System("sightline-pcap", "static", p, self.root, workloads=["W1", "W2h1"],
                       h1_h2load=True, note="W5: decrypted PCAP-NG of all traffic to files"), svc)
        if wanted("sightline-icap") and not a.no_w5:
            icap_port = self.start_c_icap()
            if icap_port:
                p = free_port()
                echo = "icap://127.0.0.1:%d/echo" % icap_port
                svc = self.sightline_service("sightline-icap", self.sightline,
                                             [(p, "static", "127.0.0.1:%d" % O)], workers=a.w5_workers,
                                             extra='[icap]\nreqmod = "%s"\nrespmod = "%s"\n' % (echo, echo))
                add(System("sightline-icap", "static", p, self.root, workloads=["W1", "W2lat", "W2h1"],
                           h1_h2load=True, note="W5: ICAP REQMOD and RESPMOD to c-icap's echo service"), svc)
            else:
                log("c-icap not installed; W5 ICAP row skipped")
        # sightline-archive-interval (sync = "interval", 1 s) only when named
        # in --systems: it shows what the durable default costs in syncs.
        for name, sync in (("sightline-archive", "record"), ("sightline-archive-interval", "interval")):
            if a.no_w5 or not wanted(name) or (sync != "record" and (want is None or name not in want)):
                continue
            p = free_port()
            key = d + "/archive.key"
            if not os.path.exists(key):
                subprocess.run([self.sightline, "archive", "keygen", key], check=True, capture_output=True)
            svc = self.sightline_service(name, self.sightline,
                                         [(p, "static", "127.0.0.1:%d" % O)], workers=a.w5_workers,
                                         extra='[archive]\ndir = "%s/%s"\nkey = "%s"\nall = true\nsync = "%s"\n' %
                                         (d, name, key, sync))
            add(System(name, "static", p, self.root, workloads=["W1", "W2h1"],
                       h1_h2load=True, note="W5: compliance archive of every exchange (sync = %s)" % sync), svc)
            self.systems[-1].archive_admin = self.admin_ports[name]
        if a.alt_sightline:
            # A/B in one run: another sightline binary set up exactly like
            # sightline-base (compare the two rows).
            p = free_port()
            svc = self.sightline_service("sightline-alt", os.path.abspath(a.alt_sightline),
                                         [(p, "static", "127.0.0.1:%d" % O)], workers=a.w5_workers)
            add(System("sightline-alt", "static", p, self.root, workloads=["W1", "W2ka", "W2lat", "W2h1", "W4"],
                       h1_h2load=True, note="--alt-sightline %s, set up like sightline-base" % a.alt_sightline),
                svc)
        nm = os.path.abspath(a.sightline_nometrics) if a.sightline_nometrics else None
        if wanted("sightline-nometrics") and not a.no_w5:
            if nm and os.access(nm, os.X_OK):
                p = free_port()
                svc = self.sightline_service("sightline-nometrics", nm, [(p, "static", "127.0.0.1:%d" % O)],
                                             workers=a.w5_workers)
                add(System("sightline-nometrics", "static", p, self.root, workloads=["W1", "W2h1"],
                           h1_h2load=True, note="W5: built with -Dmetrics=false"), svc)
            else:
                log("no -Dmetrics=false build; W5 metrics row skipped")

        # sslsplit: static destination, opaque "ssl" spec (no HTTP parsing),
        # forges with the bench CA and an ECDSA P-256 leaf key.
        if wanted("sslsplit") and shutil.which("sslsplit"):
            p, pbad = free_port(), free_port()
            self.sslsplit_bad_port = pbad

            def start_sslsplit():
                proc = self.procs.start("sslsplit", [
                    "sslsplit", "-k", self.ca_key, "-c", self.ca_cert, "-K", d + "/leaf.key",
                    "ssl", "127.0.0.1", str(p), "127.0.0.1", str(O),
                    "ssl", "127.0.0.1", str(pbad), "127.0.0.1", str(self.origin_port_bad)],
                    d + "/logs/sslsplit.log")
                if not wait_port(p, proc):
                    raise BenchError("sslsplit did not start:\n" + tail(d + "/logs/sslsplit.log"))
                return proc
            svc = Service("sslsplit", start_sslsplit)
            self.start_service(svc)
            add(System("sslsplit", "static", p, self.root, workloads=["W1", "W2ka", "W2lat", "W2h1", "W3", "W4"],
                       h1_h2load=True, note="ssl 127.0.0.1 P 127.0.0.1 origin"), svc)

        # Squid SslBump (explicit, CONNECT). "squid": server-first bumping
        # (peek at the ClientHello, stare at the origin's certificate, bump),
        # the usual configuration: the origin is verified before the client
        # handshake and its certificate mimicked; the upstream connection is
        # pinned to the client connection, so every client connection costs
        # a new upstream handshake whatever server_persistent_connections
        # says. "squid-reuse"/"squid-noreuse": client-first bumping (bump at
        # step 1, certificate from the CONNECT name), where requests are
        # forwarded like plain ones and server_persistent_connections
        # decides whether upstream TLS connections are reused.
        server_first = "acl step1 at_step SslBump1\nssl_bump peek step1\nssl_bump stare all\nssl_bump bump all"
        client_first = "ssl_bump bump all"
        if shutil.which("squid"):
            for name, reuse, bump, wl in (
                    ("squid", "on", server_first, ["W1", "W2ka", "W2lat", "W3", "W4"]),
                    ("squid-reuse", "on", client_first, ["W1", "W2ka"]),
                    ("squid-noreuse", "off", client_first, ["W1", "W2ka"])):
                if not wanted(name):
                    continue
                sd = "%s/%s" % (d, name)
                os.makedirs(sd)
                shutil.copy(self.origin_ca, sd + "/origin-ca.crt")
                with open(sd + "/ca.pem", "w") as f:
                    f.write(open(self.ca_cert).read() + open(self.ca_key).read())
                os.chmod(sd + "/ca.pem", 0o600)
                subprocess.run(["/usr/lib/squid/security_file_certgen", "-c", "-s", sd + "/ssl_db",
                                "-M", "16MB"], check=True, stdout=subprocess.DEVNULL)
                port = free_port()
                write(sd + "/squid.conf", SQUID_CONF.format(d=sd, port=port, reuse=reuse, bump=bump))
                subprocess.run(["chown", "-R", "proxy:proxy", sd], check=True)

                def start_squid(name=name, sd=sd, port=port):
                    proc = self.procs.start(name, ["squid", "-N", "-f", sd + "/squid.conf"], sd + "/stdout.log")
                    if not wait_port(port, proc, 30):
                        raise BenchError("%s did not start:\n%s" % (name, tail(sd + "/cache.log")
                                                                    + tail(sd + "/stdout.log")))
                    return proc
                svc = Service(name, start_squid)
                self.start_service(svc)
                add(System(name, "connect", port, self.root, via="localhost:%d" % O, workloads=wl,
                           note="http_port ssl-bump, %s bumping, server_persistent_connections %s" % (
                               "server-first" if bump == server_first else "client-first", reuse)), svc)

        # mitmproxy: reverse mode, the bench CA in its confdir, upstream
        # verified against the origin CA, bodies over 1 MiB streamed.
        if wanted("mitmproxy") and shutil.which("mitmdump"):
            md = d + "/mitmproxy"
            os.makedirs(md)
            write(md + "/mitmproxy-ca.pem", open(self.ca_key).read() + open(self.ca_cert).read(), 0o600)
            port = free_port()
            self.mitm_conf = md

            def start_mitm():
                proc = self.procs.start("mitmproxy", self.mitm_cmd(port, O), d + "/logs/mitmproxy.log")
                if not wait_port(port, proc, 30):
                    raise BenchError("mitmproxy did not start:\n" + tail(d + "/logs/mitmproxy.log"))
                return proc
            svc = Service("mitmproxy", start_mitm)
            self.start_service(svc)
            add(System("mitmproxy", "static", port, self.root,
                       workloads=["W1", "W2ka", "W2lat", "W2h1", "W2h2", "W3", "W4"], h1_h2load=True, h2=True,
                       note="mitmdump --mode reverse:https://localhost:origin"), svc)

    def mitm_cmd(self, port, origin_port):
        return ["mitmdump", "--mode", "reverse:https://localhost:%d" % origin_port,
                "--listen-host", "127.0.0.1", "--listen-port", str(port),
                "--set", "confdir=" + self.mitm_conf,
                "--set", "ssl_verify_upstream_trusted_ca=" + self.origin_ca,
                "--set", "stream_large_bodies=1m"]

    def versions_info(self):
        def first_line(cmd):
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
                return (out.stdout + out.stderr).strip().splitlines()[0]
            except Exception:
                return "n/a"
        self.versions = {
            "sightline": first_line([self.sightline, "version"]),
            "nginx": first_line(["nginx", "-v"]),
            "sslsplit": first_line(["sslsplit", "-V"]),
            "squid": first_line(["squid", "-v"]),
            "mitmproxy": first_line(["mitmdump", "--version"]),
            "h2load": first_line(["h2load", "--version"]),
            "curl": first_line(["curl", "--version"]),
            "openssl": first_line(["openssl", "version"]),
        }


# --------------------------------------------------------------------------
# workloads

def run_loadgen(env, system, mode, conc, duration, threads=1, extra=(), timeout=None):
    cmd = [env.loadgen] + system.loadgen_args() + ["--mode", mode, "-c", str(conc), "-d", str(duration),
                                                  "-t", str(threads), "--path", "/1k"] + list(extra)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout or duration + 60)
    except subprocess.TimeoutExpired:
        return {"error": "loadgen timed out"}
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": "loadgen failed: rc=%d %s" % (out.returncode, out.stderr[-500:])}


def w1(env, s, a):
    with Meter(s.pid, env.origin.pid) as m:
        r = run_loadgen(env, s, "close", a.w1_concurrency, a.w1_duration, threads=2)
    r.update(m.record())
    n = r.get("completed_total") or r.get("completed", 0)   # CPU covers the drained ones too
    r["conn_per_s"] = r.get("rate", 0.0)
    r["resumed_share"] = (r.get("resumed", 0) / n) if n else None   # client handshakes resumed
    r["proxy_ms_per_conn"] = (r["proxy_cpu_s"] * 1000 / n) if n and r["proxy_cpu_s"] is not None else None
    r["origin_ms_per_conn"] = (r["origin_cpu_s"] * 1000 / n) if n else None
    return r


def w2ka(env, s, a, connections=None):
    """Keep-alive requests, one at a time per connection. With one
    connection (W2lat) p50/p99 are the time a request takes unloaded, not
    queueing behind others."""
    with Meter(s.pid, env.origin.pid) as m:
        r = run_loadgen(env, s, "keepalive", connections or a.w2_connections, a.w2_duration, threads=1)
    r.update(m.record())
    n = r.get("completed_total") or r.get("completed", 0)
    r["req_per_s"] = r.get("rate", 0.0)
    r["proxy_us_per_req"] = (r["proxy_cpu_s"] * 1e6 / n) if n and r["proxy_cpu_s"] is not None else None
    r["origin_us_per_req"] = (r["origin_cpu_s"] * 1e6 / n) if n else None
    return r


H2LOAD_FIN = re.compile(r"finished in ([\d.]+)(s|ms), ([\d.]+) req/s")
H2LOAD_REQ = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                        r"(\d+) errored, (\d+) timeout")


def archive_drain(s, timeout=60.0):
    """Seconds until the archive queue of `s` is empty after a run (None when
    it has no archive). The writer may lag behind the traffic (it runs at low
    priority); its CPU for this run's exchanges must be in this run's meter."""
    if not s.archive_admin:
        return None
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % s.archive_admin, timeout=5) as f:
                m = re.search(r"^sightline_archive_queue_depth (\S+)$", f.read().decode(), re.M)
            if m and float(m.group(1)) == 0:
                return time.time() - t0
        except OSError:
            pass
        time.sleep(0.05)
    return time.time() - t0


def w2_h2load(env, s, a, h2):
    logf = os.path.join(env.dir, "h2load.log")
    if os.path.exists(logf):
        os.unlink(logf)
    cmd = ["h2load", "-c", str(a.w2_connections), "-t", "1", "-m", "1", "-D", str(max(1, round(a.w2_duration))),
           "--log-file", logf, s.url("/1k", env.origin_port)]
    if not h2:
        cmd.insert(1, "--h1")
    with Meter(s.pid, env.origin.pid) as m:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=a.w2_duration + 60)
            text = out.stdout
            errtext = out.stderr
        except subprocess.TimeoutExpired:
            text, errtext = "", "h2load timed out"
        # Work the archive writer still owes counts against this run.
        drain_s = archive_drain(s)
    r = m.record()
    if drain_s is not None:
        r["archive_drain_s"] = drain_s
    fin, req = H2LOAD_FIN.search(text), H2LOAD_REQ.search(text)
    if not fin or not req:
        r["error"] = "h2load failed: " + (text[-300:] + errtext[-300:]).strip()
        return r
    ok = int(req.group(4))
    r.update({"completed": ok, "failed": int(req.group(5)) + int(req.group(6)) + int(req.group(7)),
              "req_per_s": float(fin.group(3))})
    lat = []
    starts = []
    try:
        with open(logf) as f:
            for line in f:
                p = line.split("\t")
                if len(p) >= 3 and p[1] == "200":
                    starts.append(int(p[0]))
                    lat.append(int(p[2]) / 1000.0)
    except OSError:
        pass
    lat.sort()
    if lat:
        r["p50_ms"] = lat[int(0.5 * (len(lat) - 1))]
        r["p99_ms"] = lat[int(0.99 * (len(lat) - 1))]
    # Requests are sent one at a time per connection for the whole -D
    # duration; if none started during the last quarter, every connection
    # had stopped making progress.
    if starts:
        span = (max(starts) - min(starts)) / 1e6
        dur = max(1, round(a.w2_duration))
        if span < 0.75 * dur:
            r["stalled"] = 1
            r["stall_note"] = ("no request started after %.1f s of the %d s run: every connection "
                               "stopped (%d requests, %.0f per connection)" % (
                                   span, dur, ok, ok / a.w2_connections))
    r["proxy_us_per_req"] = (r["proxy_cpu_s"] * 1e6 / ok) if ok and r["proxy_cpu_s"] is not None else None
    r["origin_us_per_req"] = (r["origin_cpu_s"] * 1e6 / ok) if ok else None
    if r["failed"]:
        r["error"] = "%d requests failed" % r["failed"]
    return r


def w3(env, s, a, direction):
    """a.w3_transfers consecutive 100 MiB transfers measured together (one
    transfer takes 0.1-0.5 s, too short for 10 ms CPU ticks on its own)."""
    base = ["curl", "--http1.1", "-sS", "-o", "/dev/null", "--max-time", str(a.w3_timeout)] + s.curl_args()
    if direction == "down":
        cmd = base + ["-w", "%{http_code} %{size_download} %{time_total}", s.url("/100m", env.origin_port)]
    else:
        cmd = base + ["-H", "Expect:", "-X", "POST", "-T", env.dir + "/upload.bin",
                      "-w", "%{http_code} %{size_upload} %{time_total}", s.url("/upload", env.origin_port)]
    total_bytes, total_secs, err = 0, 0.0, None
    with Meter(s.pid, env.origin.pid) as m:
        for _ in range(a.w3_transfers):
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=a.w3_timeout + 30)
            try:
                code, size, secs = out.stdout.split()
                size, secs = int(float(size)), float(secs)
            except ValueError:
                err = "curl failed: " + out.stderr[-300:]
                break
            total_bytes += size
            total_secs += secs
            if code != "200" or size != BULK:
                err = "status %s, %d of %d bytes (%s)" % (code, size, BULK, out.stderr.strip()[-200:])
                break
    r = m.record()
    r["bytes"] = total_bytes
    r["seconds"] = total_secs
    if err:
        r["error"] = err
    r["mib_per_s"] = total_bytes / MiB / total_secs if total_secs > 0 else None
    if r["proxy_cpu_s"] is not None and total_bytes:
        r["proxy_s_per_100mib"] = r["proxy_cpu_s"] * BULK / total_bytes
    r["origin_s_per_100mib"] = r["origin_cpu_s"] * BULK / total_bytes if total_bytes else None
    return r


def w4(env, s, a):
    # A fresh process for every measurement, warmed up with a few
    # connections (forged-certificate cache, lazily built state), so the
    # growth is what 1,000 new idle connections cost, not what earlier runs
    # left behind in the allocator.
    svc = s.service if s.service is not None else env.origin_svc
    try:
        env.restart_service(svc)
    except BenchError as e:
        return {"error": "restart failed: %s" % e}
    warm = run_loadgen(env, s, "close", 2, 0.5)
    if not warm.get("completed"):
        return {"error": "warm-up after restart failed: %s" % (warm.get("error") or warm.get("error_samples"))}
    time.sleep(0.5)
    pid = svc.proc.pid
    before = rss_kib(tree(pid))
    cmd = [env.loadgen] + s.loadgen_args() + ["--mode", "hold", "-n", str(a.w4_connections), "-c", "32",
                                             "-t", "1", "--path", "/1k", "--hold-max", str(a.w4_timeout)]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    r = {}
    try:
        line = p.stdout.readline()
        if not line.startswith("READY"):
            r["error"] = "loadgen hold: no READY line"
        time.sleep(a.w4_settle)
        after = rss_kib(tree(pid))
        p.stdin.write("done\n")
        p.stdin.flush()
        p.stdin.close()
        out = p.stdout.read()
        p.wait(30)
        res = json.loads(out.strip().splitlines()[-1])
        r.update(res)
    except (ValueError, IndexError, subprocess.TimeoutExpired, BrokenPipeError) as e:
        r["error"] = "loadgen hold failed: %s" % e
        p.kill()
        p.wait()
        return r
    held = min(r.get("completed", 0), r.get("still_open", 0))
    r["rss_before_kib"] = before
    r["rss_after_kib"] = after
    r["held"] = held
    r["kib_per_conn"] = (after - before) / held if held else None
    r["measured"] = "proxy" if s.pid else "origin nginx"
    return r


WORKLOADS = {
    "W1": lambda env, s, a: w1(env, s, a),
    "W2ka": lambda env, s, a: w2ka(env, s, a),
    "W2lat": lambda env, s, a: w2ka(env, s, a, connections=1),
    "W2h1": lambda env, s, a: w2_h2load(env, s, a, False),
    "W2h2": lambda env, s, a: w2_h2load(env, s, a, True),
    "W3down": lambda env, s, a: w3(env, s, a, "down"),
    "W3up": lambda env, s, a: w3(env, s, a, "up"),
    "W4": lambda env, s, a: w4(env, s, a),
}


def systems_for(env, wl):
    base = "W3" if wl.startswith("W3") else wl
    out = []
    for s in env.systems:
        if s.broken or base not in s.workloads:
            continue
        if wl == "W2h1" and not s.h1_h2load:
            continue
        if wl == "W2h2" and not s.h2:
            continue
        out.append(s)
    return out


def smoke(env):
    """One short W1 run per system: it must verify against the right root and
    get 200s. Also warms each proxy's forged-certificate cache."""
    for s in env.systems:
        r = run_loadgen(env, s, "close", 2, 1.0)
        if r.get("error") or r.get("errors") or not r.get("completed"):
            s.broken = r.get("error") or "; ".join(r.get("error_samples", [])) or "no connection completed"
            log("%s FAILED smoke test: %s" % (s.name, s.broken))
        else:
            log("%s ok (%d connections in 1 s)" % (s.name, r["completed"]))


def verify_check(env):
    """Each proxy must refuse an origin whose certificate it cannot verify
    (issuer unknown). Records 'refused' or 'RELAYED' per proxy."""
    bad = env.origin_port_bad
    checks = []
    for s in env.systems:
        if s.kind == "direct" or s.broken:
            continue
        if s.name == "sightline":
            probe = System("probe", "static", env.sightline_bad_port, env.root)
        elif s.name == "sslsplit":
            probe = System("probe", "static", env.sslsplit_bad_port, env.root)
        elif s.kind == "connect":
            probe = System("probe", "connect", s.port, env.root, via="localhost:%d" % bad)
        elif s.name == "mitmproxy":
            port = free_port()
            proc = env.procs.start("mitmproxy-verify", env.mitm_cmd(port, bad), env.dir + "/logs/mitm-verify.log")
            if not wait_port(port, proc, 30):
                s.verify = "check failed to start"
                env.procs.stop(proc)
                continue
            probe = System("probe", "static", port, env.root)
            r = run_loadgen(env, probe, "close", 1, 1.0)
            env.procs.stop(proc)
            s.verify = "refused" if not r.get("completed") else "RELAYED an unverifiable origin"
            checks.append((s.name, s.verify))
            continue
        else:
            continue
        r = run_loadgen(env, probe, "close", 1, 1.0)
        s.verify = "refused" if not r.get("completed") else "RELAYED an unverifiable origin"
        checks.append((s.name, s.verify))
    for name, v in checks:
        log("upstream verification, %s: %s" % (name, v))


# --------------------------------------------------------------------------
# summary

def med(values):
    v = [x for x in values if x is not None]
    return statistics.median(v) if v else None


# (workload key, label, rate field, rate unit, cost field, cost unit, latency?)
ROWS = [
    ("W1", "W1 new connections (c=32)", "conn_per_s", "conn/s", "proxy_ms_per_conn", "CPU ms/conn", True),
    ("W2ka", "W2 keep-alive h1, loadgen (c=16)", "req_per_s", "req/s", "proxy_us_per_req", "CPU µs/req", True),
    ("W2lat", "W2 latency h1, loadgen (c=1, unloaded)", "req_per_s", "req/s", "proxy_us_per_req", "CPU µs/req", True),
    ("W2h1", "W2 keep-alive h1, h2load (c=16)", "req_per_s", "req/s", "proxy_us_per_req", "CPU µs/req", True),
    ("W2h2", "W2 keep-alive h2, h2load (c=16)", "req_per_s", "req/s", "proxy_us_per_req", "CPU µs/req", True),
    ("W3down", "W3 100 MiB download", "mib_per_s", "MiB/s", "proxy_s_per_100mib", "CPU s/100 MiB", False),
    ("W3up", "W3 100 MiB upload", "mib_per_s", "MiB/s", "proxy_s_per_100mib", "CPU s/100 MiB", False),
    ("W4", "W4 idle connections", "held", "held", "kib_per_conn", "RSS KiB/conn", False),
]
# For direct the cost column shows the origin's own cost (nginx), the
# reference "one TLS endpoint".
ORIGIN_COST = {"proxy_ms_per_conn": "origin_ms_per_conn", "proxy_us_per_req": "origin_us_per_req",
               "proxy_s_per_100mib": "origin_s_per_100mib", "kib_per_conn": "kib_per_conn"}


def fmt(v, digits=None):
    if v is None:
        return "—"
    if digits is None:
        a = abs(v)
        digits = 0 if a >= 100 else 1 if a >= 10 else 2 if a >= 1 else 3
    return "%.*f" % (digits, v)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return "%.2f×" % (a / b)


def summarize(env, results):
    """results: {wl: {system: [run dicts]}} -> summary dict of medians."""
    summ = {}
    for wl, by_sys in results.items():
        summ[wl] = {}
        for name, runs in by_sys.items():
            good = [r for r in runs if not r.get("error")]
            row = {"reps": len(runs), "ok_reps": len(good),
                   "failures": [r.get("error") for r in runs if r.get("error")],
                   "stalled_reps": sum(1 for r in good if r.get("stalled")),
                   "stall_notes": [r["stall_note"] for r in good if r.get("stall_note")]}
            keys = set()
            for r in good:
                keys.update(k for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
            for k in keys:
                if k in row:
                    continue
                row[k] = med([r.get(k) for r in good])
                vals = [r.get(k) for r in good if r.get(k) is not None]
                if vals:
                    row[k + "_min"] = min(vals)
                    row[k + "_max"] = max(vals)
            summ[wl][name] = row
    return summ


def table(env, summ):
    lines = ["| workload | system | rate | ×direct | ×sightline | cost | ×direct | ×sightline | p50 ms | p99 ms |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for wl, label, rf, ru, cf, cu, lat in ROWS:
        if wl not in summ:
            continue
        rows = summ[wl]
        d = rows.get("direct", {})
        sl = rows.get("sightline", {})

        def cost(row, name):
            if name == "direct":
                return row.get(ORIGIN_COST[cf])
            return row.get(cf)
        dcost, slcost = cost(d, "direct"), cost(sl, "sightline")
        for s in env.systems:
            if s.name not in rows:
                continue
            row = rows[s.name]
            if not row.get("ok_reps"):
                lines.append("| %s | %s | failed: %s | | | | | | | |" % (
                    label, s.name, (row["failures"][0] if row["failures"] else "?")[:80].replace("|", "/")))
                continue
            rate, c = row.get(rf), cost(row, s.name)
            name = s.name + (" (origin)" if s.name == "direct" else "")
            if row["ok_reps"] < row["reps"]:
                name += " [%d/%d reps ok]" % (row["ok_reps"], row["reps"])
            if row.get("stalled_reps"):
                name += " **[stalled %d/%d]**" % (row["stalled_reps"], row["ok_reps"])
            no_rate_ratio = wl == "W4"
            lines.append("| %s | %s | %s %s | %s | %s | %s %s | %s | %s | %s | %s |" % (
                label, name, fmt(rate), ru, "—" if no_rate_ratio else ratio(rate, d.get(rf)),
                "—" if no_rate_ratio else ratio(rate, sl.get(rf)),
                fmt(c), cu, ratio(c, dcost), ratio(c, slcost),
                fmt(row.get("p50_ms")) if lat else "—", fmt(row.get("p99_ms")) if lat else "—"))
    return "\n".join(lines)


def w5_lines(summ):
    """Each feature as 'on' vs 'off', from the same run: throughput change
    and CPU-per-unit change (the latter is less sensitive to other load on
    the machine)."""
    out = []
    pairs = [
        ("policy with 100,000 names vs none", "sightline-policy100k", "sightline-base"),
        ("metrics on vs -Dmetrics=false build", "sightline-base", "sightline-nometrics"),
        ("default logging (a JSON line per connection and per exchange) vs level warn",
         "sightline-base", "sightline-nolog"),
        ("PCAP on (PCAP-NG files of all inspected traffic) vs off", "sightline-pcap", "sightline-base"),
        ("ICAP REQMOD + RESPMOD to c-icap echo on every exchange vs off", "sightline-icap", "sightline-base"),
        ("compliance archive of every exchange (sync = record) vs off", "sightline-archive", "sightline-base"),
        ("compliance archive of every exchange (sync = interval, 1 s) vs off", "sightline-archive-interval",
         "sightline-base"),
    ]
    for label, on_name, off_name in pairs:
        parts = []
        for wl, rf, cf, unit in (("W1", "conn_per_s", "proxy_ms_per_conn", "conn/s"),
                                 ("W2h1", "req_per_s", "proxy_us_per_req", "req/s")):
            on = summ.get(wl, {}).get(on_name, {})
            off = summ.get(wl, {}).get(off_name, {})
            if on.get(rf) and off.get(rf):
                txt = "%s %s %+.1f%%" % (wl, unit, (on[rf] - off[rf]) / off[rf] * 100)
                if on.get(cf) and off.get(cf):
                    txt += ", CPU per unit %+.1f%%" % ((on[cf] - off[cf]) / off[cf] * 100)
                if on.get("archive_drain_s_max") is not None:
                    txt += " (archive queue empty %.2f s after the load at most; that CPU included)" % (
                        on["archive_drain_s_max"])
                parts.append(txt)
        out.append("- %s: %s" % (label, "; ".join(parts) if parts else "n/a"))
    on = summ.get("W2lat", {}).get("sightline-icap", {})
    off = summ.get("W2lat", {}).get("sightline-base", {})
    if on.get("p50_ms") is not None and off.get("p50_ms") is not None:
        out.append("- ICAP added latency per exchange (W2lat: 1 connection, unloaded; c-icap echo, REQMOD + "
                   "RESPMOD): p50 %+.3f ms, "
                   "p99 %+.3f ms (%s vs %s ms p50)" % (on["p50_ms"] - off["p50_ms"],
                                                    on.get("p99_ms", 0) - off.get("p99_ms", 0),
                                                    fmt(on["p50_ms"]), fmt(off["p50_ms"])))
    return out


def targets(summ):
    """Issue 6's targets, evaluated on this run."""
    g = lambda wl, s, f: summ.get(wl, {}).get(s, {}).get(f)  # noqa: E731
    out = []

    def line(ok, text):
        out.append("- %s %s" % ("MET " if ok else ("MISS" if ok is False else "n/a "), text))

    v = g("W1", "sightline", "proxy_ms_per_conn")
    line(v is not None and v <= 1.2 if v is not None else None,
         "W1 CPU per interception ≤ 1.2 ms (full upstream handshake): %s ms" % fmt(v))
    v = g("W1", "sightline-resume", "proxy_ms_per_conn")
    line(v is not None and v <= 0.6 if v is not None else None,
         "W1 CPU per interception ≤ 0.6 ms with upstream resumption allowed: %s ms" % fmt(v))
    v = g("W1", "sightline-reuse", "proxy_ms_per_conn")
    line(v is not None and v <= 0.6 if v is not None else None,
         "W1 CPU per interception ≤ 0.6 ms with resumption and origin connection reuse: %s ms" % fmt(v))
    v, share = g("W1", "sightline-tickets", "proxy_ms_per_conn"), g("W1", "sightline-tickets", "resumed_share")
    if v is not None:
        out.append("  (clients resuming with session tickets, upstream resumption: %s ms per connection, "
                   "%s of client handshakes resumed)" % (fmt(v), "%.0f%%" % (share * 100) if share is not None
                                                          else "—"))
    sl, d = g("W2h1", "sightline", "req_per_s"), g("W2h1", "direct", "req_per_s")
    line(sl / d >= 0.5 if sl and d else None, "W2 keep-alive ≥ 0.5× direct (h2load h1): %s" % ratio(sl, d))
    sl2, d2 = g("W2h2", "sightline", "req_per_s"), g("W2h2", "direct", "req_per_s")
    if sl2 and d2:
        out.append("  (h2: %s direct)" % ratio(sl2, d2))
    slk, sq = g("W2ka", "sightline", "req_per_s"), g("W2ka", "squid", "req_per_s")
    line(slk / sq >= 3 if slk and sq else None, "W2 keep-alive ≥ 3× Squid (loadgen, same tool): %s" % ratio(slk, sq))
    p_sl, p_d = g("W2h1", "sightline", "p50_ms"), g("W2h1", "direct", "p50_ms")
    line((p_sl - p_d) <= 0.5 if p_sl is not None and p_d is not None else None,
         "W2 added p50 latency ≤ 0.5 ms: %s ms" % (fmt(p_sl - p_d) if p_sl is not None and p_d is not None
                                                   else "—"))
    for wl, lab in (("W3down", "download"), ("W3up", "upload")):
        a, b = g(wl, "sightline", "mib_per_s"), g(wl, "direct", "mib_per_s")
        line(a / b >= 0.8 if a and b else None, "W3 %s ≥ 0.8× direct: %s" % (lab, ratio(a, b)))
        c = g(wl, "sightline", "proxy_s_per_100mib")
        # CPU is counted in 10 ms clock ticks: compare at that resolution.
        line(round(c, 3) <= 0.15 if c is not None else None,
             "W3 %s CPU ≤ 0.15 s/100 MiB: %s s" % (lab, fmt(c)))
    # With the defaults (reuse, release_idle) an idle client connection
    # holds its own leg; the main row holds both (reuse off).
    v, both = g("W4", "sightline-reuse", "kib_per_conn"), g("W4", "sightline", "kib_per_conn")
    line(v <= 32 if v is not None else None,
         "W4 ≤ 32 KiB per idle intercepted connection (defaults: origin leg released when idle): "
         "%s KiB; both legs held (reuse off): %s KiB" % (fmt(v), fmt(both)))
    a, b = g("W2h1", "sightline-base", "req_per_s"), g("W2h1", "sightline-policy100k", "req_per_s")
    line((a - b) / a <= 0.30 if a and b else None, "W5 policy 100k costs ≤ 30%% of W2: %s" %
         ("%+.1f%%" % ((b - a) / a * 100) if a and b else "—"))
    a, b = g("W2h1", "sightline-base", "req_per_s"), g("W2h1", "sightline-nometrics", "req_per_s")
    line((b - a) / b <= 0.03 if a and b else None, "W5 metrics cost ≤ 3%% of W2: %s" %
         ("%+.1f%%" % ((a - b) / b * 100) if a and b else "—"))
    a, b = g("W2h1", "sightline-base", "req_per_s"), g("W2h1", "sightline-pcap", "req_per_s")
    line((a - b) / a <= 0.30 if a and b else None, "W5 PCAP costs ≤ 30%% of W2 (issue 8: keeps ≥ 70%%): %s" %
         ("%+.1f%%" % ((b - a) / a * 100) if a and b else "—"))
    a, b = g("W2h1", "sightline-base", "req_per_s"), g("W2h1", "sightline-archive", "req_per_s")
    line((a - b) / a <= 0.30 if a and b else None, "W5 archive costs ≤ 30%% of W2 (issue 9: keeps ≥ 70%%): %s" %
         ("%+.1f%%" % ((b - a) / a * 100) if a and b else "—"))
    return out


def background_note(runs_flat):
    shares = []
    for r in runs_flat:
        tot = r.get("machine_total_s")
        if tot:
            shares.append(r.get("other_cpu_s", 0) / tot)
    if not shares:
        return ""
    return ("CPU used by other processes on the machine during the runs (not proxy, origin or load "
            "generator): median %.0f%%, max %.0f%% of the %d cores." % (
                statistics.median(shares) * 100, max(shares) * 100, os.cpu_count()))


def machine_info():
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = "%.1f GiB" % (int(line.split()[1]) / 1024 / 1024)
    except OSError:
        pass
    return {"cpu": model, "nproc": os.cpu_count(), "kernel": os.uname().release, "memory": mem,
            "os": _os_release()}


def _os_release():
    try:
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "?"


def render(env, summ, runs_flat, args, started, elapsed, machine=None):
    mi = machine or machine_info()
    parts = []
    parts.append("Run %s, %s s; %s; %d cores (%s); kernel %s; %s RAM." % (
        started.strftime("%Y-%m-%d %H:%M"), int(elapsed), mi["os"], mi["nproc"], mi["cpu"],
        mi["kernel"], mi["memory"]))
    parts.append("Medians of %d repetitions (W1 %ss, W2 %ss each); sightline commit %s." % (
        args.reps, args.w1_duration, args.w2_duration, git_rev()))
    bg = background_note(runs_flat)
    if bg:
        parts.append(bg)
    parts.append("")
    parts.append(table(env, summ))
    parts.append("")
    parts.append("rate: W1 connections/s, W2 requests/s, W3 MiB/s, W4 connections held idle. cost: "
                 "CPU of the proxy's whole process tree (utime+stime from /proc) per unit of work, "
                 "W4 RSS growth of the tree per held connection. For **direct** the cost column is the "
                 "origin nginx's own cost (a reference for one TLS endpoint), so ×direct in the cost "
                 "column = how many nginx endpoints' worth of CPU/memory the proxy spends.")
    parts.append("")
    parts.append("W5, feature cost on sightline (same run; each variant against sightline-base, a "
                 "process started the same way with nothing changed):")
    parts += w5_lines(summ)
    parts.append("")
    parts.append("Targets from issue 6 (this run):")
    parts += targets(summ)
    parts.append("")
    ver = [s for s in env.systems if s.verify]
    if ver:
        parts.append("Upstream verification check (origin certificate from an unknown CA): " +
                     "; ".join("%s %s" % (s.name, s.verify) for s in ver) + ".")
    for wl, label, *_ in ROWS:
        for name, row in summ.get(wl, {}).items():
            if row.get("stalled_reps"):
                parts.append("- %s, %s: connections stalled in %d of %d repetitions (%s)." % (
                    label, name, row["stalled_reps"], row["ok_reps"], row["stall_notes"][0]))
            for e in row.get("failures", [])[:1]:
                parts.append("- %s, %s: %d of %d repetitions failed: %s" % (
                    label, name, row["reps"] - row["ok_reps"], row["reps"], str(e)[:200]))
    broken = [s for s in env.systems if s.broken]
    for s in broken:
        parts.append("- %s could not be measured: %s" % (s.name, s.broken))
    extra = []
    w1o = summ.get("W1", {})
    for s in env.systems:
        r = w1o.get(s.name)
        if r and r.get("origin_ms_per_conn") is not None and s.name != "direct":
            extra.append("%s %s" % (s.name, fmt(r["origin_ms_per_conn"])))
    if extra:
        d = w1o.get("direct", {}).get("origin_ms_per_conn")
        parts.append("Origin nginx CPU per W1 connection (a full upstream handshake costs the origin about "
                     "as much as a direct client's, %s ms): %s." % (fmt(d), ", ".join(extra)))
    for s in env.systems:
        if s.name in summ.get("W4", {}):
            r = summ["W4"][s.name]
            if r.get("reconnects"):
                parts.append("W4 %s: the server closed %d of the connections after their request." % (
                    s.name, r["reconnects"]))
    return "\n".join(parts)


COMMIT = None


def git_rev():
    if COMMIT:
        return COMMIT[:10] if re.fullmatch(r"[0-9a-f]{40}", COMMIT) else COMMIT
    try:
        rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "src", "meson.build"],
                               capture_output=True, text=True).stdout.strip()
        return rev + (" + uncommitted changes in src/" if dirty else "")
    except OSError:
        return "?"


def update_results_md(text, cmdline):
    path = os.path.join(HERE, "RESULTS.md")
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    block = "%s\n\nCommand: `%s`\n\n%s\n\n%s" % (begin, cmdline, text, end)
    if os.path.exists(path):
        old = open(path).read()
        if begin in old and end in old:
            new = old[:old.index(begin)] + block + old[old.index(end) + len(end):]
        else:
            new = old.rstrip() + "\n\n" + block + "\n"
    else:
        new = "# Benchmark results\n\n" + block + "\n"
    write(path, new)
    log("updated %s" % path)


# --------------------------------------------------------------------------
# profile mode

def _perf_rows(data, sort, children, limit, n):
    cmd = ["perf", "report", "-i", data, "--stdio", "--sort", sort, "--percent-limit", str(limit),
           "-g", "none", "--children" if children else "--no-children"]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    rows = []
    for ln in out.splitlines():
        if not ln.strip() or ln.startswith("#"):
            continue
        ln = re.sub(r"\s+-\s+-\s*$", "", ln.rstrip())   # empty callchain columns
        rows.append(re.sub(r"\s{2,}", "  ", ln.strip()))
        if len(rows) >= n:
            break
    return rows


def _attribute(data, n=25):
    """Every sample charged to its innermost frame in the sightline binary
    and the outermost named OpenSSL function below it: which part of
    sightline spends the time, and in which OpenSSL API."""
    out = subprocess.run(["perf", "script", "-i", data, "-F", "ip,sym,dso"], capture_output=True,
                         text=True).stdout
    agg = {}
    total = 0
    for block in out.split("\n\n"):
        frames = []
        for line in block.strip().splitlines():
            m = re.match(r"\s*\S+ (.*) \((.*)\)$", line)
            if m:
                frames.append((m.group(1), m.group(2).rsplit("/", 1)[-1]))
        if not frames:
            continue
        total += 1
        own = api = None
        for sym, dso in frames:
            if dso == "sightline" and sym != "[unknown]":
                own = sym
                break
            if dso.startswith(("libssl", "libcrypto")) and sym != "[unknown]":
                api = sym
        key = (own or "(outside sightline's frames: kernel, libuv, thread start)", api or "")
        agg[key] = agg.get(key, 0) + 1
    rows = sorted(agg.items(), key=lambda kv: -kv[1])[:n]
    return ["%5.1f%%  %s%s" % (100.0 * c / total, own[:90], ("  →  " + api) if api else "")
            for (own, api), c in rows]


def _syscalls_per_unit(env, s, args, wl):
    if not shutil.which("strace"):
        return ["(strace not installed)"]
    outf = os.path.join(env.dir, "strace-%s.txt" % wl)
    st = subprocess.Popen(["strace", "-f", "-c", "-o", outf, "-p", str(s.pid)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    r = WORKLOADS[wl](env, s, args)
    st.send_signal(signal.SIGINT)
    try:
        st.wait(30)
    except subprocess.TimeoutExpired:
        st.kill()
    n = r.get("completed_total") or r.get("completed")
    rows = []
    try:
        for line in open(outf):
            f = line.split()
            if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
                calls = int(f[3])
                rows.append((calls, f[-1]))
    except OSError:
        return ["(strace failed)"]
    rows.sort(reverse=True)
    unit = "connection" if wl == "W1" else "request"
    return ["%-14s %6.2f per %s" % (name, calls / n, unit) for calls, name in rows[:10] if n]


def profile(env, args):
    """perf profiles of sightline (static listener) under W1 and W2 (h2load
    h1): self time by shared object and by symbol (frame-pointer call graphs
    are recorded as asked by issue 6, but Debian's libcrypto has no frame
    pointers or symbols for its internal functions), then time including
    callees from a DWARF-unwound recording, which attributes libcrypto's
    anonymous code to the OpenSSL API sightline called."""
    s = next(x for x in env.systems if x.name == args.profile_system)
    outdir = os.path.join(HERE, "results")
    os.makedirs(outdir, exist_ok=True)
    report = ["# %s profile, %s, commit %s\n" % (
        s.name, datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), git_rev())]
    for wl in ("W1", "W2h1"):
        for mode, cg in (("self", ["-g"]), ("inclusive", ["--call-graph", "dwarf,16384"])):
            data = os.path.join(env.dir, "perf-%s-%s.data" % (wl, mode))
            perf = subprocess.Popen(["perf", "record"] + cg + ["-F", "499" if mode == "inclusive" else "1999",
                                    "-p", str(s.pid), "-o", data],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            r = WORKLOADS[wl](env, s, args)
            perf.send_signal(signal.SIGINT)
            try:
                perf.wait(120)
            except subprocess.TimeoutExpired:
                perf.kill()
            rate = r.get("conn_per_s") or r.get("req_per_s")
            cost = r.get("proxy_ms_per_conn") if wl == "W1" else r.get("proxy_us_per_req")
            report.append("## %s, %s (%s: %s/s, %s %s; profiler overhead included)\n" % (
                wl, mode, "new connections" if wl == "W1" else "keep-alive h1 requests", fmt(rate),
                fmt(cost), "CPU ms/conn" if wl == "W1" else "CPU µs/req"))
            if mode == "self":
                report.append("By shared object:\n```\n%s\n```\n" % "\n".join(
                    _perf_rows(data, "dso", False, 0.5, 12)))
                report.append("By symbol (self):\n```\n%s\n```\n" % "\n".join(
                    _perf_rows(data, "dso,symbol", False, 0.4, 45)))
            else:
                report.append("Where sightline's time goes: innermost sightline function (→ the OpenSSL "
                              "API it called), share of all samples:\n```\n%s\n```\n" % "\n".join(
                                  _attribute(data)))
                report.append("By symbol, including callees (children):\n```\n%s\n```\n" % "\n".join(
                    _perf_rows(data, "symbol", True, 3.0, 40)))
        report.append("## %s, system calls (strace -c, run slowed by tracing)\n```\n%s\n```\n" % (
            wl, "\n".join(_syscalls_per_unit(env, s, args, wl))))
    text = "\n".join(report)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    path = os.path.join(outdir, "profile-%s.md" % stamp)
    write(path, text + "\n")
    print(text)
    log("wrote %s" % path)


# --------------------------------------------------------------------------

def rerender(args):
    data = json.load(open(args.render))
    global COMMIT
    COMMIT = data.get("commit")

    class Saved:
        pass
    env = Saved()
    env.systems = []
    for name, info in data["systems"].items():
        sys_ = System(name, info["kind"], 0, "")
        sys_.note, sys_.broken, sys_.verify = info["note"], info["broken"], info["upstream_verification"]
        env.systems.append(sys_)
    old = argparse.Namespace(**data["args"])
    started = datetime.datetime.fromisoformat(data["started"])
    text = render(env, data["summary"], data["runs"], old, started, data["elapsed_s"], data.get("machine"))
    print(text)
    if args.update_results:
        update_results_md(text, old.cmdline)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loadgen")
    ap.add_argument("--sightline", help="the sightline binary")
    ap.add_argument("--render", metavar="JSON", help="only print the table of an earlier run "
                    "(bench/results/<date>.json) again; with --update-results, put it in RESULTS.md")
    ap.add_argument("--sightline-nometrics", help="sightline built with -Dmetrics=false")
    ap.add_argument("--alt-sightline", metavar="BINARY",
                    help="also run this sightline binary as sightline-alt, set up like sightline-base and "
                         "with its workloads plus W2ka and W4 (before/after comparisons in one run)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--w1-duration", type=float, default=6.0)
    ap.add_argument("--w1-concurrency", type=int, default=32)
    ap.add_argument("--w2-duration", type=float, default=4.0)
    ap.add_argument("--w2-connections", type=int, default=16)
    ap.add_argument("--w3-timeout", type=int, default=120)
    ap.add_argument("--w3-transfers", type=int, default=3, help="100 MiB transfers per W3 measurement")
    ap.add_argument("--w4-connections", type=int, default=1000)
    ap.add_argument("--w4-timeout", type=float, default=120)
    # Longer than upstream.release_idle_after (100 ms): idle connections
    # have released their origin legs when RSS is read.
    ap.add_argument("--w4-settle", type=float, default=1.0)
    ap.add_argument("--workloads", default="W1,W2ka,W2lat,W2h1,W2h2,W3down,W3up,W4")
    ap.add_argument("--systems", help="comma-separated subset (direct and sightline always run)")
    ap.add_argument("--sightline-workers", type=int, default=0)
    ap.add_argument("--no-w5", action="store_true")
    ap.add_argument("--w5-workers", type=int, default=1,
                    help="workers of the W5 processes (1: no SO_REUSEPORT imbalance between runs)")
    ap.add_argument("--quick", action="store_true", help="1 rep, short runs, 200 idle connections")
    ap.add_argument("--update-results", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument("--profile", action="store_true", help="perf profile of sightline under W1 and W2 only")
    ap.add_argument("--profile-system", default="sightline",
                    help="with --profile: the variant to profile, e.g. sightline-archive")
    ap.add_argument("--cmdline", default="bench/run")
    ap.add_argument("--commit", help="the git revision sightline was built from (default: the work tree)")
    args = ap.parse_args()
    global COMMIT
    COMMIT = args.commit
    if args.render:
        return rerender(args)
    if not args.loadgen or not args.sightline:
        ap.error("--loadgen and --sightline are required")
    if args.quick:
        args.reps = 1
        args.w1_duration = 2.0
        args.w2_duration = 2.0
        args.w4_connections = 200
        args.w3_transfers = 1
    if args.profile:
        args.systems = "direct,sightline"
        args.no_w5 = args.profile_system == "sightline"
        if not args.no_w5:
            args.systems += "," + args.profile_system

    def on_signal(signum, _frame):
        raise SystemExit("stopped by signal %d" % signum)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    for path in (args.sightline, args.loadgen):
        if not os.access(path, os.X_OK):
            log("ERROR: %s is missing (run bench/run without --no-build)" % path)
            return 1
    env = Env(args)
    started = datetime.datetime.now()
    t0 = time.time()
    try:
        env.make_files()
        env.start_origin()
        env.start_all()
        env.versions_info()
        log("systems: " + ", ".join(s.name for s in env.systems))
        smoke(env)
        if args.profile:
            profile(env, args)
            return 0
        verify_check(env)
        results = {}
        runs_flat = []
        wls = [w for w in args.workloads.split(",") if w]
        for wl in wls:
            if wl not in WORKLOADS:
                raise BenchError("unknown workload %s" % wl)
            results[wl] = {}
            for rep in range(args.reps):
                for s in systems_for(env, wl):
                    time.sleep(0.3)
                    r = WORKLOADS[wl](env, s, args)
                    r["rep"] = rep
                    results[wl].setdefault(s.name, []).append(r)
                    runs_flat.append(dict(r, workload=wl, system=s.name))
                    key = {"W1": "conn_per_s", "W4": "kib_per_conn", "W3down": "mib_per_s",
                           "W3up": "mib_per_s"}.get(wl, "req_per_s")
                    log("%s rep %d %s: %s %s%s" % (wl, rep + 1, s.name, key, fmt(r.get(key)),
                                                   ("  ERROR " + str(r["error"])) if r.get("error") else ""))
                    if s.proc is not None and s.proc.poll() is not None:
                        s.broken = "process exited (rc %s): %s" % (s.proc.returncode, tail(s.proc.bench_log, 5))
                        log("%s died: %s" % (s.name, s.broken))
        summ = summarize(env, results)
        elapsed = time.time() - t0
        text = render(env, summ, runs_flat, args, started, elapsed)
        print(text)
        outdir = os.path.join(HERE, "results")
        os.makedirs(outdir, exist_ok=True)
        stamp = started.strftime("%Y-%m-%d-%H%M%S")
        write(os.path.join(outdir, stamp + ".md"), text + "\n")
        with open(os.path.join(outdir, stamp + ".json"), "w") as f:
            json.dump({"started": started.isoformat(), "elapsed_s": elapsed, "args": vars(args),
                       "machine": machine_info(), "versions": env.versions, "commit": git_rev(),
                       "systems": {s.name: {"kind": s.kind, "note": s.note, "broken": s.broken,
                                            "upstream_verification": s.verify} for s in env.systems},
                       "summary": summ, "runs": runs_flat}, f, indent=1, default=str)
        log("wrote bench/results/%s.md and .json" % stamp)
        if args.update_results:
            update_results_md(text, args.cmdline)
        return 0
    except BenchError as e:
        log("ERROR: %s" % e)
        return 1
    finally:
        env.procs.stop_all()
        if args.keep:
            log("kept %s" % env.dir)
        else:
            shutil.rmtree(env.dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
