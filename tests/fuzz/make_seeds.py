#!/usr/bin/env python3
"""Writes the seed corpora of warc_reader, config, policy and h2_frames
(tests/fuzz/corpus/<target>/) from the shipped example files and from
records and frames built here, in each target's input format (see the
comment at the top of each *_fuzz.cc).

    tests/fuzz/make_seeds.py          # rewrites those four directories' generated seeds

Files it does not write (crash reproducers kept as regression inputs) are
left alone. Rerun after changing a target's input format, and commit the
result.
"""
import base64
import gzip
import hashlib
import json
import os
import re
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "tests", "fuzz", "corpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def read(*path):
    with open(os.path.join(ROOT, *path), "rb") as f:
        return f.read()


# --- WARC records, as src/archive/segment.cc writes them --------------------

def sha256(data):
    return hashlib.sha256(data).digest()


def warc_digest(data):
    return "sha256:" + base64.b32encode(sha256(data)).decode()


def warc_record(fields, block, seq, prev_chain):
    """One record with its sightline fields; returns (bytes, chain value)."""
    head = b"WARC/1.1\r\n"
    for name, value in fields + [("WARC-Sightline-Seq", str(seq)), ("Content-Length", str(len(block)))]:
        head += f"{name}: {value}\r\n".encode()
    chain = sha256(prev_chain + sha256(head + b"\r\n"))  # record digest: the header, no chain line
    head += b"WARC-Sightline-Chain: sha256:" + chain.hex().encode() + b"\r\n"
    return head + b"\r\n" + block + b"\r\n\r\n", chain


def exchange_records():
    date = "2026-11-27T01:02:03.123456Z"
    info_id = "<urn:uuid:6f1c2a52-8d8e-4c6f-9a43-0b7a3f6f0a01>"
    req_id = "<urn:uuid:6f1c2a52-8d8e-4c6f-9a43-0b7a3f6f0a02>"
    resp_id = "<urn:uuid:6f1c2a52-8d8e-4c6f-9a43-0b7a3f6f0a03>"
    meta_id = "<urn:uuid:6f1c2a52-8d8e-4c6f-9a43-0b7a3f6f0a04>"
    uri = "https://api.bank.example/acct/1"
    info = (b"software: sightline/0.1.0\r\nformat: WARC File Format 1.1\r\n"
            b"sightline-writer: proxy1\r\nsightline-segment-seq: 1\r\n"
            b"sightline-previous-segment: \r\nsightline-chain-start: sha256:" + b"0" * 64 + b"\r\n")
    req = b"POST /acct/1 HTTP/1.1\r\nHost: api.bank.example\r\nContent-Length: 12\r\n\r\ntransfer=100"
    resp = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nok 1"
    meta = json.dumps({"user": "jdoe", "client": "10.1.1.1:5000"}).encode()
    out, chain = [], bytes(32)
    records = [
        ([("WARC-Type", "warcinfo"), ("WARC-Record-ID", info_id), ("WARC-Date", date),
          ("WARC-Filename", "proxy1-20261127T010203Z-000001.warc.gz"),
          ("Content-Type", "application/warc-fields"), ("WARC-Block-Digest", warc_digest(info))], info),
        ([("WARC-Type", "request"), ("WARC-Record-ID", req_id), ("WARC-Date", date),
          ("WARC-Target-URI", uri), ("WARC-Warcinfo-ID", info_id),
          ("Content-Type", "application/http; msgtype=request"),
          ("WARC-Block-Digest", warc_digest(req)),
          ("WARC-Payload-Digest", warc_digest(req.split(b"\r\n\r\n", 1)[1])),
          ("WARC-Concurrent-To", resp_id)], req),
        ([("WARC-Type", "response"), ("WARC-Record-ID", resp_id), ("WARC-Date", date),
          ("WARC-Target-URI", uri), ("WARC-Warcinfo-ID", info_id),
          ("Content-Type", "application/http; msgtype=response"),
          ("WARC-Block-Digest", warc_digest(resp)),
          ("WARC-Payload-Digest", warc_digest(resp.split(b"\r\n\r\n", 1)[1])),
          ("WARC-Concurrent-To", req_id), ("WARC-IP-Address", "192.0.2.10")], resp),
        ([("WARC-Type", "metadata"), ("WARC-Record-ID", meta_id), ("WARC-Date", date),
          ("WARC-Target-URI", uri), ("WARC-Warcinfo-ID", info_id), ("WARC-Concurrent-To", req_id),
          ("Content-Type", "application/json"), ("WARC-Block-Digest", warc_digest(meta))], meta),
    ]
    for seq, (fields, block) in enumerate(records, 1):
        rec, chain = warc_record(fields, block, seq, chain)
        out.append(rec)
    return out, chain


