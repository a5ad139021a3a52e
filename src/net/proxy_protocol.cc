#include "net/proxy_protocol.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <initializer_list>
#include <string_view>

// How the parser stays consistent when called again with more data: every
// check runs in input order and only looks at bytes that have arrived, and a
// check that lacks bytes stops the parse with need_more before any later check
// runs. So the first final answer over growing prefixes is the answer for the
// whole input, and an error is reported as soon as its bytes are there.

namespace sightline::net {
namespace {

constexpr std::size_t kV1MaxBytes = 107;  // "PROXY UNKNOWN" + worst-case TCP6 line, CRLF included
constexpr std::string_view kV1Prefix = "PROXY ";
constexpr std::array<std::uint8_t, 12> kV2Signature = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                                       0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
constexpr std::size_t kV2FixedBytes = 16;  // signature, ver/cmd, fam/proto, length

ProxyParseResult need_more() { return {}; }

ProxyParseResult fail(std::string reason) { return {ProxyParseStatus::error, std::move(reason)}; }

// Error reasons are only built on the error path: parse() runs on every read.
ProxyParseResult fail(std::initializer_list<std::string_view> parts) {
  std::string reason;
  for (std::string_view p : parts) reason += p;
  return fail(std::move(reason));
}

std::string hex_byte(std::uint8_t b) {
  constexpr char digits[] = "0123456789abcdef";
  return std::string("0x") + digits[b >> 4] + digits[b & 0x0f];
}

void store_v4(sockaddr_storage& ss, const void* addr, std::uint16_t port_be) {
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = port_be;
  std::memcpy(&sin.sin_addr, addr, sizeof sin.sin_addr);
  ss = sockaddr_storage{};
  std::memcpy(&ss, &sin, sizeof sin);
}

void store_v6(sockaddr_storage& ss, const void* addr, std::uint16_t port_be) {
  sockaddr_in6 sin6{};
  sin6.sin6_family = AF_INET6;
  sin6.sin6_port = port_be;
  std::memcpy(&sin6.sin6_addr, addr, sizeof sin6.sin6_addr);
  ss = sockaddr_storage{};
  std::memcpy(&ss, &sin6, sizeof sin6);
}

// ---------------------------------------------------------------------------
// Version 1 (text)

bool is_digit(char c) { return c >= '0' && c <= '9'; }

bool is_hex(char c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

// Whether `s` can be extended into a dotted quad that inet_pton(AF_INET)
// accepts: four decimal octets 0-255 without leading zeros.
bool ipv4_prefix_ok(std::string_view s) {
  int octets = 0;
  bool in_octet = false;
  bool leading_zero = false;
  unsigned value = 0;
  for (char c : s) {
    if (is_digit(c)) {
      if (!in_octet) {
        ++octets;  // never a fifth: the '.' before it is refused below
        in_octet = true;
        leading_zero = c == '0';
        value = static_cast<unsigned>(c - '0');
        continue;
      }
      if (leading_zero) return false;
      value = value * 10 + static_cast<unsigned>(c - '0');
      if (value > 255) return false;
    } else if (c == '.') {
      if (!in_octet || octets == 4) return false;
      in_octet = false;
    } else {
      return false;
    }
  }
  return true;
}

// Whether `s` can be extended into text that inet_pton(AF_INET6) accepts:
// groups of 1-4 hex digits, at most one "::" standing for at least one zero
// group, optionally a dotted quad as the last two groups, eight groups in all.
bool ipv6_prefix_ok(std::string_view s) {
  std::size_t i = 0;
  if (!s.empty() && s[0] == ':') {
    if (s.size() >= 2 && s[1] != ':') return false;  // a leading ':' only as "::"
    i = 1;  // the second ':' below makes the "::"
  }
  int groups = 0;            // complete 16-bit groups
  bool compressed = false;   // "::" seen
  int xdigits = 0;           // hex digits of the group being read
  bool open_colon = false;   // a ':' after a group: another group must follow
  std::size_t group_start = i;
  for (; i < s.size(); ++i) {
    const char c = s[i];
    if (is_hex(c)) {
      if (xdigits == 4) return false;
      ++xdigits;
      open_colon = false;
    } else if (c == ':') {
      if (xdigits == 0) {
        if (compressed) return false;  // a second "::", or ":::"
        compressed = true;
        open_colon = false;
      } else {
        ++groups;
        xdigits = 0;
        open_colon = true;
      }
      group_start = i + 1;
    } else if (c == '.') {
      // An embedded IPv4 address: the last two groups, from the current group on.
      if (xdigits == 0 || !ipv4_prefix_ok(s.substr(group_start))) return false;
      return compressed ? groups + 2 + 1 <= 8 : groups + 2 == 8;
    } else {
      return false;
    }
    // Fewest groups any completion needs ("::" stands for at least one).
    const int need = groups + ((xdigits > 0 || open_colon) ? 1 : 0) + (compressed ? 1 : 0);
    if (need > 8) return false;
  }
  return true;
}

// Null when `s` can start a port (decimal 0-65535, no sign, no leading zeros).
const char* port_prefix_problem(std::string_view s) {
  unsigned value = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (!is_digit(s[i])) return "is not a decimal number";
    if (i == 1 && s[0] == '0') return "has a leading zero";
    value = value * 10 + static_cast<unsigned>(s[i] - '0');
    if (value > 65535) return "is above 65535";
  }
  return nullptr;
}

struct Token {
  std::string_view text;
  std::size_t end = 0;  // index of the delimiter, or of the end of the data
  char delim = 0;       // ' ', '\r' or '\n'; 0 when the data ends inside the token
};

Token next_token(std::string_view v, std::size_t pos) {
  const std::size_t end = std::min(v.find_first_of(" \r\n", pos), v.size());
  return {v.substr(pos, end - pos), end, end < v.size() ? v[end] : '\0'};
}

ProxyParseResult parse_v1(std::span<const std::uint8_t> data, ProxyHeader& out) {
  const std::string_view all(reinterpret_cast<const char*>(data.data()), data.size());
  // Nothing past the longest allowed line is looked at, so the answer for a
  // long input is the answer for its first 107 bytes.
  const std::string_view v = all.substr(0, kV1MaxBytes);
  auto incomplete = [&] {
    if (all.size() >= kV1MaxBytes) return fail("PROXY v1: no CRLF within the first 107 bytes");
    return need_more();
  };

  for (std::size_t i = 0; i < std::min(v.size(), kV1Prefix.size()); ++i) {
    if (v[i] == kV1Prefix[i]) continue;
    if (i == 0 && static_cast<std::uint8_t>(v[0]) == kV2Signature[0])
      return fail("PROXY v1: expected \"PROXY \", got a binary (v2-like) header");
    return fail("PROXY v1: header does not start with \"PROXY \"");
  }
  if (v.size() < kV1Prefix.size()) return incomplete();

  const Token proto = next_token(v, kV1Prefix.size());
  const bool tcp4 = proto.text == "TCP4";
  const bool tcp6 = proto.text == "TCP6";
  const bool unknown = proto.text == "UNKNOWN";
  if (!std::string_view("TCP4").starts_with(proto.text) && !std::string_view("TCP6").starts_with(proto.text) &&
      !std::string_view("UNKNOWN").starts_with(proto.text))
    return fail("PROXY v1: unknown protocol (expected TCP4, TCP6 or UNKNOWN)");
  if (proto.delim == 0) return incomplete();
  if (proto.text.empty()) return fail("PROXY v1: empty protocol field (double space?)");
  if (!tcp4 && !tcp6 && !unknown) return fail("PROXY v1: unknown protocol (expected TCP4, TCP6 or UNKNOWN)");

  if (unknown) {
    // "PROXY UNKNOWN\r\n", or anything after a space up to the CRLF, ignored.
    if (proto.delim == '\n') return fail("PROXY v1: LF without CR after UNKNOWN");
    for (std::size_t i = proto.end; i < v.size(); ++i) {
      if (v[i] == '\n') return fail("PROXY v1: LF without CR in the UNKNOWN line");
      if (v[i] != '\r') continue;
      if (i + 1 >= v.size()) return incomplete();
      if (v[i + 1] != '\n') return fail("PROXY v1: CR not followed by LF in the UNKNOWN line");
      ProxyHeader h;
      h.local = true;
      h.header_bytes = i + 2;
      out = h;
      return {ProxyParseStatus::done, {}};
    }
    return incomplete();
  }

  const std::string_view fam = proto.text;
  if (proto.delim != ' ') return fail({"PROXY v1: ", fam, " line ends before the addresses"});

  unsigned char addrs[2][sizeof(in6_addr)] = {};
  std::uint16_t ports[2] = {0, 0};
  std::size_t pos = proto.end + 1;
  static constexpr std::string_view kFields[] = {"source address", "destination address", "source port",
                                                 "destination port"};
  for (std::size_t f = 0; f < 4; ++f) {
    const std::string_view name = kFields[f];
    const Token t = next_token(v, pos);
    if (f < 2) {
      if (!(tcp4 ? ipv4_prefix_ok(t.text) : ipv6_prefix_ok(t.text)))
        return fail({"PROXY v1: invalid ", fam, " ", name});
    } else if (const char* problem = port_prefix_problem(t.text)) {
      return fail({"PROXY v1: ", name, " ", problem});
    }
    if (t.delim == 0) return incomplete();
    if (t.text.empty()) return fail({"PROXY v1: empty ", name, " field (double space?)"});
    if (f < 2) {
      char text[INET6_ADDRSTRLEN + 1] = {};  // the prefix check allows at most 45 characters
      if (t.text.size() >= sizeof text) return fail({"PROXY v1: invalid ", fam, " ", name});
      std::memcpy(text, t.text.data(), t.text.size());
      if (inet_pton(tcp4 ? AF_INET : AF_INET6, text, addrs[f]) != 1)
        return fail({"PROXY v1: invalid ", fam, " ", name});
    } else {
      unsigned value = 0;
      for (char c : t.text) value = value * 10 + static_cast<unsigned>(c - '0');
      ports[f - 2] = static_cast<std::uint16_t>(value);
    }
    if (f < 3) {
      if (t.delim != ' ') return fail({"PROXY v1: line ends after the ", name});
      pos = t.end + 1;
    } else {
      if (t.delim == ' ') return fail("PROXY v1: unexpected data after the destination port");
      if (t.delim == '\n') return fail("PROXY v1: LF without CR after the destination port");
      if (t.end + 1 >= v.size()) return incomplete();
      if (v[t.end + 1] != '\n') return fail("PROXY v1: CR not followed by LF after the destination port");
      pos = t.end + 2;
    }
  }

  ProxyHeader h;
  h.header_bytes = pos;
  for (std::size_t i = 0; i < 2; ++i) {
    sockaddr_storage& ss = i == 0 ? h.source : h.destination;
    if (tcp4)
      store_v4(ss, addrs[i], htons(ports[i]));
    else
      store_v6(ss, addrs[i], htons(ports[i]));
  }
  out = h;
  return {ProxyParseStatus::done, {}};
}

// ---------------------------------------------------------------------------
// Version 2 (binary)

ProxyParseResult parse_v2(std::span<const std::uint8_t> d, ProxyHeader& out, std::size_t max_bytes) {
  const std::size_t n = d.size();
  for (std::size_t i = 0; i < std::min(n, kV2Signature.size()); ++i) {
    if (d[i] == kV2Signature[i]) continue;
    if (i == 0 && d[0] == 'P') return fail("PROXY v2: expected the binary signature, got a v1 (text) header");
    return fail("PROXY v2: bad signature");
  }
  if (n <= 12) return need_more();

  const std::uint8_t ver_cmd = d[12];
  if ((ver_cmd >> 4) != 2) return fail("PROXY v2: unsupported version " + std::to_string(ver_cmd >> 4));
  const std::uint8_t cmd = ver_cmd & 0x0f;
  if (cmd > 1) return fail("PROXY v2: unknown command " + std::to_string(cmd));
  const bool local = cmd == 0;
  if (n <= 13) return need_more();

  // Address block sizes of the families the spec defines; other values must
  // be rejected. With LOCAL the family is ignored (the spec says so) but must
  // still be one of these, so that the TLVs can be found.
  const std::uint8_t fam = d[13];
  std::size_t addr_len = 0;
  switch (fam) {
    case 0x00: addr_len = 0; break;                 // UNSPEC
    case 0x11: case 0x12: addr_len = 12; break;     // TCP / UDP over IPv4
    case 0x21: case 0x22: addr_len = 36; break;     // TCP / UDP over IPv6
    case 0x31: case 0x32: addr_len = 216; break;    // UNIX stream / datagram
    default: return fail("PROXY v2: unknown address family/protocol " + hex_byte(fam));
  }
  if (!local) {
    if (fam == 0x00) return fail("PROXY v2: UNSPEC address family with the PROXY command");
    if (fam == 0x12 || fam == 0x22) return fail("PROXY v2: UDP is not supported (TCP only)");
    if (fam == 0x31 || fam == 0x32) return fail("PROXY v2: UNIX socket addresses are not supported");
  }
  if (n <= 15) return need_more();

  const std::size_t len = static_cast<std::size_t>(d[14]) << 8 | d[15];
  if (len < addr_len)
    return fail("PROXY v2: length " + std::to_string(len) + " is shorter than the " + std::to_string(addr_len) +
                "-byte address block");
  const std::size_t total = kV2FixedBytes + len;
  if (total > max_bytes)
    return fail("PROXY v2: header of " + std::to_string(total) + " bytes exceeds the limit of " +
                std::to_string(max_bytes));

  // TLVs: type, 16-bit length, value; they must fill the rest exactly.
  std::size_t pos = kV2FixedBytes + addr_len;
  while (pos < total) {
    if (total - pos < 3) return fail("PROXY v2: truncated TLV header at offset " + std::to_string(pos));
    if (n < pos + 3) return need_more();
    const std::size_t tlv_len = static_cast<std::size_t>(d[pos + 1]) << 8 | d[pos + 2];
    if (tlv_len > total - pos - 3)
      return fail("PROXY v2: TLV " + hex_byte(d[pos]) + " at offset " + std::to_string(pos) +
                  " runs past the end of the header");
    pos += 3 + tlv_len;
  }
  if (n < total) return need_more();

  ProxyHeader h;
  h.local = local;
  h.header_bytes = total;
  if (!local) {
    const std::uint8_t* a = d.data() + kV2FixedBytes;
    std::uint16_t sport = 0, dport = 0;
    if (fam == 0x11) {
      std::memcpy(&sport, a + 8, 2);
      std::memcpy(&dport, a + 10, 2);
      store_v4(h.source, a, sport);
      store_v4(h.destination, a + 4, dport);
    } else {
      std::memcpy(&sport, a + 32, 2);
      std::memcpy(&dport, a + 34, 2);
      store_v6(h.source, a, sport);
      store_v6(h.destination, a + 16, dport);
    }
  }
  out = h;
  return {ProxyParseStatus::done, {}};
}

}  // namespace

ProxyParseResult parse_proxy_header(std::span<const std::uint8_t> data, ProxyProtocolVersion version,
                                    ProxyHeader& out, std::size_t max_v2_bytes) {
  if (version == ProxyProtocolVersion::v1) return parse_v1(data, out);
  return parse_v2(data, out, max_v2_bytes);
}

}  // namespace sightline::net
