// libFuzzer target for the PROXY protocol header parser, versions 1 and 2.
//
// Every input is parsed as a v1 header and as a v2 header (with the default
// 4096-byte limit and with a 40-byte one), first whole, then byte by byte as
// a reader would see it arrive: called with each growing prefix, the parser
// must answer need_more until its first final answer, which must be the
// answer for the whole input (same status, reason and header), and a header
// must be done exactly when its last byte has arrived. A done header is
// checked for consistency, and the whole-input answer is compared with a
// plain reference reading of the spec written independently below. From
// inputs of 40 bytes or more, v1 lines with TCP6 addresses in every textual
// form (compressed, padded, upper case, dotted tail) and a TCP4 line are also
// built and checked the same way.
#include "fuzz_check.h"
#include "net/proxy_protocol.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

using sightline::net::ProxyHeader;
using sightline::net::ProxyParseResult;
using sightline::net::ProxyParseStatus;
using sightline::net::ProxyProtocolVersion;

namespace {

using Span = std::span<const std::uint8_t>;

bool same_storage(const sockaddr_storage& a, const sockaddr_storage& b) {
  return std::memcmp(&a, &b, sizeof a) == 0;
}

bool same(const ProxyHeader& a, const ProxyHeader& b) {
  return a.local == b.local && a.header_bytes == b.header_bytes && same_storage(a.source, b.source) &&
         same_storage(a.destination, b.destination);
}

// What a reference reading of the whole input says.
struct Expected {
  enum Kind { accept, reject, undecided } kind = undecided;  // undecided: need_more or error
  bool local = false;
  std::size_t header_bytes = 0;
  int family = AF_UNSPEC;
  unsigned char src[16] = {}, dst[16] = {};
  std::uint16_t sport = 0, dport = 0;  // host order
};

// The address and port of a filled sockaddr_storage, checking its family.
void expect_addr(const sockaddr_storage& ss, int family, const unsigned char* addr, std::uint16_t port) {
  FUZZ_CHECK(ss.ss_family == family);
  if (family == AF_INET) {
    sockaddr_in sin;
    std::memcpy(&sin, &ss, sizeof sin);
    FUZZ_CHECK(std::memcmp(&sin.sin_addr, addr, 4) == 0);
    FUZZ_CHECK(ntohs(sin.sin_port) == port);
  } else {
    sockaddr_in6 sin6;
    std::memcpy(&sin6, &ss, sizeof sin6);
    FUZZ_CHECK(std::memcmp(&sin6.sin6_addr, addr, 16) == 0);
    FUZZ_CHECK(ntohs(sin6.sin6_port) == port);
    FUZZ_CHECK(sin6.sin6_flowinfo == 0 && sin6.sin6_scope_id == 0);
  }
}

std::optional<std::uint16_t> ref_port(std::string_view s) {
  if (s.empty() || s.size() > 5 || (s.size() > 1 && s[0] == '0')) return std::nullopt;
  unsigned v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<unsigned>(c - '0');
  }
  if (v > 65535) return std::nullopt;
  return static_cast<std::uint16_t>(v);
}

Expected ref_v1(std::string_view data) {
  Expected e;
  const std::size_t eol = data.substr(0, 107).find("\r\n");
  if (eol == std::string_view::npos) {
    if (data.size() >= 107) e.kind = Expected::reject;
    return e;
  }
  e.kind = Expected::reject;
  const std::string_view line = data.substr(0, eol);
  if (line.find_first_of("\r\n") != std::string_view::npos) return e;
  std::vector<std::string_view> f;
  for (std::size_t start = 0;;) {
    const std::size_t sp = line.find(' ', start);
    f.push_back(line.substr(start, sp == std::string_view::npos ? std::string_view::npos : sp - start));
    if (sp == std::string_view::npos) break;
    start = sp + 1;
  }
  if (f[0] != "PROXY" || f.size() < 2) return e;
  e.header_bytes = eol + 2;
  if (f[1] == "UNKNOWN") {
    e.kind = Expected::accept;
    e.local = true;
    return e;
  }
  if (f.size() != 6 || (f[1] != "TCP4" && f[1] != "TCP6")) return e;
  e.family = f[1] == "TCP4" ? AF_INET : AF_INET6;
  if (f[2].find('\0') != std::string_view::npos || f[3].find('\0') != std::string_view::npos) return e;
  const std::string src(f[2]), dst(f[3]);
  if (inet_pton(e.family, src.c_str(), e.src) != 1 || inet_pton(e.family, dst.c_str(), e.dst) != 1) return e;
  const auto sp = ref_port(f[4]), dp = ref_port(f[5]);
  if (!sp || !dp) return e;
  e.sport = *sp;
  e.dport = *dp;
  e.kind = Expected::accept;
  return e;
}

