// ICAP message parser and serializer (src/icap/icap_message.*) and the pure
// parts of the client (URL, OPTIONS, Transfer-*). Byte vectors follow the
// examples of RFC 3507 section 4 (their Encapsulated offsets included).
#include "icap/icap_client.h"
#include "icap/icap_message.h"

#include <doctest/doctest.h>

#include <string>
#include <string_view>

using namespace sightline;
using namespace sightline::icap;

namespace {

// Feeds `wire` in pieces of `step` bytes; returns the final status and the
// bytes consumed in total.
ResponseParser::Status feed_in(ResponseParser& p, std::string_view wire, std::size_t step,
                               std::size_t* total = nullptr) {
  std::size_t done = 0;
  auto st = ResponseParser::Status::incomplete;
  while (done < wire.size()) {
    std::size_t n = std::min(step, wire.size() - done);
    std::size_t used = 0;
    st = p.feed({wire.data() + done, n}, &used);
    done += used;
    if (st != ResponseParser::Status::incomplete) break;
    REQUIRE(used == n);
  }
  if (total) *total = done;
  return st;
}

Response parse_ok(std::string_view wire, std::size_t step = 1 << 20) {
  ResponseParser p;
  std::size_t used = 0;
  auto st = feed_in(p, wire, step, &used);
  INFO("error: " << p.error());
  REQUIRE(st == ResponseParser::Status::complete);
  CHECK(used == wire.size());
  return p.take();
}

std::string parse_err(std::string_view wire, Limits limits = {}) {
  ResponseParser p(limits);
  auto st = feed_in(p, wire, 1 << 20);
  CHECK(st == ResponseParser::Status::failed);
  // Byte by byte the same input fails the same way.
  ResponseParser q(limits);
  CHECK(feed_in(q, wire, 1) == ResponseParser::Status::failed);
  CHECK(q.error() == p.error());
  return p.error();
}

const std::string kReqHead =  // RFC 3507 4.8.3: 231 bytes
    "GET /modified-path HTTP/1.1\r\n"
    "Host: www.origin-server.com\r\n"
    "Via: 1.0 icap-server.net (ICAP Example ReqMod Service 1.1)\r\n"
    "Accept: text/html, text/plain, image/gif\r\n"
    "Accept-Encoding: gzip, compress\r\n"
    "If-None-Match: \"xyzzy\", \"r2d2xxxx\"\r\n"
    "\r\n";

const std::string kReqmodAnswer =
    "ICAP/1.0 200 OK\r\n"
    "Date: Mon, 10 Jan 2000  09:55:21 GMT\r\n"
    "Server: ICAP-Server-Software/1.0\r\n"
    "Connection: close\r\n"
    "ISTag: \"W3E4R7U9-L2E4-2\"\r\n"
    "Encapsulated: req-hdr=0, null-body=231\r\n"
    "\r\n" +
    kReqHead;

const std::string kResHead =  // RFC 3507 4.9.3: 222 bytes
    "HTTP/1.1 200 OK\r\n"
    "Date: Mon, 10 Jan 2000  09:55:21 GMT\r\n"
    "Via: 1.0 icap.example.org (ICAP Example RespMod Service 1.1)\r\n"
    "Server: Apache/1.3.6 (Unix)\r\n"
    "ETag: \"63840-1ab7-378d415b\"\r\n"
    "Content-Type: text/html\r\n"
    "Content-Length: 92\r\n"
    "\r\n";

const std::string kRespmodAnswer =
    "ICAP/1.0 200 OK\r\n"
    "Date: Mon, 10 Jan 2000  09:55:21 GMT\r\n"
    "Server: ICAP-Server-Software/1.0\r\n"
    "Connection: close\r\n"
    "ISTag: \"W3E4R7U9-L2E4-2\"\r\n"
    "Encapsulated: res-hdr=0, res-body=222\r\n"
    "\r\n" +
    kResHead +
    "5c\r\n"
    "This is data that was returned by an origin server, but with\r\n"
    "value added by an ICAP server.\r\n"
    "0\r\n"
    "\r\n";

const std::string kOptionsAnswer =  // RFC 3507 4.10.2
    "ICAP/1.0 200 OK\r\n"
    "Date: Mon, 10 Jan 2000  09:55:21 GMT\r\n"
    "Methods: RESPMOD\r\n"
    "Service: FOO Tech Server 1.0\r\n"
    "ISTag: \"W3E4R7U9-L2E4-2\"\r\n"
    "Encapsulated: null-body=0\r\n"
    "Max-Connections: 1000\r\n"
    "Options-TTL: 7200\r\n"
    "Allow: 204\r\n"
    "Preview: 2048\r\n"
    "Transfer-Complete: asp, bat, exe, com\r\n"
    "Transfer-Ignore: html\r\n"
    "Transfer-Preview: *\r\n"
    "\r\n";

}  // namespace

