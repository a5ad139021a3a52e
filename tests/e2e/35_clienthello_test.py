#!/usr/bin/env python3
"""Layer 35: real ClientHellos, split across TCP segments and TLS records.

Replays captured first flights (Chromium 156 with a 1216-byte post-quantum
key share, curl, openssl, Python) through a CONNECT tunnel, in small pieces
and re-framed into many TLS records, and checks that the proxy parsed each
one, took its decision from the SNI before any handshake, and answered in
TLS: with an access_denied alert when the origin does not match the SNI
(block), or with a ServerHello from the untrusted CA (forward-untrusted).
"""

import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

HELLOS = ["chromium-156.bin", "curl-7.88-openssl-3.0.bin",
          "openssl-3.0-s_client-tls13.bin", "python-3.11-ssl.bin"]
SNI = "www.example-intercept.test"


def reframe(wire, chunk):
    """The same handshake message carried in records of at most `chunk` bytes."""
    msg = wire[5:]
    out = b""
    for off in range(0, len(msg), chunk):
        part = msg[off:off + chunk]
        out += bytes([22, 3, 1, len(part) >> 8, len(part) & 0xff]) + part
    return out


def first_record(s):
    head = b""
    while len(head) < 6:
        got = s.recv(6 - len(head))
        if not got:
            break
        head += got
    return head


def send_in_pieces(s, data, piece):
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for off in range(0, len(data), piece):
        s.sendall(data[off:off + piece])


def main(t):
    pki = t.pki()
    origin = t.start_nginx(pki, certs=["valid-ec"])
    target = "localhost:%d" % origin.port("valid-ec")
    data_dir = os.path.join(h.SRC, "tests", "data", "clienthello")
    block = t.start_proxy(pki, name="block", upstream={"refuse_with": "alert"})
    fwd = t.start_proxy(pki, name="forward", upstream={"on_invalid": "forward-untrusted"})

    for name in HELLOS:
        wire = open(os.path.join(data_dir, name), "rb").read()
        for label, data, piece in (("as captured, 100-byte segments", wire, 100),
                                   ("re-framed in 200-byte records, 7-byte segments",
                                    reframe(wire, 200), 7)):
            with t.check("%s %s: block answers access_denied, SNI logged" % (name, label)):
                m = block.mark()
                s, code, _ = h.connect_tunnel(block.port, target)
                assert code == 200, "CONNECT -> %r" % code
                send_in_pieces(s, data, piece)
                rec = first_record(s)
                s.close()
                # Alert record: type 21, then level 2 (fatal), description 49.
                assert rec[:1] == b"\x15", "expected an alert record, got %r" % rec
                assert rec[5:6] == b"\x02", "expected a fatal alert, got %r" % rec
                ev = block.conn_event(target, since=m)
                assert ev and ev.get("sni") == SNI, "log sni %r" % (ev or {}).get("sni")
                assert ev.get("upstream_verdict") == "hostname-mismatch", ev.get("upstream_verdict")

            with t.check("%s %s: forward-untrusted answers with a ServerHello" % (name, label)):
                s, code, _ = h.connect_tunnel(fwd.port, target)
                assert code == 200, "CONNECT -> %r" % code
                send_in_pieces(s, data, piece)
                rec = first_record(s)
                s.close()
                # Handshake record whose first message is ServerHello (2).
                assert rec[:1] == b"\x16" and rec[5:6] == b"\x02", "got %r" % rec

    with t.check("a ClientHello over the 16 KiB cap is refused without a handshake"):
        s, code, _ = h.connect_tunnel(block.port, target)
        assert code == 200
        m = block.mark()
        # Handshake header announcing a 20 000-byte ClientHello.
        s.sendall(bytes([22, 3, 1, 0, 4, 1, 0, 0x4e, 0x20]))
        s.settimeout(10)
        got = s.recv(100)
        s.close()
        assert got == b"", "expected a close, got %r" % got
        ev = block.conn_event(target, since=m)
        assert ev and "larger than" in ev.get("close_reason", ""), (ev or {}).get("close_reason")


if __name__ == "__main__":
    h.run_test("35_clienthello", main)