Expected ref_v2(Span d, std::size_t max) {
  static const std::uint8_t sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
  Expected e;
  for (std::size_t i = 0; i < 12 && i < d.size(); ++i)
    if (d[i] != sig[i]) e.kind = Expected::reject;
  if (e.kind == Expected::reject || d.size() < 16) return e;
  e.kind = Expected::reject;
  const unsigned version = d[12] >> 4, command = d[12] & 0x0fU;
  if (version != 2 || command > 1) return e;
  e.local = command == 0;
  std::size_t addr_len = 0;
  const unsigned fam = d[13];
  if (fam == 0x11 || fam == 0x12) addr_len = 12;
  else if (fam == 0x21 || fam == 0x22) addr_len = 36;
  else if (fam == 0x31 || fam == 0x32) addr_len = 216;
  else if (fam != 0x00) return e;
  if (!e.local && fam != 0x11 && fam != 0x21) return e;
  const std::size_t len = static_cast<std::size_t>(d[14]) * 256 + d[15];
  if (len < addr_len || 16 + len > max) return e;
  e.header_bytes = 16 + len;
  if (d.size() < e.header_bytes) {
    e.kind = Expected::undecided;
    return e;
  }
  for (std::size_t pos = 16 + addr_len; pos != e.header_bytes;) {
    if (e.header_bytes - pos < 3) return e;
    const std::size_t vlen = static_cast<std::size_t>(d[pos + 1]) * 256 + d[pos + 2];
    if (pos + 3 + vlen > e.header_bytes) return e;
    pos += 3 + vlen;
  }
  e.kind = Expected::accept;
  if (!e.local) {
    e.family = fam == 0x11 ? AF_INET : AF_INET6;
    const std::size_t a = e.family == AF_INET ? 4 : 16;
    std::memcpy(e.src, &d[16], a);
    std::memcpy(e.dst, &d[16 + a], a);
    e.sport = static_cast<std::uint16_t>(d[16 + 2 * a] * 256 + d[16 + 2 * a + 1]);
    e.dport = static_cast<std::uint16_t>(d[16 + 2 * a + 2] * 256 + d[16 + 2 * a + 3]);
  }
  return e;
}

void check_against_reference(const ProxyParseResult& res, const ProxyHeader& h, const Expected& e) {
  switch (e.kind) {
    case Expected::accept:
      FUZZ_CHECK(res.status == ProxyParseStatus::done);
      FUZZ_CHECK(h.header_bytes == e.header_bytes);
      FUZZ_CHECK(h.local == e.local);
      if (e.local) {
        FUZZ_CHECK(h.source.ss_family == AF_UNSPEC && h.destination.ss_family == AF_UNSPEC);
      } else {
        expect_addr(h.source, e.family, e.src, e.sport);
        expect_addr(h.destination, e.family, e.dst, e.dport);
      }
      break;
    case Expected::reject:
      FUZZ_CHECK(res.status == ProxyParseStatus::error);
      break;
    case Expected::undecided:
      FUZZ_CHECK(res.status != ProxyParseStatus::done);
      break;
  }
}