TEST_CASE("icap: RFC 3507 REQMOD answer, whole and byte by byte") {
  for (std::size_t step : {std::size_t{1} << 20, std::size_t{1}, std::size_t{7}}) {
    Response r = parse_ok(kReqmodAnswer, step);
    CHECK(r.status == 200);
    CHECK(r.reason == "OK");
    CHECK(*r.find("istag") == "\"W3E4R7U9-L2E4-2\"");
    CHECK_FALSE(r.keep_alive());
    REQUIRE(r.encapsulated.size() == 2);
    CHECK(r.encapsulated[1].section == Section::null_body);
    CHECK(r.encapsulated[1].offset == 231);
    REQUIRE(r.http_request);
    CHECK_FALSE(r.http_response);
    CHECK(r.http_request->method == "GET");
    CHECK(r.http_request->target == "/modified-path");
    CHECK(r.http_request->authority == "www.origin-server.com");
    CHECK(r.http_request->headers.size() == 5);
    CHECK(r.raw_http_request == kReqHead);
    CHECK_FALSE(r.body_section);
    CHECK(r.body.empty());
  }
}

TEST_CASE("icap: RFC 3507 RESPMOD answer with a chunked body") {
  for (std::size_t step : {std::size_t{1} << 20, std::size_t{1}, std::size_t{3}}) {
    Response r = parse_ok(kRespmodAnswer, step);
    REQUIRE(r.http_response);
    CHECK(r.http_response->status == 200);
    CHECK(r.http_response->version == "HTTP/1.1");
    CHECK(r.http_response->headers.size() == 6);
    CHECK(r.body_section == Section::res_body);
    CHECK(r.body.size() == 92);
    CHECK(r.body.substr(0, 12) == "This is data");
    CHECK_FALSE(r.ieof);
  }
}

TEST_CASE("icap: OPTIONS answer and the cached fields") {
  Response r = parse_ok(kOptionsAnswer);
  std::string err;
  auto o = parse_options(r, &err);
  REQUIRE_MESSAGE(o, err);
  CHECK(o->methods == std::vector<std::string>{"RESPMOD"});
  CHECK(o->supports(Method::respmod));
  CHECK_FALSE(o->supports(Method::reqmod));
  CHECK(o->istag == "\"W3E4R7U9-L2E4-2\"");
  CHECK(o->preview == 2048u);
  CHECK(o->allow_204);
  CHECK(o->max_connections == 1000u);
  CHECK(o->ttl == std::chrono::seconds(7200));
  CHECK(transfer_for(*o, "/a/b/setup.EXE?x=1.html") == Transfer::complete);
  CHECK(transfer_for(*o, "/index.html") == Transfer::ignore);
  CHECK(transfer_for(*o, "/x.gif") == Transfer::preview);
  CHECK(transfer_for(*o, "/noext") == Transfer::preview);
  CHECK(transfer_for(*o, "/dir.html/file") == Transfer::preview);

  // Methods and ISTag are required; numbers must be numbers.
  auto without = [&](std::string_view field) {
    std::string s = kOptionsAnswer;
    auto at = s.find(field);
    s.erase(at, s.find("\r\n", at) + 2 - at);
    return parse_options(parse_ok(s), &err);
  };
  CHECK_FALSE(without("Methods:"));
  CHECK_FALSE(without("ISTag:"));
  std::string bad = kOptionsAnswer;
  bad.replace(bad.find("Preview: 2048"), 13, "Preview: 2k");
  CHECK_FALSE(parse_options(parse_ok(bad), &err));
  CHECK(err.find("Preview") != std::string::npos);
}

