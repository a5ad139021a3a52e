#include "net/connect_request.h"

#include <doctest/doctest.h>

using namespace sightline::net;

namespace {
ParseResult parse(std::string_view s, ProxyRequest& r, std::size_t max = 16384) {
  return parse_proxy_request(s, max, r);
}
}  // namespace

TEST_CASE("CONNECT with a name, IPv4 and IPv6 targets") {
  ProxyRequest r;
  auto res = parse("CONNECT Example.COM.:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\nextra", r);
  REQUIRE(res.status == ParseStatus::done);
  CHECK(r.authority.host == "example.com");
  CHECK(r.authority.port == 443);
  CHECK(r.authority.kind == HostKind::name);
  CHECK(r.head_bytes == std::string_view("CONNECT Example.COM.:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n").size());
  CHECK(r.headers.size() == 1);

  REQUIRE(parse("CONNECT 127.0.0.1:8443 HTTP/1.1\r\n\r\n", r).status == ParseStatus::done);
  CHECK(r.authority.kind == HostKind::ipv4);
  REQUIRE(parse("CONNECT 127.0.0.1.:8443 HTTP/1.1\r\n\r\n", r).status == ParseStatus::done);
  CHECK(r.authority.kind == HostKind::ipv4);
  CHECK(r.authority.host == "127.0.0.1");
  REQUIRE(parse("CONNECT cafe.example:443 HTTP/1.1\r\n\r\n", r).status == ParseStatus::done);
  CHECK(r.authority.kind == HostKind::name);
  REQUIRE(parse("CONNECT [::1]:443 HTTP/1.0\r\n\r\n", r).status == ParseStatus::done);
  CHECK(r.authority.kind == HostKind::ipv6);
  CHECK(r.authority.host == "::1");
  CHECK(r.authority.to_string() == "[::1]:443");
}

TEST_CASE("incomplete heads ask for more") {
  ProxyRequest r;
  CHECK(parse("CONNECT a.b:443 HTTP/1.1\r\nHost: a", r).status == ParseStatus::need_more);
  CHECK(parse("", r).status == ParseStatus::need_more);
}

TEST_CASE("errors carry the right status") {
  ProxyRequest r;
  auto check = [&](std::string_view in, int status) {
    auto res = parse(in, r);
    CAPTURE(in);
    CHECK(res.status == ParseStatus::error);
    CHECK(res.http_status == status);
    CHECK(!res.reason.empty());
  };
  check("GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n", 405);
  check("CONNECT example.com HTTP/1.1\r\n\r\n", 400);            // no port
  check("CONNECT example.com:0 HTTP/1.1\r\n\r\n", 400);          // port 0
  check("CONNECT example.com:99999 HTTP/1.1\r\n\r\n", 400);
  check("CONNECT exa mple.com:443 HTTP/1.1\r\n\r\n", 400);       // extra space splits the line
  check("CONNECT bad!host:443 HTTP/1.1\r\n\r\n", 400);
  check("CONNECT a.b:443 HTTP/1.1\nHost: x\r\n\r\n", 400);       // bare LF
  check("CONNECT a.b:443 HTTP/1.1\r\nHost: x\ry\r\n\r\n", 400);  // bare CR
  check("CONNECT a.b:443 HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400);
  check(std::string_view("CONNECT a.b:443 HTTP/1.1\r\nX: a\0b\r\n\r\n", 40), 400);
  check("CONNECT a.b:443 HTTP/2.0\r\n\r\n", 505);
  check("CONNECT a.b:443 FOO\r\n\r\n", 400);
  check("CONNECT a.b:443 HTTP/1.1\r\nBad Name: x\r\n\r\n", 400);
  check("CONNECT [zz]:443 HTTP/1.1\r\n\r\n", 400);
  check("CONNECT 127.1:443 HTTP/1.1\r\n\r\n", 400);          // resolver shorthand, not a name
  check("CONNECT 0x7f.0.0.1:443 HTTP/1.1\r\n\r\n", 400);
}

TEST_CASE("head size cap") {
  ProxyRequest r;
  std::string big = "CONNECT a.b:443 HTTP/1.1\r\nX: " + std::string(2000, 'a');
  auto res = parse(big, r, 1024);
  CHECK(res.status == ParseStatus::error);
  CHECK(res.http_status == 431);
}
