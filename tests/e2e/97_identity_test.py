#!/usr/bin/env python3
"""Layer 97: user identity (issue 9).

An nginx TLS origin and a Python plain-HTTP origin behind two proxies:
  credentials   an explicit listener with a credentials file made by
                `sightline passwd` (0600): no Proxy-Authorization -> 407 with
                Proxy-Authenticate: Basic realm=...; a wrong password -> 407;
                the right one -> 200 through CONNECT (intercepted) and for
                plain HTTP, whose origin never sees Proxy-Authorization;
                curl --proxy-anyauth (first try without credentials, then
                the retry) works; a plain-HTTP connection whose later
                request drops the credentials gets 407;
  policy        `users = [...]` and `groups = [...]` block rules apply to
                that user only (groups from the groups file);
  logs          the connection and access-log lines carry user (and auth,
                groups); neither the password nor the base64 token appears
                anywhere on stderr; sightline_proxy_auth_total counts each
                result;
  reload        SIGHUP after `sightline passwd` changes a password: the new
                one works, the old one no longer does; a broken credentials
                file on SIGHUP logs FILE:LINE and keeps the previous one;
  user map      an explicit listener without credentials and a user map
                (127.0.0.0/8 and the more specific 127.0.0.1/32): the user
                is the /32 one, its group rule blocks it.
"""

import base64
import hashlib
import os
import re
import signal
import socket
import stat
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

PASSWORDS = {"alice": "Tr0ub4dor&3-alice", "bob": "bob-correct-horse", "carol": "carol:with:colons"}
PLAIN_BODY = b"plain origin says hello\n"


def passwd(t, path, user, password):
    cp = h.run([h.sightline_bin(), "passwd", path, user, "--password-stdin"],
               input=(password + "\n").encode(), timeout=60)
    assert cp.returncode == 0, "passwd rc=%d: %s" % (cp.returncode, cp.stderr.decode(errors="replace"))


def token(user, password):
    return base64.b64encode(("%s:%s" % (user, password)).encode()).decode()


def connect_code(cp):
    """curl -w '%{http_connect}' output: the CONNECT response status."""
    m = re.search(rb"(\d{3})$", cp.stdout)
    return int(m.group(1)) if m else None


