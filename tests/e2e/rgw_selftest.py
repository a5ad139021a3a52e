#!/usr/bin/env python3
"""Self-test of the Rgw fixture (tests/e2e/rgw.py); run by hand, as root,
not part of the meson suite:

    python3 tests/e2e/rgw_selftest.py            # main flow + failure paths
    python3 tests/e2e/rgw_selftest.py --main     # main flow only
    python3 tests/e2e/rgw_selftest.py --failures # failure paths only

Main flow: start, Object Lock bucket, COMPLIANCE object retained 3 s,
retention and version listing, delete refused (403) then allowed (204)
once the retention passed, radosgw stopped (connections refused) and
restarted on the same port, stop; then no daemon it started is alive and
its data dir is gone. Prints timings.

Failure paths: a child process starts an Rgw, reports its pids and data
dir, then fails in one of several ways; this process checks that none of
those daemons survives and the data dir is gone:
    exception   exception inside harness.run_test (TestRun.cleanup)
    uncaught    exception outside run_test (atexit kill_all)
    sigterm     SIGTERM while the test runs (signal -> SystemExit)
    sigkill     SIGKILL: no cleanup runs; PR_SET_PDEATHSIG kills the daemons
                (the data dir stays: nothing can remove it; this checks
                the processes only)
    startfail   radosgw cannot bind its port: start() raises Fatal with the
                log tail and leaves nothing running
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness  # noqa: E402
from harness import Fatal, Skip  # noqa: E402
from rgw import Rgw, parse_iso8601  # noqa: E402

RETAIN = 3.0


def pid_alive(pid):
    """True if pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            st = f.read()
    except OSError:
        return False
    return st[st.rindex(")") + 2] != "Z"


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


class Timer:
    def __init__(self):
        self.rows = []

    def __call__(self, name, t0):
        dt = time.monotonic() - t0
        self.rows.append((name, dt))
        print("  %-44s %7.3fs" % (name, dt), flush=True)
        return time.monotonic()


