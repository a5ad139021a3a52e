#!/usr/bin/env python3
"""Layer 94: ICAP adaptation of HTTP/1.1 exchanges against a real c-icap.

c-icap (Debian packages c-icap and libc-icap-mod-urlcheck) runs on loopback
with its echo service (RESPMOD) and url_check (REQMOD, blocking the host
blocked.example). Through sightline with curl --http1.1: a GET and a
response over 1 MiB pass byte-exact, a POST body reaches the origin
byte-exact, a blocked URL gets c-icap's block page and never reaches the
origin, a rule with hooks = [] skips ICAP, and with c-icap stopped a
fail-closed proxy answers with an error while a fail-open one relays.
"""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

C_ICAP = "/usr/bin/c-icap"
SHM_GLOB = "/dev/shm/c-icap-shared-kids-queue.*"


def modules_dir():
    for d in glob.glob("/usr/lib/*/c_icap") + ["/usr/lib/c_icap"]:
        if os.path.exists(os.path.join(d, "srv_url_check.so")):
            return d
    return None


class CIcap:
    """One c-icap in its own process group (only what we started is killed)."""

    def __init__(self, t):
        self.dir = os.path.join(t.dir, "c-icap")
        os.makedirs(self.dir)
        self.port = h.free_port()
        mods = modules_dir()
        with open(os.path.join(self.dir, "deny_hosts.txt"), "w") as f:
            f.write("blocked.example\n")
        self.access_log = os.path.join(self.dir, "access.log")
        conf = [
            "PidFile %s/c-icap.pid" % self.dir,
            "CommandsSocket %s/c-icap.ctl" % self.dir,
            "Port 127.0.0.1:%d" % self.port,
            "Timeout 60", "MaxKeepAliveRequests 1000", "KeepAliveTimeout 600",
            # c-icap serves a keep-alive connection with one thread for its
            # whole life: enough threads for every proxy's pool (16 each by
            # default, several proxies per test), or requests on connections
            # beyond the threads wait unanswered (ICAP response timeout).
            "StartServers 1", "MaxServers 1", "MinSpareThreads 2", "MaxSpareThreads 64",
            "ThreadsPerChild 64",
            "TmpDir %s" % self.dir,
            "MaxMemObject 131072", "DebugLevel 1",
            "ModulesDir %s" % mods, "ServicesDir %s" % mods,
            "TemplateDir /usr/share/c_icap/templates/",
            "LoadMagicFile /etc/c-icap/c-icap.magic",
            "ServerLog %s/server.log" % self.dir,
            "AccessLog %s" % self.access_log,
            "Service echo srv_echo.so",
            "Service url_check_module srv_url_check.so",
            'url_check.LookupTableDB denyhosts host hash:%s/deny_hosts.txt "Denied hosts"' % self.dir,
            "url_check.Profile default block denyhosts",
            "url_check.Profile default pass ALL",
        ]
        self.conf = os.path.join(self.dir, "c-icap.conf")
        with open(self.conf, "w") as f:
            f.write("\n".join(conf) + "\n")
        self.proc = None
        # As a subreaper this test inherits c-icap's worker processes when
        # their parent is killed, and reaps them (no zombies left behind).
        try:
            import ctypes
            ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
        except (OSError, AttributeError):
            pass
        h._register(self)  # killed by the harness in every path (failures, signals)

    def start(self):
        for f in ("c-icap.pid", "c-icap.ctl"):
            try:
                os.unlink(os.path.join(self.dir, f))
            except FileNotFoundError:
                pass
        self.shm_before = set(glob.glob(SHM_GLOB))
        out = open(os.path.join(self.dir, "stdout.log"), "ab")
        self.proc = subprocess.Popen([C_ICAP, "-N", "-D", "-f", self.conf], stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=out, start_new_session=True)
        out.close()
        if not h.wait_port("127.0.0.1", self.port, 15, self.proc):
            raise h.Fatal("c-icap did not listen:\n" + self.log_tail())

    def url(self, service):
        return "icap://127.0.0.1:%d/%s" % (self.port, service)

    def requests(self):
        """ICAP requests logged so far (OPTIONS excluded)."""
        try:
            with open(self.access_log, errors="replace") as f:
                return [l for l in f if "REQMOD" in l or "RESPMOD" in l]
        except FileNotFoundError:
            return []

    def stop(self):
        # SIGKILL to its group: its worker processes go too; the port is free after.
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait(10)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    if os.waitpid(-self.proc.pid, os.WNOHANG) == (0, 0):
                        time.sleep(0.02)  # a worker not yet dead
                except ChildProcessError:
                    break  # the whole group is reaped
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                break
            time.sleep(0.05)
        # Killed, c-icap cannot remove its POSIX shared memory; after 1,024
        # leaked ones no c-icap on the machine starts. Remove what it created.
        for f in set(glob.glob(SHM_GLOB)) - getattr(self, "shm_before", set(glob.glob(SHM_GLOB))):
            try:
                os.unlink(f)
            except OSError:
                pass

    def kill(self):
        h._unregister(self)
        self.stop()

    def log_tail(self, n=20):
        out = []
        for f in ("stdout.log", "server.log"):
            p = os.path.join(self.dir, f)
            if os.path.exists(p):
                with open(p, errors="replace") as fh:
                    out += fh.read().splitlines()[-n:]
        return "\n".join(out)