TEST_CASE("icap: 204, 100 Continue and what follows an answer") {
  Response r = parse_ok("ICAP/1.0 204 No Content\r\nISTag: \"x\"\r\n\r\n");
  CHECK(r.status == 204);
  CHECK(r.encapsulated.empty());
  r = parse_ok("ICAP/1.0 204 No Content\r\nEncapsulated: null-body=0\r\n\r\n");
  CHECK(r.encapsulated.size() == 1);

  // A 100 Continue is complete at its blank line; the bytes after it are not
  // consumed (they belong to the final answer).
  const std::string two = "ICAP/1.0 100 Continue\r\n\r\nICAP/1.0 204 No Content\r\n\r\n";
  ResponseParser p;
  std::size_t used = 0;
  REQUIRE(p.feed({two.data(), two.size()}, &used) == ResponseParser::Status::complete);
  CHECK(p.response().status == 100);
  CHECK(used == 25);
  p.reset();
  std::size_t used2 = 0;
  REQUIRE(p.feed({two.data() + used, two.size() - used}, &used2) == ResponseParser::Status::complete);
  CHECK(p.response().status == 204);
  CHECK(used + used2 == two.size());

  // Error statuses need no Encapsulated header.
  r = parse_ok("ICAP/1.0 404 ICAP Service not found\r\nConnection: close\r\n\r\n");
  CHECK(r.status == 404);
  CHECK(r.reason == "ICAP Service not found");
}

TEST_CASE("icap: ieof on the last chunk") {
  const std::string head = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n";
  const std::string base = "ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-body=" +
                           std::to_string(head.size()) + "\r\n\r\n" + head + "3\r\nabc\r\n";
  Response r = parse_ok(base + "0; ieof\r\n\r\n", 1);
  CHECK(r.ieof);
  CHECK(r.body == "abc");
  r = parse_ok(base + "0;ieof\r\n\r\n");
  CHECK(r.ieof);
  CHECK(parse_err(base + "0; foo\r\n\r\n") == "unsupported chunk extension");
  CHECK(parse_err(base + "0;\r\n\r\n") == "unsupported chunk extension");
  CHECK(parse_err(base + "3; ieof\r\nabc\r\n0\r\n\r\n") == "ieof on a non-final chunk");
}

TEST_CASE("icap: Encapsulated values") {
  std::string err;
  auto p = parse_encapsulated("req-hdr=0, res-hdr=137, res-body=296", &err);
  REQUIRE(p);
  CHECK(p->size() == 3);
  CHECK((*p)[1].section == Section::res_hdr);
  CHECK((*p)[2].offset == 296);
  CHECK(parse_encapsulated("null-body=0", &err));
  CHECK(parse_encapsulated("opt-body=0", &err));
  CHECK(parse_encapsulated("req-hdr=0,req-body=10", &err));
  for (const char* bad : {"", "req-hdr=0", "req-hdr=5, null-body=9", "res-hdr=0, req-hdr=10, null-body=20",
                          "req-hdr=0, null-body=0", "req-hdr=0, res-hdr=10, req-body=20", "foo=0",
                          "req-hdr=0, res-body=10, null-body=20", "req-hdr=x, null-body=1", "null-body=-1",
                          "res-hdr=0, res-hdr=5, res-body=9", "req-hdr=0, opt-body=9",
                          "req-hdr=0, res-hdr=1, res-body=2, null-body=3", "null-body=0,",
                          "req-hdr = 0, null-body=5", "req-hdr=0, null-body=99999999999999"}) {
    INFO(bad);
    CHECK_FALSE(parse_encapsulated(bad, &err));
    CHECK(err.rfind("Encapsulated: ", 0) == 0);
  }
}

