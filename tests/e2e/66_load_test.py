#!/usr/bin/env python3
"""Layer 66: load — 10,000 concurrent intercepted connections.

Clients (two forked worker processes, each a non-blocking selector loop
with a bounded number of handshakes in flight) open 10,000 connections to
the explicit proxy: CONNECT, 200, TLS handshake verified against the
enterprise root (the forged certificate for `localhost`), then idle. Once
all of them are held at the same time (sightline_active_connections), each
sends one HTTP/1.1 GET /1k (a window of requests at a time) and must get a
200 with the origin's bytes, then the proxy's close. No connection may be
counted in sightline_connection_failures_total, the gauge returns to 0 and
the proxy still serves.

With upstream.release_idle (the default, set explicitly here) an idle
client gives its origin connection back after 100 ms, so while held the
proxy keeps one socket per connection, and each request reconnects to the
origin (pooled, verified again). That is what lets 10,000 connections fit
in a 20,000 RLIMIT_NOFILE (the hard limit on the CI machines, which may not
raise it).

Reported on the check lines: the proxy's RSS per connection (RSS holding
all of them minus RSS at idle, divided by the count), its open sockets, the
rates reached (connections/s through CONNECT and both TLS handshakes,
requests/s) and the CPU seconds of the proxy, nginx and the clients.

The origin is an nginx of the test's own (the harness's allows 4096
connections). The test raises RLIMIT_NOFILE as far as it may (nginx and
sightline, its children, inherit it) and SKIPs if that is too low.
SIGHTLINE_LOAD_CONNECTIONS overrides the count (to try a change quickly).
"""

import errno
import multiprocessing
import os
import re
import resource
import selectors
import signal
import socket
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

SANITIZED = os.environ.get("SIGHTLINE_SANITIZE", "none") not in ("", "none")
# The normal build holds the 10,000 the issue asks for; under ASan+UBSan
# (several times slower, and CI runs both in 30 minutes) 2,000 still put the
# same code paths under load for the sanitizers.
DEFAULT_COUNT = 2_000 if SANITIZED else 10_000
COUNT = int(os.environ.get("SIGHTLINE_LOAD_CONNECTIONS") or DEFAULT_COUNT)
WORKERS = 2                # client processes (2 cores: more only adds contention)
IN_FLIGHT = 128            # handshakes in progress per worker at any time
REQ_IN_FLIGHT = 256        # requests in progress per worker at any time
OPEN_DEADLINE = 240.0      # seconds for every connection to be held
REQUEST_DEADLINE = 180.0   # seconds for every held connection to get its response
HOLD_CHECK_DEADLINE = 30.0
FD_SLACK = 1024            # other fds of the proxy (listeners, pooled origin connections, logs)


# --------------------------------------------------------------------------
# an nginx of the test's own, sized for the load

class LoadNginx:
    """nginx with one TLS server (valid-ec) on 127.0.0.1, /1k, room for
    `connections` concurrent connections, and no timeout shorter than the
    test (connections stay idle between the handshake and the request)."""

    def __init__(self, t, pki, connections):
        self.dir = os.path.join(t.dir, "nginx-load")
        www = os.path.join(self.dir, "www")
        tmp = os.path.join(self.dir, "tmp")
        os.makedirs(www)
        os.makedirs(tmp)
        self.one_k = os.path.join(www, "1k")
        h.write_pseudorandom(self.one_k, h.KIB_SIZE, seed=1)
        self.port = h.free_port()
        user = "user root;" if os.geteuid() == 0 else ""
        conf = """%(user)s
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile %(nofile)d;
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log warn;
events { worker_connections %(conns)d; multi_accept on; }
http {
    access_log off;
    default_type application/octet-stream;
    keepalive_requests 100000;
    keepalive_timeout 600s;
    client_header_timeout 600s;
    client_body_timeout 600s;
    send_timeout 600s;
    client_body_temp_path %(tmp)s/body;
    proxy_temp_path %(tmp)s/proxy;
    fastcgi_temp_path %(tmp)s/fastcgi;
    uwsgi_temp_path %(tmp)s/uwsgi;
    scgi_temp_path %(tmp)s/scgi;
    server {
        listen 127.0.0.1:%(port)d ssl backlog=4096;
        server_name _;
        ssl_certificate %(crt)s;
        ssl_certificate_key %(key)s;
        ssl_protocols TLSv1.2 TLSv1.3;
        root %(www)s;
        location = /1k { }
    }
}
""" % {"user": user, "dir": self.dir, "tmp": tmp, "www": www, "port": self.port,
       "conns": connections + 1024, "nofile": connections + 2048,
       "crt": pki.fullchain("valid-ec"), "key": pki.key("valid-ec")}
        self.conf = os.path.join(self.dir, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(conf)
        self.error_log = os.path.join(self.dir, "error.log")
        self.proc = subprocess.Popen(
            [h.NGINX, "-p", self.dir, "-e", self.error_log, "-c", self.conf],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.dir, "stderr.log"), "wb"),
            start_new_session=True)
        h._register(self)
        t.nginxes.append(self)
        if not h.wait_port("127.0.0.1", self.port, 10, self.proc):
            raise h.Fatal("nginx (load) did not come up:\n%s" % self.log_tail())

    def log_tail(self, n=20):
        return h.Nginx.log_tail(self, n)

    def kill(self):
        h._unregister(self)
        h._stop_process(self.proc, signal.SIGTERM)


