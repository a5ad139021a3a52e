#!/usr/bin/env python3
"""Layer 10: configuration and startup.

A valid config starts, logs "listening", accepts on its port and exits 0 on
SIGTERM and SIGINT; --listen adds a listener; unknown keys, bad values,
syntax errors and a missing [ca] are refused with an error that names the
file, the line and the key; a group/world-readable CA key is refused.
"""

import os
import re
import shutil
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def line_of(text, needle):
    """1-based line number of the first line containing needle."""
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError("test bug: %r not in config" % needle)


def mentions_line(err, cfg, n):
    """'FILE:N' (as in FILE:N:COL:) or 'line N' in err."""
    name = re.escape(os.path.basename(cfg))
    return re.search(r"%s:%d\b|\bline\s*%d\b" % (name, n, n), err, re.I) is not None


def expect_refused(t, text, key, name="cfg", lineno_of=None, need_file=True):
    """Run sightline with text; assert it exits non-zero and names file,
    line and key."""
    port = h.free_port()
    text = text.replace("@PORT@", str(port))
    rc, err, cfg = h.run_sightline_expect_exit(t, text, name=name, timeout=10, port=port)
    short = err.strip()[-600:]
    assert rc is not None, "sightline kept running (should have refused the config)"
    assert rc != 0, "exit code 0 (expected non-zero); stderr: %r" % short
    assert rc > 0, "killed by signal %d (crash?) instead of a clean refusal; stderr: %r" % (-rc, short)
    assert not need_file or cfg in err or os.path.basename(cfg) in err, \
        "stderr does not name the config file %s: %r" % (cfg, short)
    if key is not None:
        assert key in err, "stderr does not name the key %r: %r" % (key, short)
    if lineno_of is not None:
        n = line_of(text, lineno_of)
        assert mentions_line(err, cfg, n), "stderr does not give line %d: %r" % (n, short)
    return rc, err


def main(t):
    pki = t.pki()

    # ---- a valid config starts and stops cleanly
    for sig in (signal.SIGTERM, signal.SIGINT):
        signame = sig.name
        with t.check("valid config starts, logs 'listening', exits 0 on %s" % signame):
            p = t.start_proxy(pki, name="ok-%s" % signame)
            ev = p.wait_event(lambda e: e.get("event") == "listening", timeout=5)
            assert ev is not None, "no {\"event\":\"listening\"} line; stderr: %r" % p.stderr_text()[-500:]
            addr = str(ev.get("address", ""))
            assert str(p.port) in addr, "listening address %r does not contain port %d" % (addr, p.port)
            rc = p.stop(sig, timeout=10)
            assert rc == 0, "exit code after %s is %r (expected 0)" % (signame, rc)

    with t.check("--listen on the command line provides the listener"):
        port = h.free_port()
        text = h.make_config(pki, listen_port=None)
        p = h.Proxy(t, text, args=["--listen", "127.0.0.1:%d" % port], name="cli-listen", port=port)
        rc = p.stop()
        assert rc == 0, "exit code after SIGTERM is %r" % rc

    base = h.make_config(pki, listen_port=None).replace(
        "workers = 1\n", "workers = 1\n\n[[listener]]\naddress = \"127.0.0.1:@PORT@\"\nmode = \"explicit\"\n")

    # ---- unknown keys
    with t.check("unknown top-level key refused (file, line, key named)"):
        text = base.replace("workers = 1\n", "workers = 1\nfrobnicate_level = 3\n")
        expect_refused(t, text, "frobnicate_level", name="unknown-top", lineno_of="frobnicate_level")

    with t.check("unknown key in [upstream] refused (file, line, key named)"):
        text = base + "\n[timeouts]\nconnect = \"5s\"\n"
        text = text.replace("[upstream]\n", "[upstream]\nverify_harder = true\n")
        expect_refused(t, text, "verify_harder", name="unknown-upstream", lineno_of="verify_harder")

    with t.check("unknown section refused"):
        text = base + "\n[nonsense_section]\nx = 1\n"
        expect_refused(t, text, "nonsense_section", name="unknown-section", lineno_of="nonsense_section")

    # ---- bad values
    bad_values = [
        ("on_invalid", "[upstream]\n", "[upstream]\non_invalid = \"maybe\"\n"),
        ("min_version", "[upstream]\n", "[client]\nmin_version = \"1.1\"\n\n[upstream]\n"),
        ("mode", 'mode = "explicit"', 'mode = "sideways"'),
        ("connect", None, "\n[timeouts]\nconnect = \"soon\"\n"),
        ("workers", "workers = 1", "workers = -4"),
        ("address", '"127.0.0.1:@PORT@"', '"127.0.0.1:99999"'),
    ]
    for key, old, new in bad_values:
        with t.check("bad value for %s refused (file, line, key named)" % key):
            text = base + new if old is None else base.replace(old, new, 1)
            assert text != base, "test bug"
            needle = {"address": "99999", "mode": "sideways", "workers": "-4",
                      "connect": "soon", "on_invalid": "maybe", "min_version": "1.1"}[key]
            expect_refused(t, text, key, name="bad-%s" % key, lineno_of=needle)

    with t.check("wrong value type (workers = \"two\") refused"):
        text = base.replace("workers = 1", 'workers = "two"')
        expect_refused(t, text, "workers", name="bad-type", lineno_of="workers")

    with t.check("TOML syntax error refused with file and line"):
        text = base.replace("[upstream]\n", "[upstream]\nca_file = \"unterminated\n")
        expect_refused(t, text, None, name="syntax", lineno_of="unterminated")

    with t.check("missing [ca] refused"):
        text = "workers = 1\n\n[[listener]]\naddress = \"127.0.0.1:@PORT@\"\nmode = \"explicit\"\n"
        rc, err = expect_refused(t, text, None, name="no-ca", need_file=False)
        assert "ca" in err.lower(), "stderr does not mention ca: %r" % err[-300:]

    with t.check("nonexistent CA cert file refused"):
        text = base.replace(pki.ca_cert, os.path.join(t.dir, "no-such-ca.crt"))
        rc, err = expect_refused(t, text, None, name="no-ca-file", need_file=False)
        assert "no-such-ca.crt" in err, "stderr does not name the missing file: %r" % err[-300:]

    # ---- CA key permissions
    for mode in (0o644, 0o640, 0o604):
        with t.check("CA key with mode %04o refused" % mode):
            k = os.path.join(t.dir, "ca-%o.key" % mode)
            shutil.copyfile(pki.ca_key, k)
            os.chmod(k, mode)
            port = h.free_port()
            text = h.make_config(pki, listen_port=port, ca_key=k)
            rc, err, _ = h.run_sightline_expect_exit(t, text, name="keymode-%o" % mode,
                                                     timeout=10, port=port)
            assert rc is not None, "sightline started with a %04o CA key" % mode
            assert rc > 0, "exit code %r (expected a clean non-zero exit); stderr: %r" % (rc, err[-300:])
            assert "ca-%o.key" % mode in err or "key" in err.lower(), \
                "stderr does not say which key / why: %r" % err[-300:]

    with t.check("CA key with mode 0600 accepted (control)"):
        k = os.path.join(t.dir, "ca-600.key")
        shutil.copyfile(pki.ca_key, k)
        os.chmod(k, 0o600)
        port = h.free_port()
        p = h.Proxy(t, h.make_config(pki, listen_port=port, ca_key=k), name="keymode-600", port=port)
        rc = p.stop()
        assert rc == 0, "exit code after SIGTERM is %r" % rc


if __name__ == "__main__":
    h.run_test("10_config", main)
