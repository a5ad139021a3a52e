// libFuzzer target for the ClientHello parser.
//
// The input is raw wire bytes (the seed corpus holds real captures). The
// parser is stateless and is called again with everything received so far,
// so the invariant is monotonicity: over growing prefixes of the input it
// answers need_more until its first final answer, and that answer (status and
// extracted fields) is exactly the one for the whole input. Checked with the
// default size cap and with a small one.
#include "fuzz_check.h"
#include "tls/client_hello.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>

using sightline::tls::ClientHelloInfo;
using sightline::tls::HelloResult;
using sightline::tls::HelloStatus;

namespace {

bool same(const ClientHelloInfo& a, const ClientHelloInfo& b) {
  return a.sni == b.sni && a.sni_is_ip == b.sni_is_ip && a.alpn == b.alpn &&
         a.supported_versions == b.supported_versions && a.legacy_version == b.legacy_version &&
         a.message_bytes == b.message_bytes && a.record_bytes == b.record_bytes;
}

void check_done(const ClientHelloInfo& info, std::size_t size, std::size_t cap) {
  FUZZ_CHECK(info.message_bytes <= cap);
  FUZZ_CHECK(info.message_bytes + 5 <= info.record_bytes);
  FUZZ_CHECK(info.record_bytes <= size);
  for (char c : info.sni) FUZZ_CHECK(!(c >= 'A' && c <= 'Z'));
  FUZZ_CHECK(info.sni.empty() || info.sni.back() != '.');
  for (const auto& p : info.alpn) FUZZ_CHECK(!p.empty());
}

// Prefix lengths to try: every one at first (record and handshake headers),
// then a stride, then the whole input.
bool next_prefix(std::size_t& n, std::size_t size) {
  if (n >= size) return false;
  n = n < 64 ? n + 1 : n + 61;
  if (n > size) n = size;
  return true;
}

void check(std::span<const std::uint8_t> wire, std::size_t cap) {
  ClientHelloInfo whole_info;
  const HelloResult whole = sightline::tls::parse_client_hello(wire, whole_info, cap);
  if (whole.status == HelloStatus::done) check_done(whole_info, wire.size(), cap);
  else if (whole.status != HelloStatus::need_more) FUZZ_CHECK(!whole.reason.empty());

  std::size_t n = 0;
  while (next_prefix(n, wire.size())) {
    ClientHelloInfo info;
    const HelloResult r = sightline::tls::parse_client_hello(wire.first(n), info, cap);
    if (r.status == HelloStatus::need_more) {
      // The whole input cannot be complete when a prefix isn't... unless the
      // prefix is the whole input.
      if (n == wire.size()) FUZZ_CHECK(whole.status == HelloStatus::need_more);
      continue;
    }
    FUZZ_CHECK(r.status == whole.status);
    FUZZ_CHECK(r.reason == whole.reason);
    if (r.status == HelloStatus::done) FUZZ_CHECK(same(info, whole_info));
    return;
  }
  FUZZ_CHECK(whole.status == HelloStatus::need_more || wire.empty());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::uint8_t> wire(data, size);
  check(wire, sightline::tls::kDefaultMaxClientHello);
  check(wire, 300);
  return 0;
}