def manifest(records, chain_head):
    m = {
        "format": "sightline-archive-manifest/2",
        "segment": "proxy1-20261127T010203Z-000001.warc.gz",
        "sha256": "ab" * 32,
        "size": 1234,
        "writer": "proxy1",
        "segment_seq": 1,
        "previous_segment": None,
        "chain_start": "sha256:" + "00" * 32,
        "chain_head": "sha256:" + chain_head.hex(),
        "first_seq": 1,
        "record_count": len(records),
        "records_file": "proxy1-20261127T010203Z-000001.warc.gz.records.tsv",
        "records_sha256": "cd" * 32,
        "created": "2026-11-27T01:02:03.123456Z",
        "sealed": "2026-11-27T02:02:03.123456Z",
        "key_fingerprint": "sha256:" + "ef" * 32,
        "shipped": {"journal_bytes": 42, "files": [
            {"file": "proxy1-20261126T010203Z-000009.warc.gz", "key": "proxies/proxy1/x.warc.gz",
             "version_id": "v1", "sha256": "12" * 32}]},
    }
    return json.dumps(m, indent=1) + "\n"


def warc_seeds(t):
    records, head = exchange_records()
    members = [gzip.compress(r, mtime=0) for r in records]
    write(t, "records-exchange", b"\x00" + b"\x00".join(records))  # stored members
    write(t, "records-fast", b"\x04" + records[2])
    write(t, "records-zlib", b"\x08" + records[1])
    tampered = records[2].replace(b"ok 1", b"ok 2")
    write(t, "records-bad-block-digest", b"\x0c" + tampered)
    write(t, "records-not-warc", b"\x00HTTP/1.1 200 OK\r\n\r\n\x00WARC/1.1\r\nContent-Length: 3\r\n\r\nabc")
    write(t, "segment-exchange", b"\x01" + b"".join(members))
    write(t, "segment-torn", b"\x01" + b"".join(members)[:-20])
    write(t, "segment-resync", bytes([(10 << 2) | 1]) + b"garbage..." + members[0] + b"x" + members[1])
    # Regression: a record ending inside its chain line threw out of record_digest().
    write(t, "regress-cut-in-chain-line", b"\x00WARC/1.1\r\nWARC-Sightline-Chain: sha256:5")
    write(t, "manifest-v2", b"\x02" + manifest(records, head).encode())
    v1 = json.loads(manifest(records, head))
    v1["format"] = "sightline-archive-manifest/1"
    for k in ("first_seq", "record_count", "records_file", "records_sha256", "shipped"):
        del v1[k]
    v1["records"] = [{"seq": 1, "offset": 0, "length": 100, "id": "<urn:uuid:1>", "type": "warcinfo",
                      "digest": "sha256:" + "11" * 32}]
    write(t, "manifest-v1", b"\x02" + json.dumps(v1).encode())


# --- configuration -----------------------------------------------------------

def config_seeds(t):
    example = read("deploy", "sightline.example.toml").decode()
    write(t, "example.toml", example)
    # The example without comments, and with its commented-out tables on.
    bare = "\n".join(l for l in (re.sub(r"\s+#.*$", "", l) for l in example.splitlines())
                     if l.strip() and not l.lstrip().startswith("#")) + "\n"
    write(t, "example-bare.toml", bare)
    write(t, "empty.toml", "")
    write(t, "listeners.toml", """workers = 2
[[listener]]
address = "[::1]:3128"
mode = "explicit"
proxy_protocol = "v2"
[[listener]]
address = "127.0.0.1:8443"
mode = "static"
target = "origin.example:443"
[[listener]]
address = "0.0.0.0:3130"
mode = "tproxy"
spoof_source = true
[ca]
cert = "ca.crt"
key = "ca.key"
""")
    write(t, "icap-services.toml", """[icap]
fail = "open"
max_body = 1024
[[icap.service]]
name = "urlfilter"
url = "icap://10.1.2.3:1344/url_check"
method = "reqmod"
fail = "closed"
[[icap.service]]
name = "av"
url = "icap://[2001:db8::4]/avscan"
method = "respmod"
""")
    write(t, "archive-s3.toml", """[archive]
dir = "/var/lib/sightline/archive"
key = "/etc/sightline/archive.key"
writer_id = "proxy1"
sync = "interval"
compression = 9
[archive.s3]
url = "https://s3.eu-west-1.amazonaws.com/acme-archive/proxies"
region = "eu-west-1"
lock_mode = "governance"
retention = "2557d"
delete_local_after = "7d"
""")
    write(t, "identity-pcap.toml", """[identity]
credentials = "/etc/sightline/users"
user_map = "/etc/sightline/user-map"
groups = "/etc/sightline/groups"
realm = "sightline"
cache_ttl = "5m"
[pcap]
dir = "/var/lib/sightline/pcap"
port_map = ["443:80", "8443:8080"]
over_ip = "127.0.0.1:57012"
[events]
socket = "/run/sightline/events.sock"
mode = "0600"
[policy]
files = ["a.toml", "b.toml"]
auto_bypass_threshold = 3
auto_bypass_window = "5m"
""")
    write(t, "bad-syntax.toml", "[upstream\nalpn = [\"h2\", \n")