def metric(proxy, name, **labels):
    import urllib.request
    body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % proxy.admin_port, timeout=10).read().decode()
    want = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
    total = 0.0
    for line in body.splitlines():
        if not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        if want and not all(('%s="%s"' % kv) in line for kv in labels.items()):
            continue
        total += float(line.rsplit(" ", 1)[1])
    return total


def wait_grows(fn, before, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn() > before:
            return True
        time.sleep(0.1)
    return False


def main(t):
    if not os.access(C_ICAP, os.X_OK) or not modules_dir():
        raise h.Fatal("c-icap is required (Debian packages c-icap, libc-icap-mod-urlcheck)")
    pki = t.pki()
    origin = t.start_nginx(pki, certs=["valid-ec", "valid-rsa"], big=True, upload=True)
    oport, quiet_port = origin.port("valid-ec"), origin.port("valid-rsa")
    one_k = open(origin.files["/1k"], "rb").read()
    part = open(origin.files["/big"], "rb").read(3_000_000)

    # An origin that records what reaches it (the blocked request must not).
    seen = []

    def respond(conn, head, body):
        seen.append(head.target)
        conn.send(h.http_response(200, b"origin %s\n" % head.target.encode()))
    recorder = h.TlsOrigin(pki, lambda conn: h.serve_http1(conn, respond))

    icap = CIcap(t)
    icap.start()
    pol = os.path.join(t.dir, "icap-policy.toml")
    with open(pol, "w") as f:
        f.write('[[rule]]\nname = "no-icap"\naction = "inspect"\nports = [%d]\nhooks = []\n' % quiet_port)
    icap_args = ["--icap-reqmod", icap.url("url_check"), "--icap-respmod", icap.url("echo")]
    proxy = t.start_proxy(pki, args=icap_args + ["--policy", pol])

    def get(p, url, extra=()):
        return h.curl_via(p.port, url, cafile=pki.root, extra=["--http1.1"] + list(extra))

    with t.check("a GET passes byte-exact through REQMOD and RESPMOD", fatal=True):
        before = len(icap.requests())
        cp = get(proxy, "https://localhost:%d/1k?a" % oport)
        assert cp.returncode == 0 and cp.stdout == one_k, h.curl_err(cp)
        assert wait_grows(lambda: len(icap.requests()), before + 1), \
            "c-icap logged %d requests, want 2 more" % (len(icap.requests()) - before)

    with t.check("a 3 MB response passes byte-exact through RESPMOD"):
        cp = get(proxy, "https://localhost:%d/big?range" % oport, ["-r", "0-2999999"])
        assert cp.returncode == 0 and cp.stdout == part, h.curl_err(cp) + " got %d bytes" % len(cp.stdout)

    with t.check("a POST body reaches the origin byte-exact (Expect: 100-continue included)"):
        body_path = os.path.join(t.dir, "post.bin")
        h.write_pseudorandom(body_path, 2_000_000, seed=7)
        sha = h.sha256_file(body_path)
        cp = get(proxy, "https://localhost:%d/upload" % oport, ["--data-binary", "@" + body_path])
        assert cp.returncode == 0, h.curl_err(cp)
        got = json.loads(cp.stdout)
        assert got == {"sha256": sha, "length": 2_000_000}, "origin saw %s" % got

    with t.check("a blocked host gets c-icap's block page and never reaches the origin"):
        cp = get(proxy, "https://localhost:%d/secret?x=1" % recorder.port,
                 ["-H", "Host: blocked.example", "-w", "\n%{http_code}"])
        assert cp.returncode == 0, h.curl_err(cp)
        text, _, code = cp.stdout.decode(errors="replace").rpartition("\n")
        assert code == "403", "status %s, body %r" % (code, text[:300])
        assert "blocked.example" in text, "no block page: %r" % text[:300]
        cp = get(proxy, "https://localhost:%d/fine" % recorder.port)
        assert cp.returncode == 0 and cp.stdout == b"origin /fine\n", h.curl_err(cp)
        assert seen == ["/fine"], "origin saw %s" % seen

    with t.check("pipelined requests keep their order through REQMOD and RESPMOD"):
        w = h.tls_tunnel(proxy.port, "localhost:%d" % recorder.port, pki.root, alpn=["http/1.1"])
        try:
            w.send(b"".join(b"GET /p%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % i for i in range(3)))
            for i in range(3):
                head = w.read_head()
                _, body, _ = w.read_body(head, "GET")
                assert head.status == 200 and bytes(body) == b"origin /p%d\n" % i, \
                    "response %d: %s %r" % (i, head.status, bytes(body))
        finally:
            w.sock.close()

    with t.check("a rule with hooks = [] skips ICAP"):
        time.sleep(0.3)
        before = len(icap.requests())
        cp = get(proxy, "https://localhost:%d/1k?quiet" % quiet_port)
        assert cp.returncode == 0 and cp.stdout == one_k, h.curl_err(cp)
        time.sleep(0.5)
        after = len(icap.requests())
        assert after == before, "c-icap saw %d requests for the hooks = [] rule" % (after - before)

    with t.check("ICAP metrics count the results"):
        assert metric(proxy, "sightline_icap_results_total", method="reqmod", result="respond") >= 1
        assert metric(proxy, "sightline_icap_results_total", method="respmod") >= 3
        assert metric(proxy, "sightline_icap_duration_seconds_count", method="reqmod") >= 3

    with t.check("a body over max_body streams through unadapted and is counted"):
        cp = h.curl_via(proxy.port, "https://localhost:%d/big" % oport, cafile=pki.root,
                        extra=["--http1.1", "-o", "/dev/null", "-w", "%{size_download}"], timeout=120)
        assert cp.returncode == 0 and cp.stdout == str(h.BIG_SIZE).encode(), h.curl_err(cp)
        assert metric(proxy, "sightline_icap_bypassed_total", reason="too_large") >= 1

    open_proxy = t.start_proxy(pki, name="fail-open", args=icap_args + ["--icap-fail", "open"])
    icap.stop()

    with t.check("c-icap down, fail closed: the client gets an error, not the content"):
        cp = get(proxy, "https://localhost:%d/1k?closed" % oport, ["-w", "\n%{http_code}"])
        text, _, code = cp.stdout.decode(errors="replace").rpartition("\n")
        assert code == "502", "status %s, body %r" % (code, text[:300])
        assert "ICAP" in text, "error page: %r" % text[:300]

    with t.check("c-icap down, fail open: the traffic passes and is counted"):
        cp = get(open_proxy, "https://localhost:%d/1k?open" % oport)
        assert cp.returncode == 0 and cp.stdout == one_k, h.curl_err(cp)
        assert metric(open_proxy, "sightline_icap_bypassed_total", reason="error_fail_open") >= 1

    with t.check("the access log names each exchange's ICAP outcomes and round trips"):
        def ex_line(p, target):
            return p.wait_event(lambda e: e.get("event") == "exchange" and e.get("target") == target, 10)
        ev = ex_line(proxy, "/1k?a")
        assert ev, "no exchange line for /1k?a"
        assert ev.get("icap_reqmod") in ("unchanged", "modified"), ev
        assert ev.get("icap_respmod") in ("unchanged", "modified"), ev
        assert ev.get("icap_reqmod_ms", -1) >= 0 and ev.get("icap_respmod_ms", -1) >= 0, ev
        ev = ex_line(proxy, "/secret?x=1")
        assert ev and ev.get("icap_reqmod") == "respond", ev
        ev = ex_line(proxy, "/big")
        assert ev and ev.get("icap_respmod") == "too-large", ev
        ev = ex_line(proxy, "/1k?closed")
        assert ev and ev.get("icap_reqmod") == "error", ev
        ev = ex_line(open_proxy, "/1k?open")
        assert ev and ev.get("icap_reqmod") == "error", ev
        ev = ex_line(proxy, "/1k?quiet")
        assert ev and "icap_reqmod" not in ev and "icap_respmod" not in ev, ev

    with t.check("the proxies stop cleanly"):
        assert proxy.stop() == 0
        assert open_proxy.stop() == 0


if __name__ == "__main__":  # 95_icap_h2_test imports CIcap from here
    h.run_test("94_icap", main)