TEST_CASE("icap: malformed answers are refused with a reason") {
  const std::string head = "HTTP/1.1 403 Forbidden\r\n\r\n";  // 26 bytes
  auto answer = [&](std::string enc, std::string rest) {
    return "ICAP/1.0 200 OK\r\nEncapsulated: " + enc + "\r\n\r\n" + rest;
  };
  CHECK(parse_err("HTTP/1.1 200 OK\r\n\r\n") == "not an ICAP response");
  CHECK(parse_err("ICAP/1.1 200 OK\r\n\r\n") == "malformed ICAP status line");
  CHECK(parse_err("ICAP/1.0 2000 OK\r\n\r\n") == "malformed ICAP status line");
  CHECK(parse_err("ICAP/1.0 099 x\r\n\r\n") == "invalid ICAP status code");
  CHECK(parse_err("ICAP/1.0 101 x\r\n\r\n") == "unexpected ICAP status 101");
  CHECK(parse_err("ICAP/1.0 204 OK\nISTag: x\r\n\r\n") == "ICAP head: bare LF in head");
  CHECK(parse_err("ICAP/1.0 204 OK\r\nISTag: x\r\r\n\r\n") == "ICAP head: bare CR in head");
  CHECK(parse_err("ICAP/1.0 204 OK\r\nISTag: x\r\n y\r\n\r\n") == "ICAP head: obsolete line folding");
  CHECK(parse_err("ICAP/1.0 204 OK\r\nISTag : x\r\n\r\n") ==
        "ICAP head: whitespace before the colon of a header field");
  CHECK(parse_err("ICAP/1.0 204 OK\r\nno colon\r\n\r\n") == "ICAP head: header line without a colon");
  CHECK(parse_err(std::string("ICAP/1.0 204 OK\r\nA: \0\r\n\r\n", 25)) == "ICAP head: NUL in head");
  CHECK(parse_err("ICAP/1.0 200 OK\r\nISTag: x\r\n\r\n") == "200 response without Encapsulated header");
  CHECK(parse_err("ICAP/1.0 200 OK\r\nEncapsulated: null-body=0\r\nEncapsulated: null-body=0\r\n\r\n") ==
        "more than one Encapsulated header");
  CHECK(parse_err(answer("bogus", "")) == "Encapsulated: entry without '='");
  // The head must fill its section exactly, in both directions.
  CHECK(parse_err(answer("res-hdr=0, null-body=27", head + "x")) ==
        "res-hdr does not match its Encapsulated offsets");
  CHECK(parse_err(answer("res-hdr=0, null-body=20", head)) ==
        "res-hdr does not match its Encapsulated offsets");
  CHECK(parse_err(answer("res-hdr=0, null-body=19", "HTTP/1.1 2x0 OK\r\n\r\n")) ==
        "encapsulated response head: malformed status line");
  CHECK(parse_err(answer("req-hdr=0, null-body=24", "GET / HTTP/2.0\r\nA: b\r\n\r\n")) ==
        "encapsulated request head: unsupported HTTP version");
  // Chunked body framing.
  const std::string b = head;
  CHECK(parse_err(answer("res-hdr=0, res-body=26", b + "zz\r\n")) == "invalid chunk size");
  CHECK(parse_err(answer("res-hdr=0, res-body=26", b + "\r\n")) == "invalid chunk size");
  CHECK(parse_err(answer("res-hdr=0, res-body=26", b + "00000000000000001\r\n")) == "invalid chunk size");
  CHECK(parse_err(answer("res-hdr=0, res-body=26", b + "3\r\nabcX")) == "chunk data not followed by CRLF");
  CHECK(parse_err(answer("res-hdr=0, res-body=26", b + "3\r\nabc\rX")) == "bare CR after a chunk");
  CHECK(parse_err(answer("res-hdr=0, res-body=26", b + "0\r\nX-T: 1\r\n\r\n")) ==
        "trailers after the last chunk");
  CHECK(parse_err(answer("res-hdr=0, res-body=26", b + "3\n\r\n")) ==
        "bare CR, LF or NUL in a chunk-size line");
}

TEST_CASE("icap: limits") {
  Limits small;
  small.max_icap_head = 64;
  small.max_http_heads = 30;
  small.max_body = 10;
  small.max_chunk_line = 8;
  CHECK(parse_err("ICAP/1.0 204 No Content\r\nX-Long: " + std::string(100, 'a') + "\r\n\r\n", small) ==
        "ICAP head exceeds the limit");
  CHECK(parse_err("ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-body=31\r\n\r\n", small) ==
        "encapsulated HTTP heads exceed the limit");
  const std::string ok = "ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-body=19\r\n\r\nHTTP/1.1 200 OK\r\n\r\n";
  CHECK(parse_err(ok + "b\r\n", small) == "encapsulated body exceeds the limit");
  CHECK(parse_err(ok + "5\r\n12345\r\n6\r\n", small) == "encapsulated body exceeds the limit");
  CHECK(parse_err(ok + "5;      ieof\r\n", small) == "chunk-size line too long");
  ResponseParser p(small);
  CHECK(feed_in(p, ok + "5\r\n12345\r\n5\r\n12345\r\n0\r\n\r\n", 1) == ResponseParser::Status::complete);
  CHECK(p.response().body == "1234512345");
  // After a failure nothing more is accepted.
  ResponseParser q;
  CHECK(q.feed({"X", 1}) == ResponseParser::Status::failed);
  CHECK(q.feed({"ICAP/1.0 204 x\r\n\r\n", 19}) == ResponseParser::Status::failed);
}