# --------------------------------------------------------------------------
# client worker (runs in a forked process; talks to the parent over a Pipe)

CONNECTING, HEAD, TLS, HELD, RESP, DRAIN, DONE, FAILED = range(8)


class Conn:
    __slots__ = ("sock", "ss", "fd", "state", "buf", "out", "want", "status", "body_left")

    def __init__(self):
        self.sock = self.ss = None
        self.fd = -1
        self.state = CONNECTING
        self.buf = b""
        self.out = b""
        self.want = 0
        self.status = None
        self.body_left = None


class ClientWorker:
    """n connections through the proxy, driven by one selector loop."""

    def __init__(self, index, n, proxy_port, target, cafile, expect_body, cmd):
        self.index = index
        self.n = n
        self.proxy_port = proxy_port
        self.target = target
        self.expect_body = expect_body
        self.cmd = cmd
        self.ctx = h.client_context(cafile, alpn=["http/1.1"])
        self.sel = selectors.DefaultSelector()
        self.conns = []
        self.failures = {}        # reason -> count
        self.examples = {}        # reason -> first detail
        self.held = 0
        self.started = 0
        self.in_flight = 0
        self.done_ok = 0
        self.bad_body = 0
        self.lost_while_held = 0
        self.requests_out = 0     # RESP and DRAIN connections

    # bookkeeping
    def fail(self, c, reason, detail=""):
        if c.state in (FAILED, DONE):
            return
        if c.state in (HELD, RESP, DRAIN):
            self.held -= 1
        if c.state in (RESP, DRAIN):
            self.requests_out -= 1
        if c.state in (CONNECTING, HEAD, TLS):
            self.in_flight -= 1
        if c.state == HELD:
            self.lost_while_held += 1
        c.state = FAILED
        self.failures[reason] = self.failures.get(reason, 0) + 1
        self.examples.setdefault(reason, detail)
        self._drop(c)

    def _drop(self, c):
        if c.fd >= 0:
            try:
                self.sel.unregister(c.fd)
            except (KeyError, ValueError):
                pass
        for s in (c.ss, c.sock):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        c.fd = -1

    def _watch(self, c, events):
        if c.want == events:
            return
        if c.want == 0:
            self.sel.register(c.fd, events, c)
        else:
            self.sel.modify(c.fd, events, c)
        c.want = events

    # phase 1: CONNECT + TLS, then hold
    def start_one(self):
        c = Conn()
        self.conns.append(c)
        self.started += 1
        self.in_flight += 1
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as e:
            c.state = CONNECTING
            self.fail(c, "socket()", str(e))
            return
        s.setblocking(False)
        c.sock = s
        c.fd = s.fileno()
        err = s.connect_ex(("127.0.0.1", self.proxy_port))
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            self.fail(c, "connect", os.strerror(err))
            return
        c.out = ("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (self.target, self.target)).encode()
        self._watch(c, selectors.EVENT_WRITE)

    def step(self, c, mask):
        try:
            if c.state == CONNECTING:
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    return self.fail(c, "connect to the proxy", os.strerror(err))
                n = c.sock.send(c.out)
                c.out = c.out[n:]
                if not c.out:
                    c.state = HEAD
                    self._watch(c, selectors.EVENT_READ)
            elif c.state == HEAD:
                b = c.sock.recv(4096)
                if not b:
                    return self.fail(c, "proxy closed before answering CONNECT")
                c.buf += b
                if b"\r\n\r\n" not in c.buf:
                    return
                line = c.buf.split(b"\r\n", 1)[0].decode("latin-1")
                if not re.match(r"HTTP/1\.[01] 200 ", line):
                    return self.fail(c, "CONNECT not answered 200", line)
                # The proxy sends nothing after its 200 before our ClientHello.
                c.buf = b""
                self.sel.unregister(c.fd)
                c.want = 0
                c.ss = self.ctx.wrap_socket(c.sock, server_hostname="localhost",
                                            do_handshake_on_connect=False)
                c.sock = None
                c.fd = c.ss.fileno()
                c.state = TLS
                self._handshake(c)
            elif c.state == TLS:
                self._handshake(c)
            elif c.state == HELD:
                # NewSessionTicket messages arrive after the handshake;
                # anything else (EOF, data) means the connection is gone.
                try:
                    b = c.ss.recv(4096)
                except ssl.SSLWantReadError:
                    return
                if not b:
                    return self.fail(c, "proxy closed an idle held connection")
                return self.fail(c, "unexpected bytes on an idle held connection", repr(b[:60]))
            elif c.state in (RESP, DRAIN):
                self._read_response(c)
        except ssl.SSLWantReadError:
            self._watch(c, selectors.EVENT_READ)
        except ssl.SSLWantWriteError:
            self._watch(c, selectors.EVENT_WRITE)
        except (BlockingIOError, InterruptedError):
            pass                        # spurious readiness: wait for the next event
        except ssl.SSLCertVerificationError as e:
            self.fail(c, "TLS: certificate verification failed", str(e))
        except ssl.SSLError as e:
            self.fail(c, "TLS error (%s)" % (e.reason or type(e).__name__), str(e))
        except (ConnectionResetError, BrokenPipeError) as e:
            self.fail(c, "reset by the proxy (state %d)" % c.state, str(e))
        except OSError as e:
            self.fail(c, "socket error (state %d)" % c.state, str(e))

    def _handshake(self, c):
        try:
            c.ss.do_handshake()
        except ssl.SSLWantReadError:
            return self._watch(c, selectors.EVENT_READ)
        except ssl.SSLWantWriteError:
            return self._watch(c, selectors.EVENT_WRITE)
        c.state = HELD
        self.in_flight -= 1
        self.held += 1
        self._watch(c, selectors.EVENT_READ)

    def loop_once(self, timeout):
        for key, mask in self.sel.select(timeout):
            if key.data is None:
                continue
            self.step(key.data, mask)

    def open_phase(self, deadline):
        t0 = time.monotonic()
        while self.started < self.n or self.in_flight > 0:
            if time.monotonic() > deadline:
                for c in self.conns:
                    if c.state in (CONNECTING, HEAD, TLS):
                        self.fail(c, "open phase deadline passed (state %d)" % c.state)
                break
            while self.started < self.n and self.in_flight < IN_FLIGHT:
                self.start_one()
            self.loop_once(0.2)
        return time.monotonic() - t0

    def hold(self, deadline):
        """Keep watching the held connections until the parent says go."""
        while time.monotonic() < deadline:
            if self.cmd.poll(0):
                return self.cmd.recv()
            self.loop_once(0.2)
        return "deadline"

    # phase 2: one request each
    def request_phase(self, deadline):
        t0 = time.monotonic()
        req = ("GET /1k HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % self.target).encode()
        queue = [c for c in self.conns if c.state == HELD]
        queue.reverse()
        while self.held > 0:            # held counts HELD, RESP and DRAIN connections
            if time.monotonic() > deadline:
                for c in self.conns:
                    if c.state in (HELD, RESP, DRAIN):
                        self.fail(c, "no complete response before the deadline (state %d)" % c.state,
                                  repr(c.buf[:80]))
                break
            # A window of requests at a time: each one makes the proxy open
            # an origin connection again (see the module doc).
            while queue and self.requests_out < REQ_IN_FLIGHT:
                c = queue.pop()
                if c.state != HELD:
                    continue
                c.state = RESP
                c.buf = b""
                self.requests_out += 1
                try:
                    c.ss.sendall(req)       # 60 bytes: fits the socket buffer
                except ssl.SSLWantWriteError:
                    self.fail(c, "request: socket buffer full")
                    continue
                except (ssl.SSLError, OSError) as e:
                    self.fail(c, "request: send failed", str(e))
                    continue
                self._watch(c, selectors.EVENT_READ)
            self.loop_once(0.2)
        return time.monotonic() - t0

    def _read_response(self, c):
        while True:
            try:
                b = c.ss.recv(65536)
            except ssl.SSLWantReadError:
                return self._watch(c, selectors.EVENT_READ)
            except ssl.SSLZeroReturnError:
                b = b""
            if c.state == DRAIN:
                # After the response: the proxy's close_notify and FIN (reading
                # them spares the proxy a reset from a close with unread data).
                if b:
                    return self.fail(c, "bytes after the response", repr(b[:80]))
                self.held -= 1
                self.requests_out -= 1
                c.state = DONE
                self.done_ok += 1
                self._drop(c)
                return
            if not b:
                return self.fail(c, "response cut short", repr(c.buf[:80]))
            c.buf += b
            if c.status is None:
                if b"\r\n\r\n" not in c.buf:
                    continue
                head, _, rest = c.buf.partition(b"\r\n\r\n")
                m = re.match(rb"HTTP/1\.1 (\d{3})", head)
                if not m:
                    return self.fail(c, "not an HTTP response", repr(head[:80]))
                c.status = int(m.group(1))
                ml = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if c.status != 200 or not ml:
                    return self.fail(c, "status %d" % c.status, head.split(b"\r\n")[0].decode("latin-1"))
                c.body_left = int(ml.group(1))
                c.buf = rest
            if len(c.buf) >= c.body_left:
                if c.buf != self.expect_body:
                    self.bad_body += 1
                    return self.fail(c, "body differs from the origin's /1k (%d bytes)" % len(c.buf))
                c.state = DRAIN

    def report(self, phase, secs):
        return {"phase": phase, "worker": self.index, "n": self.n, "held": self.held,
                "done_ok": self.done_ok, "lost_while_held": self.lost_while_held,
                "failures": self.failures, "examples": self.examples, "secs": secs}

    def close_all(self):
        for c in self.conns:
            if c.state not in (FAILED, DONE):
                self._drop(c)


def worker_main(index, n, proxy_port, target, cafile, expect_body, cmd, out_deadline):
    """Entry point of a client process (forked: it must leave through
    os._exit, which multiprocessing does, never through the harness's
    atexit handlers)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    w = ClientWorker(index, n, proxy_port, target, cafile, expect_body, cmd)
    try:
        secs = w.open_phase(time.monotonic() + OPEN_DEADLINE)
        cmd.send(w.report("open", secs))
        what = w.hold(time.monotonic() + out_deadline)
        if what == "request":
            secs = w.request_phase(time.monotonic() + REQUEST_DEADLINE)
            cmd.send(w.report("request", secs))
            what = w.hold(time.monotonic() + out_deadline)
    except BaseException as e:         # noqa: B902 - reported to the parent
        try:
            cmd.send({"phase": "error", "worker": index, "error": "%s: %s" % (type(e).__name__, e)})
        except OSError:
            pass
    finally:
        w.close_all()


class ClientPool:
    """WORKERS forked client processes; killed with everything else."""

    def __init__(self, count, proxy_port, target, cafile, expect_body):
        ctx = multiprocessing.get_context("fork")
        self.pipes = []
        self.procs = []
        h._register(self)
        per = [count // WORKERS + (1 if i < count % WORKERS else 0) for i in range(WORKERS)]
        for i, n in enumerate(per):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker_main, daemon=True,
                            args=(i, n, proxy_port, target, cafile, expect_body, child,
                                  OPEN_DEADLINE + REQUEST_DEADLINE + 120))
            p.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(p)

    def collect(self, phase, timeout):
        """One report per worker for `phase` (AssertionError after timeout)."""
        deadline = time.monotonic() + timeout
        out = []
        for i, pipe in enumerate(self.pipes):
            left = deadline - time.monotonic()
            if left <= 0 or not pipe.poll(left):
                raise AssertionError("client worker %d sent no %r report within %.0fs" % (i, phase, timeout))
            try:
                r = pipe.recv()
            except EOFError:
                raise AssertionError("client worker %d died (exit code %r)" % (i, self.procs[i].exitcode))
            if r.get("phase") == "error":
                raise AssertionError("client worker %d failed: %s" % (i, r["error"]))
            assert r.get("phase") == phase, "worker %d: expected %r report, got %r" % (i, phase, r)
            out.append(r)
        return out

    def send(self, what):
        for pipe in self.pipes:
            pipe.send(what)

    def kill(self):
        h._unregister(self)
        for pipe in self.pipes:
            try:
                pipe.send("close")
            except OSError:
                pass
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)


def merge(reports):
    total = {"held": 0, "done_ok": 0, "lost_while_held": 0, "failures": {}, "examples": {},
             "secs": 0.0}
    for r in reports:
        total["held"] += r["held"]
        total["done_ok"] += r["done_ok"]
        total["lost_while_held"] += r["lost_while_held"]
        total["secs"] = max(total["secs"], r["secs"])
        for k, v in r["failures"].items():
            total["failures"][k] = total["failures"].get(k, 0) + v
            total["examples"].setdefault(k, r["examples"].get(k, ""))
    return total


def describe_failures(total):
    if not total["failures"]:
        return "none"
    return "; ".join("%d x %s%s" % (v, k, (" (e.g. %s)" % total["examples"][k][:160])
                                     if total["examples"].get(k) else "")
                     for k, v in sorted(total["failures"].items(), key=lambda kv: -kv[1]))


# --------------------------------------------------------------------------
# metrics

def failures(proxy):
    return h.failure_counts(proxy)


def active_connections(proxy):
    return h.active_connections(proxy)


def cpu_seconds(pid):
    """user+system CPU time of pid and its descendants (threads included)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in h.proc_tree(pid):
        try:
            with open("/proc/%d/stat" % p) as f:
                st = f.read()
            fields = st[st.rindex(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            pass
    return total / tick


# --------------------------------------------------------------------------

def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(need, soft)
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))   # root: CAP_SYS_RESOURCE
        except (ValueError, OSError):
            pass
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def main(t):
    count = COUNT
    # sightline holds one socket per idle connection (upstream.release_idle
    # gives an idle client's origin connection back) and two per handshake
    # or request in progress; nginx and each client process need fewer.
    need = count + 2 * WORKERS * max(IN_FLIGHT, REQ_IN_FLIGHT) + FD_SLACK
    soft, hard = raise_nofile(need)
    if soft < need:
        with t.check("RLIMIT_NOFILE allows %d connections" % count):
            raise h.Skip("RLIMIT_NOFILE is %d (hard %d), %d needed, and it cannot be raised "
                         "(CAP_SYS_RESOURCE or a higher hard limit needed)" % (soft, hard, need))
        return
    print("      RLIMIT_NOFILE: soft %d, hard %d (%d needed)" % (soft, hard, need), flush=True)

    pki = t.pki()
    origin = LoadNginx(t, pki, count)
    target = "localhost:%d" % origin.port
    with open(origin.one_k, "rb") as f:
        one_k = f.read()
    extra = "\n[limits]\nmax_connections = 30000\nmax_connections_per_client = 0\n"
    proxy = t.start_proxy(pki, workers=2, extra=extra, upstream={"release_idle": True},
                          timeouts={"handshake": "60s", "idle": "10m"})

    with t.check("warm-up: one request through the proxy (forged certificate cached)", fatal=True):
        st, body = h.https_get_via_proxy(proxy.port, target, "/1k", pki.root)
        assert st == 200 and body == one_k, "status %d, %d bytes" % (st, len(body))
        assert h.wait_until(lambda: active_connections(proxy) == 0, 10), \
            "active connections %d after the warm-up" % active_connections(proxy)

    base_failures = failures(proxy)
    rss_idle = h.rss_bytes(proxy.pid)
    print("      proxy RSS at idle: %.1f MiB" % (rss_idle / 2**20), flush=True)

    cpu0 = (cpu_seconds(proxy.pid), cpu_seconds(origin.proc.pid))
    pool = ClientPool(count, proxy.port, target, pki.root, one_k)
    try:
        with t.check("%d connections: CONNECT + TLS handshake (forged certificate verified), all held"
                     % count, fatal=True):
            reps = merge(pool.collect("open", OPEN_DEADLINE + 30))
            rate = count / reps["secs"] if reps["secs"] else 0
            t.note("%d held in %.1fs, %.0f connections/s" % (reps["held"], reps["secs"], rate))
            t.note("CPU: proxy %.1fs, nginx %.1fs, clients %.1fs" % (
                cpu_seconds(proxy.pid) - cpu0[0], cpu_seconds(origin.proc.pid) - cpu0[1],
                sum(cpu_seconds(p.pid) for p in pool.procs)))
            assert proxy.alive(), "sightline exited with %r" % proxy.proc.returncode
            assert reps["held"] == count, "%d of %d connections held; failures: %s" % (
                reps["held"], count, describe_failures(reps))

        with t.check("the proxy holds all %d at once (sightline_active_connections)" % count):
            seen = [0]

            def all_active():
                seen[0] = active_connections(proxy)
                return seen[0] == count
            ok = h.wait_until(all_active, HOLD_CHECK_DEADLINE, 0.5)
            t.note("gauge %d" % seen[0])
            assert ok, "sightline_active_connections is %d, %d connections held by the clients" % (
                seen[0], count)

        with t.check("RSS per held connection reported"):
            try:
                t.note("proxy fds %d" % len(os.listdir("/proc/%d/fd" % proxy.pid)))
            except OSError:
                pass
            rss_held = h.rss_bytes(proxy.pid)
            per = (rss_held - rss_idle) / count
            t.note("RSS %.1f MiB holding %d, %.1f MiB idle: %.1f KiB per connection" % (
                rss_held / 2**20, count, rss_idle / 2**20, per / 1024))
            print("      RSS per connection: %.1f KiB (%d connections%s)" % (
                per / 1024, count, ", sanitizer build" if SANITIZED else ""), flush=True)

        with t.check("every held connection sends GET /1k and gets 200 with the origin's bytes"):
            cpu1 = (cpu_seconds(proxy.pid), cpu_seconds(origin.proc.pid),
                    sum(cpu_seconds(p.pid) for p in pool.procs))
            pool.send("request")
            reps = merge(pool.collect("request", REQUEST_DEADLINE + 30))
            rate = count / reps["secs"] if reps["secs"] else 0
            t.note("%d responses in %.1fs, %.0f requests/s" % (reps["done_ok"], reps["secs"], rate))
            t.note("CPU: proxy %.1fs, nginx %.1fs, clients %.1fs" % (
                cpu_seconds(proxy.pid) - cpu1[0], cpu_seconds(origin.proc.pid) - cpu1[1],
                sum(cpu_seconds(p.pid) for p in pool.procs) - cpu1[2]))
            assert reps["done_ok"] == count, "%d of %d requests completed; failures: %s" % (
                reps["done_ok"], count, describe_failures(reps))
    finally:
        pool.kill()

    with t.check("connections drain: sightline_active_connections back to 0"):
        seen = [None]

        def drained():
            seen[0] = active_connections(proxy)
            return seen[0] == 0
        assert h.wait_until(drained, 60, 0.5), "still %d active connections 60s after the clients closed" % seen[0]

    with t.check("no connection counted as failed (sightline_connection_failures_total)"):
        moved = {k: v - base_failures.get(k, 0) for k, v in failures(proxy).items()
                 if v != base_failures.get(k, 0)}
        assert moved == {}, "failures counted during the load: %r" % moved

    with t.check("proxy alive and serving after the load; SIGTERM exits 0"):
        assert proxy.alive(), "sightline exited with %r" % proxy.proc.returncode
        st, body = h.https_get_via_proxy(proxy.port, target, "/1k", pki.root)
        assert st == 200 and body == one_k, "status %d" % st
        rc = proxy.stop()
        assert rc == 0, "exit code %r" % rc


if __name__ == "__main__":
    h.run_test("66_load", main)
