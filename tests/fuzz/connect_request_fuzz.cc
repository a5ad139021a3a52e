// libFuzzer target for the explicit proxy's request-head parser and the
// host:port parser behind it.
//
// parse_proxy_request() is called with everything received so far, so over
// growing prefixes of the input it must answer need_more until its first
// final answer, and that answer must be the one for the whole input. A done
// result must describe a well-formed head, and an authority must survive a
// round trip through HostPort::to_string().
#include "fuzz_check.h"
#include "net/address.h"
#include "net/connect_request.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

using sightline::net::HostKind;
using sightline::net::ParseResult;
using sightline::net::ParseStatus;
using sightline::net::ProxyRequest;

namespace {

void check_authority(const sightline::net::HostPort& hp) {
  FUZZ_CHECK(hp.port != 0);
  FUZZ_CHECK(!hp.host.empty());
  const auto again = sightline::net::parse_host_port(hp.to_string());
  FUZZ_CHECK(again.has_value());
  FUZZ_CHECK(again->host == hp.host);
  FUZZ_CHECK(again->port == hp.port);
  FUZZ_CHECK(again->kind == hp.kind);
}

void check_done(std::string_view data, const ProxyRequest& r, std::size_t max_head) {
  FUZZ_CHECK(r.method == "CONNECT");
  FUZZ_CHECK(r.head_bytes >= 4 && r.head_bytes <= data.size() && r.head_bytes <= max_head);
  FUZZ_CHECK(data.substr(r.head_bytes - 4, 4) == "\r\n\r\n");
  FUZZ_CHECK(r.version_minor == 0 || r.version_minor == 1);
  check_authority(r.authority);
}

bool same(const ProxyRequest& a, const ProxyRequest& b) {
  return a.method == b.method && a.target == b.target && a.authority.host == b.authority.host &&
         a.authority.port == b.authority.port && a.authority.kind == b.authority.kind &&
         a.version_minor == b.version_minor && a.headers == b.headers && a.head_bytes == b.head_bytes;
}

bool next_prefix(std::size_t& n, std::size_t size) {
  if (n >= size) return false;
  n = n < 96 ? n + 1 : n + 37;
  if (n > size) n = size;
  return true;
}

void check(std::string_view data, std::size_t max_head) {
  ProxyRequest whole_req;
  const ParseResult whole = sightline::net::parse_proxy_request(data, max_head, whole_req);
  if (whole.status == ParseStatus::done) check_done(data, whole_req, max_head);
  if (whole.status == ParseStatus::error) {
    FUZZ_CHECK(whole.http_status == 400 || whole.http_status == 405 || whole.http_status == 431 ||
               whole.http_status == 505);
    FUZZ_CHECK(!whole.reason.empty());
  }

  std::size_t n = 0;
  while (next_prefix(n, data.size())) {
    ProxyRequest r;
    const ParseResult res = sightline::net::parse_proxy_request(data.substr(0, n), max_head, r);
    if (res.status == ParseStatus::need_more) continue;
    FUZZ_CHECK(res.status == whole.status);
    FUZZ_CHECK(res.http_status == whole.http_status);
    FUZZ_CHECK(res.reason == whole.reason);
    if (res.status == ParseStatus::done) FUZZ_CHECK(same(r, whole_req));
    return;
  }
  FUZZ_CHECK(whole.status == ParseStatus::need_more);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  check(text, 16384);
  check(text, 64);
  // The authority parser on its own, when the input is short enough to be one.
  if (size <= 300) {
    if (const auto hp = sightline::net::parse_host_port(text)) check_authority(*hp);
  }
  return 0;
}