TEST_CASE("icap: absolute-form targets in encapsulated requests") {
  exchange::Head h;
  std::string err;
  REQUIRE(parse_http_head("GET https://Example.com:8443/a?b HTTP/1.1\r\nHost: example.com:8443\r\n\r\n", true, h, &err));
  CHECK(h.scheme == "https");
  CHECK(h.authority == "Example.com:8443");
  CHECK(h.target == "/a?b");
  REQUIRE(parse_http_head("GET http://h?q HTTP/1.0\r\n\r\n", true, h, &err));
  CHECK(h.target == "/?q");
  CHECK(h.version == "HTTP/1.0");
  CHECK_FALSE(parse_http_head("GET http:/// HTTP/1.1\r\n\r\n", true, h, &err));
  CHECK_FALSE(parse_http_head("GET  / HTTP/1.1\r\n\r\n", true, h, &err));
  REQUIRE(parse_http_head("HTTP/1.1 204\r\n\r\n", false, h, &err));
  CHECK(h.status == 204);
  CHECK(h.reason.empty());
}

TEST_CASE("icap: serializing RFC 3507 REQMOD and RESPMOD requests") {
  exchange::Head req;
  req.method = "GET";
  req.target = "/";
  req.version = "HTTP/1.1";
  req.headers = {{"Host", "www.origin-server.com"},
                 {"Accept", "text/html, text/plain"},
                 {"Accept-Encoding", "compress"},
                 {"Cookie", "ff39fk3jur@4ii0e02i"},
                 {"If-None-Match", "\"xyzzy\", \"r2d2xxxx\""}};
  Request r;
  r.method = Method::reqmod;
  r.uri = "icap://icap-server.net/server?arg=87";
  r.host = "icap-server.net";
  r.http_request = &req;
  r.allow_204 = false;
  WireRequest w = serialize(r);
  CHECK(w.first ==
        "REQMOD icap://icap-server.net/server?arg=87 ICAP/1.0\r\n"
        "Host: icap-server.net\r\n"
        "Encapsulated: req-hdr=0, null-body=170\r\n"
        "\r\n"
        "GET / HTTP/1.1\r\n"
        "Host: www.origin-server.com\r\n"
        "Accept: text/html, text/plain\r\n"
        "Accept-Encoding: compress\r\n"
        "Cookie: ff39fk3jur@4ii0e02i\r\n"
        "If-None-Match: \"xyzzy\", \"r2d2xxxx\"\r\n"
        "\r\n");
  CHECK(w.rest.empty());
  CHECK_FALSE(w.previewing);

  exchange::Head req2;
  req2.method = "GET";
  req2.target = "/origin-resource";
  req2.version = "HTTP/1.1";
  req2.headers = {{"Host", "www.origin-server.com"},
                  {"Accept", "text/html, text/plain, image/gif"},
                  {"Accept-Encoding", "gzip, compress"}};
  exchange::Head resp;
  resp.status = 200;
  resp.reason = "OK";
  resp.version = "HTTP/1.1";
  resp.headers = {{"Date", "Mon, 10 Jan 2000 09:52:22 GMT"},
                  {"Server", "Apache/1.3.6 (Unix)"},
                  {"ETag", "\"63840-1ab7-378d415b\""},
                  {"Content-Type", "text/html"},
                  {"Content-Length", "51"}};
  Request rr;
  rr.method = Method::respmod;
  rr.uri = "icap://icap.example.org/satisf";
  rr.host = "icap.example.org";
  rr.http_request = &req2;
  rr.http_response = &resp;
  rr.body = "This is data that was returned by an origin server.";
  rr.allow_204 = false;
  w = serialize(rr);
  const std::string expect_head =
      "RESPMOD icap://icap.example.org/satisf ICAP/1.0\r\n"
      "Host: icap.example.org\r\n"
      "Encapsulated: req-hdr=0, res-hdr=137, res-body=296\r\n"
      "\r\n";
  CHECK(w.first.substr(0, expect_head.size()) == expect_head);
  CHECK(w.first.size() == expect_head.size() + 296 + 4 + 51 + 2 + 5);
  CHECK(w.first.substr(expect_head.size() + 296) ==
        "33\r\nThis is data that was returned by an origin server.\r\n0\r\n\r\n");

  // OPTIONS.
  Request o;
  o.uri = "icap://127.0.0.1:1344/echo";
  o.host = "127.0.0.1:1344";
  CHECK(serialize(o).first ==
        "OPTIONS icap://127.0.0.1:1344/echo ICAP/1.0\r\nHost: 127.0.0.1:1344\r\nEncapsulated: null-body=0\r\n\r\n");
}