void check(Span data, ProxyProtocolVersion version, std::size_t max) {
  ProxyHeader whole_h;
  whole_h.header_bytes = 0xdead;
  const ProxyParseResult whole = sightline::net::parse_proxy_header(data, version, whole_h, max);
  if (whole.status == ProxyParseStatus::error) FUZZ_CHECK(!whole.reason.empty());
  if (whole.status != ProxyParseStatus::error) FUZZ_CHECK(whole.reason.empty());
  if (whole.status != ProxyParseStatus::done) FUZZ_CHECK(whole_h.header_bytes == 0xdead);  // untouched
  if (whole.status == ProxyParseStatus::done) {
    FUZZ_CHECK(whole_h.header_bytes <= data.size());
    FUZZ_CHECK(whole_h.header_bytes <= (version == ProxyProtocolVersion::v1 ? 107 : max));
  }
  if (version == ProxyProtocolVersion::v1) {
    const std::string_view text(reinterpret_cast<const char*>(data.data()), data.size());
    check_against_reference(whole, whole_h, ref_v1(text));
  } else {
    check_against_reference(whole, whole_h, ref_v2(data, max));
  }

  // Byte by byte: need_more until the first final answer, which is the whole
  // input's; a header is done exactly when its last byte is there.
  for (std::size_t n = 0; n <= data.size(); ++n) {
    ProxyHeader h;
    const ProxyParseResult res = sightline::net::parse_proxy_header(data.first(n), version, h, max);
    if (res.status == ProxyParseStatus::need_more) {
      FUZZ_CHECK(res.reason.empty());
      continue;
    }
    FUZZ_CHECK(res.status == whole.status);
    FUZZ_CHECK(res.reason == whole.reason);
    if (res.status == ProxyParseStatus::done) {
      FUZZ_CHECK(same(h, whole_h));
      FUZZ_CHECK(h.header_bytes == n);
    }
    return;
  }
  FUZZ_CHECK(whole.status == ProxyParseStatus::need_more);
}

// A TCP6 address in one of the forms inet_pton accepts, or nearly: groups
// with or without zero padding, in upper or lower case, a dotted-quad tail,
// and a run of groups replaced by "::" (possibly an empty run, which is not
// valid). The reference decides what is valid.
std::string v6_text(const std::uint8_t* b, std::uint8_t ctl, std::uint8_t run) {
  const bool dotted = ctl & 1, pad = ctl & 2, upper = ctl & 4, compress = ctl & 8;
  const std::size_t groups = dotted ? 6 : 8;
  std::vector<std::string> parts;
  char buf[32];
  for (std::size_t i = 0; i < groups; ++i) {
    std::snprintf(buf, sizeof buf, upper ? (pad ? "%04X" : "%X") : (pad ? "%04x" : "%x"),
                  static_cast<unsigned>(b[2 * i] << 8 | b[2 * i + 1]));
    parts.emplace_back(buf);
  }
  if (dotted) {
    std::snprintf(buf, sizeof buf, "%u.%u.%u.%u", b[12], b[13], b[14], b[15]);
    parts.emplace_back(buf);
  }
  auto join = [&](std::size_t from, std::size_t to) {
    std::string out;
    for (std::size_t i = from; i < to; ++i) out += (i == from ? "" : ":") + parts[i];
    return out;
  };
  if (!compress) return join(0, parts.size());
  const std::size_t start = (run & 0x0f) % (groups + 1);
  const std::size_t len = (run >> 4) % (groups - start + 1);
  return join(0, start) + "::" + join(start + len, parts.size());
}

// v1 lines built from the input bytes, so that deep valid (and nearly valid)
// headers are checked without the fuzzer having to discover their syntax.
void check_generated_v1(const std::uint8_t* d, std::size_t size) {
  if (size < 40) return;
  const unsigned sport = static_cast<unsigned>(d[32] << 8 | d[33]), dport = static_cast<unsigned>(d[34] << 8 | d[35]);
  const std::string ports = " " + std::to_string(sport) + " " + std::to_string(dport) + "\r\n";
  const std::string tail(reinterpret_cast<const char*>(d + 40), size - 40);
  std::string line =
      "PROXY TCP6 " + v6_text(d, d[36], d[37]) + " " + v6_text(d + 16, d[38], d[39]) + ports + tail;
  check(Span(reinterpret_cast<const std::uint8_t*>(line.data()), line.size()), ProxyProtocolVersion::v1, 4096);
  char a[INET_ADDRSTRLEN], b[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, d, a, sizeof a);
  inet_ntop(AF_INET, d + 4, b, sizeof b);
  line = std::string("PROXY TCP4 ") + a + " " + b + ports + tail;
  ProxyHeader h;
  const auto res = sightline::net::parse_proxy_header(
      Span(reinterpret_cast<const std::uint8_t*>(line.data()), line.size()), ProxyProtocolVersion::v1, h);
  FUZZ_CHECK(res.status == ProxyParseStatus::done);
  check(Span(reinterpret_cast<const std::uint8_t*>(line.data()), line.size()), ProxyProtocolVersion::v1, 4096);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const Span input(data, size);
  check(input, ProxyProtocolVersion::v1, 4096);
  check(input, ProxyProtocolVersion::v2, 4096);
  check(input, ProxyProtocolVersion::v2, 40);
  check_generated_v1(data, size);
  return 0;
}