# --- policy ------------------------------------------------------------------

def policy_seeds(t):
    default = read("policies", "default.toml")
    finance = read("policies", "lists", "finance.txt")
    queries = (b"www.slack.com 192.0.2.1 443 10.0.0.1 alice supervised\n"
               b"BLOCK.example. 203.0.113.9 443\n"
               b"b\xc3\xbccher.example\n"
               b"- 2001:db8:bad::1 993 2001:db8:6e57::5\n"
               b"online.bank.example - 8445 198.51.100.3\n")
    write(t, "default", default + b"\x00" + finance + b"\x00" + queries)
    write(t, "default-no-list", default)
    write(t, "small-rules", b"""[policy]
default = "bypass"
auto_bypass = false
[[rule]]
action = "inspect"
domains = ["*.corp.example", ".intranet.example", "exact.example"]
ports = [443, "8000-8100"]
users = ["alice"]
archive = true
icap = ["av"]
[[rule]]
name = "clients"
action = "block"
clients = ["10.0.0.0/8", "::ffff:192.0.2.0/120"]
hooks = []
on_invalid = "forward-untrusted"
\x00\x00a.corp.example 10.1.2.3 8050 10.9.9.9 alice
x.intranet.example
""")
    write(t, "list-file", b"""[[rule]]
action = "bypass"
domains_files = ["lists/a.txt", "../b.txt"]
\x00# list
bank.example
*.pay.example   # comment
.xn--bcher-kva.example
\x00www.pay.example
BANK.EXAMPLE.
""")


# --- HTTP/2 ------------------------------------------------------------------

def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 2, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIO = 1, 1, 4, 8, 0x20


def hpack(fields):
    """Literal fields without indexing, new names, no Huffman (RFC 7541 6.2.2)."""
    out = b""
    for name, value in fields:
        n, v = name.encode(), value.encode()
        assert len(n) < 127 and len(v) < 127
        out += b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v
    return out


def request(stream, method="GET", path="/", extra=(), end=True):
    fields = [(":method", method), (":scheme", "https"), (":authority", "www.example.com"), (":path", path)]
    return frame(HEADERS, END_HEADERS | (END_STREAM if end else 0), stream, hpack(fields + list(extra)))


def response(stream, status="200", extra=(), end=False):
    return frame(HEADERS, END_HEADERS | (END_STREAM if end else 0), stream, hpack([(":status", status)] + list(extra)))


def op(code, payload=b""):
    return bytes([code]) + struct.pack(">H", len(payload)) + payload


CLIENT, ORIGIN, CLIENT_END, ORIGIN_END, DRAIN_CLIENT, DRAIN_ORIGIN, ICAP = 0, 1, 2, 3, 4, 5, 6
CLEAN = 8
SETTINGS_ACK = frame(SETTINGS, ACK, 0)


def icap_answer(kind, flags, head=b"", body=b""):
    return op(ICAP, bytes([kind, flags]) + head + body)