def main_flow(tmp):
    tm = Timer()
    rgw = Rgw(tmp)
    t0 = t = time.monotonic()
    with rgw:                                    # __enter__ starts it
        t = tm("start (mon+osd+radosgw+user)", t)
        print("    steps: " + ", ".join("%s %.3f" % kv for kv in rgw.timings.items()))
        print("    endpoint %s, pids %s, dir %s" % (rgw.endpoint, rgw.pids(), rgw.dir))
        pids = list(rgw.all_pids)
        data_dir = rgw.dir

        st, _, body = rgw.s3("GET", "/")
        expect(st == 200 and b"ListAllMyBucketsResult" in body, "GET / -> %d %r" % (st, body[:200]))
        rgw.create_lock_bucket("locked")
        t = tm("create Object Lock bucket", t)

        data = os.urandom(4096)
        until = time.time() + RETAIN
        st, vid = rgw.put_object("locked", "dir/obj 1.bin", data, mode="COMPLIANCE",
                                 retain_until=until)
        expect(st == 200 and vid, "PUT -> %d version %r" % (st, vid))
        t = tm("put object (COMPLIANCE, %gs)" % RETAIN, t)

        ret = rgw.get_retention("locked", "dir/obj 1.bin", vid)
        expect(ret is not None and ret[0] == "COMPLIANCE", "retention %r" % (ret,))
        until_srv = parse_iso8601(ret[1])
        expect(until <= until_srv < until + 2, "retain-until %r vs asked %.1f" % (ret[1], until))
        expect(rgw.get_retention("locked", "dir/obj 1.bin") == ret, "retention of latest differs")
        vs = rgw.list_versions("locked", prefix="dir/")
        expect(len(vs) == 1 and vs[0]["key"] == "dir/obj 1.bin" and vs[0]["version_id"] == vid
               and vs[0]["size"] == len(data) and vs[0]["etag"] == hashlib.md5(data).hexdigest(),
               "list_versions %r" % vs)
        expect(rgw.list_versions("locked", prefix="nothing/") == [], "prefix filter")
        expect(rgw.get_object("locked", "dir/obj 1.bin", vid) == data, "GET version body differs")
        expect(rgw.get_object("locked", "dir/obj 1.bin") == data, "GET latest body differs")
        st2, vid2 = rgw.put_object("locked", "plain", b"x")
        expect(st2 == 200 and vid2, "PUT without retention -> %d %r" % (st2, vid2))
        expect(rgw.get_retention("locked", "plain") is None, "retention on a plain object")
        t = tm("retention + list_versions + get checks", t)

        st = rgw.delete_version("locked", "dir/obj 1.bin", vid)
        expect(st == 403, "DELETE under retention -> %d (want 403)" % st)
        t = tm("delete refused (403)", t)

        # Wait past the retention (bounded): sleep to the server's date, then
        # retry briefly (its clock is ours, so one try should do).
        time.sleep(max(0.0, until_srv - time.time()) + 0.2)
        deadline = time.monotonic() + 10
        tries = 0
        while True:
            tries += 1
            st = rgw.delete_version("locked", "dir/obj 1.bin", vid)
            if st != 403 or time.monotonic() >= deadline:
                break
            time.sleep(0.25)
        expect(st == 204, "DELETE after retention -> %d (want 204)" % st)
        expect(rgw.list_versions("locked", prefix="dir/", delete_markers=True) == [],
               "versions left after delete")
        t = tm("wait past retention, delete (204, %d tr%s)" % (tries, "y" if tries == 1 else "ies"), t)

        gw_pid = rgw.pids()["client.rgw.a"]
        rc = rgw.stop_gateway()
        t = tm("stop_gateway (rc=%s)" % rc, t)
        expect(not pid_alive(gw_pid), "radosgw %d still alive" % gw_pid)
        try:
            rgw.s3("GET", "/", timeout=2)
            raise AssertionError("gateway still answering after stop_gateway")
        except ConnectionRefusedError:
            pass
        rgw.start_gateway()
        t = tm("start_gateway (same port)", t)
        st, _, body = rgw.s3("GET", "/")
        expect(st == 200 and b"<Name>locked</Name>" in body, "after restart GET / -> %d %r" % (st, body[:300]))
        expect(len(rgw.list_versions("locked")) == 1, "bucket content lost over gateway restart")
        pids = list(rgw.all_pids)
        t = tm("gateway answers again, data intact", t)
    tm("stop", t)
    alive = [p for p in pids if pid_alive(p)]
    expect(not alive, "daemons still alive after stop: %r" % alive)
    expect(not os.path.exists(data_dir), "data dir %s still exists" % data_dir)
    rgw.stop()                                   # idempotent
    print("  all %d daemon pids gone, data dir removed; total %.2fs" % (
        len(pids), time.monotonic() - t0), flush=True)


# ----------------------------------------------------------------------
# failure paths (child side)

def child(mode, report):
    def started(rgw):
        with open(report + ".tmp", "w") as f:
            json.dump({"pids": rgw.all_pids, "dir": rgw.dir}, f)
        os.rename(report + ".tmp", report)

    if mode == "uncaught":
        tmp = tempfile.mkdtemp(prefix="rgw-selftest-child-")
        rgw = Rgw(tmp).start()
        started(rgw)
        raise RuntimeError("forced failure outside run_test")

    def main(t):
        if mode == "startfail":
            # Occupy radosgw's port so it cannot bind: start must fail.
            import rgw as rgw_mod
            real = rgw_mod.free_ports
            hold = []

            def ports(n, host="127.0.0.1"):
                p = real(n, host)
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", p[-1]))
                s.listen(1)
                hold.append(s)
                return p
            rgw_mod.free_ports = ports
            r = Rgw(t.dir, start_timeout=15)
            try:
                r.start()
            except Fatal as e:
                alive = [p for p in r.all_pids if pid_alive(p)]
                print("start failed as expected; message:\n%s" % str(e)[:1500])
                with open(report + ".tmp", "w") as f:
                    json.dump({"pids": r.all_pids, "dir": r.dir, "alive_after": alive,
                               "message": str(e)}, f)
                os.rename(report + ".tmp", report)
                return
            raise AssertionError("start succeeded with its port taken")
        rgw = Rgw(t.dir).start()
        rgw.create_lock_bucket("bkt")
        rgw.put_object("bkt", "k", b"v", mode="COMPLIANCE", retain_until=time.time() + 3600)
        started(rgw)
        if mode == "exception":
            raise RuntimeError("forced failure inside run_test")
        time.sleep(120)                        # waiting for SIGTERM / SIGKILL

    harness.run_test("rgw_selftest_" + mode, main)