def admin_metrics(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        return r.read().decode()


def metric(text, name, labels):
    m = re.search(r"^%s\{%s\} (\S+)$" % (re.escape(name), re.escape(labels)), text, re.M)
    return float(m.group(1)) if m else None


def raw_plain(port, head):
    """Send a request head on a fresh connection; (status, head text)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(head.encode())
        return h.read_response_head(s)
    finally:
        s.close()


def main(t):
    pki = t.pki()
    origin = t.start_nginx(pki, certs=["valid-ec"])
    plain = h.PlainOrigin(PLAIN_BODY)
    ec = origin.port("valid-ec")
    https_url = "https://localhost:%d/1k" % ec
    plain_url = "http://127.0.0.1:%d/hello" % plain.port
    target = "localhost:%d" % ec

    creds = os.path.join(t.dir, "users")
    groups = os.path.join(t.dir, "groups")
    usermap = os.path.join(t.dir, "usermap")
    policy = os.path.join(t.dir, "policy.toml")
    with open(groups, "w") as f:
        f.write("# written by 97_identity_test\ntraders: bob, dave\nstaff: alice\n")
    with open(usermap, "w") as f:
        f.write("127.0.0.0/8 erin\n127.0.0.1/32 dave   # the more specific wins\n")
    with open(policy, "w") as f:
        f.write('[policy]\ndefault = "inspect"\n\n'
                '[[rule]]\nname = "no-carol"\naction = "block"\nusers = ["Carol"]\n\n'
                '[[rule]]\nname = "no-traders"\naction = "block"\ngroups = ["traders"]\n')

    with t.check("sightline passwd creates a 0600 credentials file", fatal=True):
        for user, pw in PASSWORDS.items():
            passwd(t, creds, user, pw)
        mode = stat.S_IMODE(os.stat(creds).st_mode)
        assert mode == 0o600, "mode %o" % mode
        text = open(creds).read()
        assert len(text.splitlines()) == 3, text
        assert all(l.split(":", 1)[1].startswith("$scrypt$ln=15,r=8,p=1$") for l in text.splitlines()), text
        for pw in PASSWORDS.values():
            assert pw not in text

    extra = ('[identity]\ncredentials = "%s"\ngroups = "%s"\nrealm = "bank proxy"\n\n'
             '[policy]\nfiles = ["%s"]\n' % (creds, groups, policy))
    proxy = t.start_proxy(pki, extra=extra)
    alice = ["--proxy-user", "alice:" + PASSWORDS["alice"]]

    with t.check("CONNECT without credentials: 407 with Proxy-Authenticate, no tunnel"):
        s, code, head = h.connect_tunnel(proxy.port, target)
        s.close()
        assert code == 407, head
        assert re.search(r'^Proxy-Authenticate: Basic realm="bank proxy"', head, re.M | re.I), head
        cp = h.curl_via(proxy.port, https_url, pki.root, ["-w", "%{http_connect}"])
        assert cp.returncode != 0 and connect_code(cp) == 407, (cp.returncode, cp.stdout[-20:])
        ev = proxy.wait_event(lambda e: e.get("event") == "connection" and e.get("auth") == "missing")
        assert ev and ev.get("status") == 407 and "user" not in ev, ev

    with t.check("CONNECT with a wrong password or an unknown user: 407"):
        for creds_arg in ("alice:Wr0ng-pass-x", "mallory:" + PASSWORDS["alice"]):
            cp = h.curl_via(proxy.port, https_url, pki.root, ["--proxy-user", creds_arg, "-w", "%{http_connect}"])
            assert cp.returncode != 0 and connect_code(cp) == 407, (creds_arg, cp.returncode, cp.stdout[-20:])
        ev = proxy.wait_event(lambda e: e.get("event") == "connection" and e.get("auth") == "invalid")
        assert ev and ev.get("status") == 407, ev

    with t.check("CONNECT with the right password: 200, intercepted, exact body"):
        for _ in range(3):  # the first pays the hash, the others hit the cache
            cp = h.curl_via(proxy.port, https_url, pki.root, alice)
            assert cp.returncode == 0, "curl rc=%d: %s" % (cp.returncode, h.curl_err(cp))
            assert hashlib.sha256(cp.stdout).hexdigest() == origin.sha["/1k"]
        ev = proxy.wait_event(lambda e: e.get("event") == "connection" and e.get("user") == "alice"
                              and e.get("action") == "intercept")
        assert ev and ev.get("auth") == "ok" and ev.get("groups") == ["staff"], ev
        ex = proxy.wait_event(lambda e: e.get("event") == "exchange" and e.get("user") == "alice")
        assert ex and ex.get("groups") == ["staff"], ex

    with t.check("curl --proxy-anyauth: 407 first, then the retry with credentials succeeds"):
        for url in (https_url, plain_url):
            before = metric(admin_metrics(proxy.admin_port), "sightline_proxy_auth_total", 'result="missing"')
            cp = h.curl_via(proxy.port, url, pki.root, ["--proxy-anyauth"] + alice)
            assert cp.returncode == 0, "%s: curl rc=%d: %s" % (url, cp.returncode, h.curl_err(cp))
            after = metric(admin_metrics(proxy.admin_port), "sightline_proxy_auth_total", 'result="missing"')
            assert after == before + 1, "%s: missing %r -> %r (no 407 first?)" % (url, before, after)

    with t.check("plain HTTP: 407 without credentials, 200 with, Proxy-Authorization not forwarded"):
        code, head = raw_plain(proxy.port, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % plain_url)
        assert code == 407 and re.search(r"^Proxy-Authenticate: Basic ", head, re.M | re.I), head
        cp = h.curl_via(proxy.port, plain_url, None, alice)
        assert cp.returncode == 0 and cp.stdout == PLAIN_BODY, (cp.returncode, h.curl_err(cp))
        assert plain.seen and "proxy-authorization" not in plain.seen[-1], plain.seen[-1]
        ex = proxy.wait_event(lambda e: e.get("event") == "exchange" and e.get("user") == "alice"
                              and e.get("target") == "/hello")
        assert ex, "no exchange line with user alice for the plain request"

    with t.check("plain HTTP keep-alive: a later request without the credentials gets 407"):
        auth = "Proxy-Authorization: Basic %s\r\n" % token("alice", PASSWORDS["alice"])
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        try:
            s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (plain_url, auth)).encode())
            code1, _ = h.read_response_head(s)
            body = b""
            while len(body) < len(PLAIN_BODY):
                body += s.recv(4096)
            s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % plain_url).encode())
            code2, head2 = h.read_response_head(s)
        finally:
            s.close()
        assert code1 == 200 and code2 == 407, (code1, code2, head2)

    with t.check("policy: users = [\"Carol\"] and groups = [\"traders\"] block only those users"):
        for user in ("carol", "bob"):
            cp = h.curl_via(proxy.port, https_url, pki.root,
                            ["--proxy-user", "%s:%s" % (user, PASSWORDS[user]), "-w", "%{http_connect}"])
            assert cp.returncode != 0 and connect_code(cp) == 403, (user, cp.returncode, cp.stdout[-20:])
            ev = proxy.wait_event(lambda e, u=user: e.get("event") == "connection" and e.get("user") == u)
            assert ev and ev.get("auth") == "ok" and ev.get("status") == 403, ev
        assert "no-traders" in ev.get("policy", ""), ev
        cp = h.curl_via(proxy.port, https_url, pki.root, alice)
        assert cp.returncode == 0, "alice: curl rc=%d: %s" % (cp.returncode, h.curl_err(cp))

    with t.check("metrics: sightline_proxy_auth_total counts ok, missing and invalid"):
        text = admin_metrics(proxy.admin_port)
        for result in ("ok", "missing", "invalid"):
            v = metric(text, "sightline_proxy_auth_total", 'result="%s"' % result)
            assert v and v > 0, "%s: %r" % (result, v)

    with t.check("SIGHUP: a changed password applies; a broken file keeps the previous one"):
        passwd(t, creds, "alice", "new-alice-password")
        mark = proxy.mark()
        proxy.proc.send_signal(signal.SIGHUP)
        assert proxy.wait_event(lambda e: e.get("event") == "identity_reload" and e.get("result") == "ok",
                                since=mark), "no identity_reload ok"
        cp = h.curl_via(proxy.port, https_url, pki.root, ["--proxy-user", "alice:new-alice-password"])
        assert cp.returncode == 0, "new password: curl rc=%d: %s" % (cp.returncode, h.curl_err(cp))
        cp = h.curl_via(proxy.port, https_url, pki.root, alice + ["-w", "%{http_connect}"])
        assert connect_code(cp) == 407, "old password still accepted"
        good = open(creds).read()
        with open(creds, "a") as f:
            f.write("broken line\n")
        mark = proxy.mark()
        proxy.proc.send_signal(signal.SIGHUP)
        ev = proxy.wait_event(lambda e: e.get("event") == "identity_reload" and e.get("result") == "error",
                              since=mark)
        assert ev and ev.get("msg", "").startswith(creds + ":%d:" % (len(good.splitlines()) + 1)), ev
        cp = h.curl_via(proxy.port, https_url, pki.root, ["--proxy-user", "alice:new-alice-password"])
        assert cp.returncode == 0, "after a bad reload: curl rc=%d: %s" % (cp.returncode, h.curl_err(cp))
        PASSWORDS["alice"] = "new-alice-password"

    with t.check("never logged: passwords, base64 tokens, hashes"):
        time.sleep(0.3)
        err = proxy.stderr_text()
        hashes = [l.split(":", 1)[1].split("$")[-1] for l in open(creds).read().splitlines() if ":" in l]
        secrets = list(PASSWORDS.values()) + ["Tr0ub4dor&3-alice", "Wr0ng-pass-x"] + hashes
        secrets += [token(u, p) for u, p in PASSWORDS.items()] + [token("alice", "Tr0ub4dor&3-alice")]
        for s_ in secrets:
            assert s_ not in err, "found %r on stderr" % s_
        assert "Proxy-Authorization" not in err and "proxy-authorization" not in err

    # ---------------------------------------------------------------- user map
    extra2 = ('[identity]\nuser_map = "%s"\ngroups = "%s"\n\n[policy]\nfiles = ["%s"]\n'
              % (usermap, groups, policy))
    mapped = t.start_proxy(pki, name="mapped", extra=extra2)

    with t.check("user map: the most specific prefix names the user, its group rule blocks it"):
        cp = h.curl_via(mapped.port, https_url, pki.root, ["-w", "%{http_connect}"])
        assert connect_code(cp) == 403, (cp.returncode, cp.stdout[-20:])
        ev = mapped.conn_event(target)
        assert ev and ev.get("user") == "dave" and ev.get("groups") == ["traders"], ev
        assert "auth" not in ev, ev
        assert "no-traders" in ev.get("policy", ""), ev

    with t.check("user map: another user's traffic passes, plain HTTP carries the user"):
        with open(usermap, "w") as f:
            f.write("127.0.0.1/32 frank\n")
        mark = mapped.mark()
        mapped.proc.send_signal(signal.SIGHUP)
        assert mapped.wait_event(lambda e: e.get("event") == "identity_reload", since=mark)
        cp = h.curl_via(mapped.port, https_url, pki.root)
        assert cp.returncode == 0, "curl rc=%d: %s" % (cp.returncode, h.curl_err(cp))
        cp = h.curl_via(mapped.port, plain_url)
        assert cp.returncode == 0 and cp.stdout == PLAIN_BODY, (cp.returncode, h.curl_err(cp))
        ex = mapped.wait_event(lambda e: e.get("event") == "exchange" and e.get("user") == "frank"
                               and e.get("target") == "/hello", since=mark)
        assert ex, "no plain exchange with user frank"

    plain.kill()


h.run_test("97_identity", main)