def h2_seeds(t):
    get_200 = (op(CLIENT, SETTINGS_ACK + request(1)) +
               op(ORIGIN, SETTINGS_ACK + response(1, extra=[("content-length", "5")]) +
                  frame(DATA, END_STREAM, 1, b"hello")))
    write(t, "get-200", b"\x00" + get_200)
    write(t, "post-trailers", b"\x20" + op(CLIENT, request(1, "POST", "/upload", [("content-type", "text/plain")], end=False) +
                                           frame(DATA, 0, 1, b"abc") +
                                           frame(HEADERS, END_HEADERS | END_STREAM, 1, hpack([("x-checksum", "1")]))) +
          op(ORIGIN, response(1) + frame(DATA, 0, 1, b"ok") +
             frame(HEADERS, END_HEADERS | END_STREAM, 1, hpack([("grpc-status", "0")]))) +
          op(CLIENT_END | CLEAN))
    write(t, "two-streams-rst-goaway", b"\x00" + op(CLIENT, request(1) + request(3, path="/b")) +
          op(ORIGIN, response(1, end=True) + frame(RST_STREAM, 0, 3, struct.pack(">I", 7))) +
          op(CLIENT, frame(PING, 0, 0, b"12345678") + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1000)) +
             frame(PRIORITY, 0, 5, struct.pack(">IB", 1, 16)) + frame(RST_STREAM, 0, 1, struct.pack(">I", 8))) +
          op(ORIGIN, frame(GOAWAY, 0, 0, struct.pack(">II", 1, 0))))
    padded = frame(DATA, PADDED | END_STREAM, 1, b"\x04body" + b"\x00" * 4)
    write(t, "padded-priority", b"\x00" + op(CLIENT, frame(HEADERS, END_HEADERS | PRIO, 1,
                                                        struct.pack(">IB", 0, 200) + hpack(
                                                            [(":method", "PUT"), (":scheme", "https"),
                                                             (":authority", "a.example"), (":path", "/x")])) + padded) +
          op(ORIGIN, response(1, "204", end=True)))
    write(t, "continuation", b"\x00" + op(CLIENT, frame(HEADERS, END_STREAM, 1, hpack([(":method", "GET"), (":scheme", "https")])) +
                                          frame(CONTINUATION, END_HEADERS, 1, hpack([(":authority", "b.example"), (":path", "/")]))) +
          op(ORIGIN, response(1, "100") + response(1, "304", end=True)))
    write(t, "origin-ends-early", b"\x00" + op(CLIENT, request(1) + request(3)) +
          op(ORIGIN, response(1, extra=[("content-length", "10")]) + frame(DATA, 0, 1, b"12345")) + op(ORIGIN_END))
    write(t, "refused", b"\x10" + op(CLIENT, request(1) + request(3, "HEAD")) + op(CLIENT_END | CLEAN))
    # Small windows and queues that drain only when told to.
    big = b"x" * 1500
    write(t, "backpressure", b"\x08" + op(CLIENT, request(1, "POST", end=False) + frame(DATA, 0, 1, big)) +
          op(DRAIN_ORIGIN) + op(ORIGIN, response(1) + frame(DATA, 0, 1, big) + frame(DATA, END_STREAM, 1, big)) +
          op(DRAIN_CLIENT) + op(CLIENT, frame(DATA, END_STREAM, 1, b"end")) + op(DRAIN_ORIGIN) + op(DRAIN_CLIENT))
    # ICAP: REQMOD modified, then RESPMOD answering with a block page.
    write(t, "icap-reqmod-modified", b"\x01" + op(CLIENT, request(1, "POST", end=False) + frame(DATA, END_STREAM, 1, b"secret")) +
          icap_answer(1, 2, b"POST /scrubbed HTTP/1.1\r\nHost: www.example.com\r\nX-Scanned: yes\r\n\r\n", b"*****") +
          op(ORIGIN, response(1, end=True)))
    expect = op(CLIENT, request(1, "POST", extra=[("expect", "100-continue")], end=False))
    write(t, "icap-reqmod-respond", b"\x41" + expect + op(CLIENT, frame(DATA, END_STREAM, 1, b"x" * 10)) +
          icap_answer(2, 2, b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/html\r\n\r\n", b"<h1>blocked</h1>"))
    write(t, "icap-reqmod-too-large", b"\x41" + expect + op(CLIENT, frame(DATA, END_STREAM, 1, b"x" * 100)) +
          op(ORIGIN, response(1, "201", end=True)))
    write(t, "icap-respmod", b"\x02" + get_200 + icap_answer(1, 2, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", b"HELLO") +
          op(CLIENT, request(3)) + op(ORIGIN, response(3, end=True)) + op(CLIENT, request(5)) +
          op(ORIGIN, response(5) + frame(DATA, END_STREAM, 5, b"virus")) + icap_answer(3, 0))
    # Regression: the final response after 1xx heads was taken for trailers.
    write(t, "regress-final-after-103", b"\x20" + op(CLIENT, request(1)) +
          op(ORIGIN, response(1, "103", extra=[("link", "</s.css>; rel=preload")]) + response(1, "200") +
             frame(DATA, END_STREAM, 1, b"hello")))
    write(t, "icap-unavailable", b"\x07" + get_200)
    write(t, "icap-unavailable-open", b"\x87" + get_200)


def main():
    if len(sys.argv) > 1:
        print(__doc__)
        return 2
    warc_seeds("warc_reader")
    config_seeds("config")
    policy_seeds("policy")
    h2_seeds("h2_frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