TEST_CASE("icap: preview") {
  exchange::Head req;
  req.method = "POST";
  req.scheme = "https";
  req.authority = "bank.example";
  req.target = "/upload";
  req.version = "HTTP/2";  // sent as HTTP/1.1 with Host and an absolute URL
  req.headers = {{"content-type", "text/plain"}, {"x-evil", "a\r\nInjected: 1"}};
  Request r;
  r.method = Method::reqmod;
  r.uri = "icap://i/s";
  r.host = "i:1344";
  r.http_request = &req;
  r.body = "0123456789";
  const std::string http = "POST https://bank.example/upload HTTP/1.1\r\nHost: bank.example\r\ncontent-type: text/plain\r\n\r\n";

  r.preview = 4;
  WireRequest w = serialize(r);
  CHECK(w.previewing);
  CHECK(w.first.find("Allow: 204\r\nPreview: 4\r\n") != std::string::npos);
  CHECK(w.first.find("Encapsulated: req-hdr=0, req-body=" + std::to_string(http.size()) + "\r\n") != std::string::npos);
  CHECK(w.first.find("Injected") == std::string::npos);
  CHECK(w.first.substr(w.first.size() - http.size() - 14) == http + "4\r\n0123\r\n0\r\n\r\n");
  CHECK(w.rest == "6\r\n456789\r\n0\r\n\r\n");

  r.preview = 10;  // the whole body fits: ieof, nothing left
  w = serialize(r);
  CHECK_FALSE(w.previewing);
  CHECK(w.first.find("Preview: 10\r\n") != std::string::npos);
  CHECK(w.first.substr(w.first.size() - 26) == "a\r\n0123456789\r\n0; ieof\r\n\r\n");
  CHECK(w.rest.empty());

  r.preview = 4096;  // announced as the body size
  w = serialize(r);
  CHECK(w.first.find("Preview: 10\r\n") != std::string::npos);

  r.preview = 0;  // headers only first
  w = serialize(r);
  CHECK(w.previewing);
  CHECK(w.first.find("Preview: 0\r\n") != std::string::npos);
  CHECK(w.first.substr(w.first.size() - http.size() - 5) == http + "0\r\n\r\n");
  CHECK(w.rest == "a\r\n0123456789\r\n0\r\n\r\n");

  r.body = {};  // no body: no preview, null-body
  w = serialize(r);
  CHECK(w.first.find("Preview") == std::string::npos);
  CHECK(w.first.find("null-body=") != std::string::npos);
}

TEST_CASE("icap: service URLs") {
  std::string err;
  auto u = parse_service_url("icap://127.0.0.1:1345/echo", &err);
  REQUIRE(u);
  CHECK(u->host == "127.0.0.1");
  CHECK(u->port == 1345);
  CHECK(u->service == "echo");
  CHECK(u->uri() == "icap://127.0.0.1:1345/echo");
  u = parse_service_url("ICAP://Scanner.Example/av?mode=strict", &err);
  REQUIRE(u);
  CHECK(u->host == "scanner.example");
  CHECK(u->port == 1344);
  CHECK(u->uri() == "icap://scanner.example:1344/av?mode=strict");
  u = parse_service_url("icap://[::1]/s", &err);
  REQUIRE(u);
  CHECK(u->host == "::1");
  CHECK(u->host_header() == "[::1]:1344");
  for (const char* bad : {"http://x/s", "icap://x", "icap://x/", "icap://x:0/s", "icap://x:99999/s",
                          "icap:///s", "icap://x/a b", "icaps://x/s"}) {
    INFO(bad);
    CHECK_FALSE(parse_service_url(bad, &err));
  }
}