def failure_path(mode):
    rdir = tempfile.mkdtemp(prefix="rgw-selftest-")
    try:
        _failure_path(mode, os.path.join(rdir, "report.json"))
    finally:
        shutil.rmtree(rdir, ignore_errors=True)


def _failure_path(mode, report):
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", mode, report],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not os.path.exists(report) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if mode in ("sigterm", "sigkill") and os.path.exists(report):
        p.send_signal(signal.SIGTERM if mode == "sigterm" else signal.SIGKILL)
    try:
        out, _ = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
    out = out.decode(errors="replace")
    if not os.path.exists(report):
        raise AssertionError("child (%s) reported nothing; rc=%s output:\n%s" % (mode, p.returncode, out))
    with open(report) as f:
        rep = json.load(f)
    # PDEATHSIG / cleanup are immediate, but give the kernel a moment.
    deadline = time.monotonic() + 5
    while any(pid_alive(x) for x in rep["pids"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = [x for x in rep["pids"] if pid_alive(x)]
    for x in alive:                         # don't leave them behind ourselves
        try:
            os.kill(x, signal.SIGKILL)
        except ProcessLookupError:
            pass
    expect(not alive, "%s: daemons %r survived (child rc=%s) output:\n%s" % (
        mode, alive, p.returncode, out[-3000:]))
    left = os.path.exists(rep["dir"])
    # The child's own temp dir: run_test removes its TestRun dir, except
    # after SIGKILL (nothing ran); "uncaught" made one outside run_test.
    shutil.rmtree(os.path.dirname(rep["dir"]), ignore_errors=True)
    if mode != "sigkill":       # after SIGKILL nothing could remove it
        expect(not left, "%s: data dir %s left" % (mode, rep["dir"]))
    if mode == "startfail":
        expect(not rep["alive_after"], "startfail: %r alive right after start failed" % rep["alive_after"])
        expect("radosgw" in rep["message"] or "client.rgw.a" in rep["message"],
               "startfail message lacks the radosgw log: %r" % rep["message"][:500])
    if mode == "startfail":
        expect(p.returncode == 0, "startfail: child rc=%s" % p.returncode)
        print("    start failure message (head):\n      " +
              "\n      ".join(rep["message"].splitlines()[:6]))
    elif mode != "sigkill":
        expect(p.returncode not in (0, -9), "%s: child rc=%s" % (mode, p.returncode))
    print("  %-10s ok: child rc=%s, %d daemon(s) gone, %.2fs" % (
        mode, p.returncode, len(rep["pids"]), time.monotonic() - t0), flush=True)


def main():
    args = sys.argv[1:]
    if args[:1] == ["--child"]:
        child(args[1], args[2])
        return 0
    do_main = "--failures" not in args
    do_fail = "--main" not in args
    if os.geteuid() != 0:
        print("note: not root; the daemons run as %d" % os.geteuid())
    try:
        if do_main:
            print("== main flow", flush=True)
            tmp = tempfile.mkdtemp(prefix="rgw-selftest-")
            try:
                main_flow(tmp)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        if do_fail:
            print("== failure paths", flush=True)
            for mode in ("exception", "uncaught", "sigterm", "sigkill", "startfail"):
                failure_path(mode)
    except Skip as e:
        print("SKIP %s" % e)
        return 77
    except (AssertionError, Fatal) as e:
        print("FAIL %s" % e)
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
