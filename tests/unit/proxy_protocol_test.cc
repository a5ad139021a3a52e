#include "net/proxy_protocol.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <doctest/doctest.h>

#include <cstring>
#include <string>
#include <string_view>
#include <vector>

using namespace sightline::net;

namespace {

using Bytes = std::vector<std::uint8_t>;

Bytes bytes(std::string_view s) { return Bytes(s.begin(), s.end()); }

ProxyParseResult parse(const Bytes& b, ProxyProtocolVersion v, ProxyHeader& h, std::size_t max = 4096) {
  return parse_proxy_header(std::span<const std::uint8_t>(b.data(), b.size()), v, h, max);
}

ProxyParseResult parse_v1(std::string_view s, ProxyHeader& h) { return parse(bytes(s), ProxyProtocolVersion::v1, h); }

std::string ip_of(const sockaddr_storage& ss) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET) {
    sockaddr_in sin;
    std::memcpy(&sin, &ss, sizeof sin);
    inet_ntop(AF_INET, &sin.sin_addr, buf, sizeof buf);
  } else if (ss.ss_family == AF_INET6) {
    sockaddr_in6 sin6;
    std::memcpy(&sin6, &ss, sizeof sin6);
    inet_ntop(AF_INET6, &sin6.sin6_addr, buf, sizeof buf);
  }
  return buf;
}

// Port in host order, read from the network-order field.
unsigned port_of(const sockaddr_storage& ss) {
  if (ss.ss_family == AF_INET) {
    sockaddr_in sin;
    std::memcpy(&sin, &ss, sizeof sin);
    return ntohs(sin.sin_port);
  }
  sockaddr_in6 sin6;
  std::memcpy(&sin6, &ss, sizeof sin6);
  return ntohs(sin6.sin6_port);
}

// The raw network-order port field, to check the byte order itself.
std::uint16_t raw_port(const sockaddr_storage& ss) {
  sockaddr_in sin;
  std::memcpy(&sin, &ss, sizeof sin);
  return sin.sin_port;
}

const Bytes kSig = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

struct Tlv {
  std::uint8_t type;
  Bytes value;
};

// A v2 header: `extra` is appended to the address block (TLVs or garbage);
// `len_override` replaces the computed length field when >= 0.
Bytes v2(std::uint8_t ver_cmd, std::uint8_t fam, const Bytes& addrs, const Bytes& extra = {},
         long len_override = -1) {
  Bytes b = kSig;
  b.push_back(ver_cmd);
  b.push_back(fam);
  const std::size_t len = len_override >= 0 ? static_cast<std::size_t>(len_override) : addrs.size() + extra.size();
  b.push_back(static_cast<std::uint8_t>(len >> 8));
  b.push_back(static_cast<std::uint8_t>(len & 0xff));
  b.insert(b.end(), addrs.begin(), addrs.end());
  b.insert(b.end(), extra.begin(), extra.end());
  return b;
}

Bytes tlvs(const std::vector<Tlv>& list) {
  Bytes b;
  for (const auto& t : list) {
    b.push_back(t.type);
    b.push_back(static_cast<std::uint8_t>(t.value.size() >> 8));
    b.push_back(static_cast<std::uint8_t>(t.value.size() & 0xff));
    b.insert(b.end(), t.value.begin(), t.value.end());
  }
  return b;
}

// 192.0.2.1:56324 -> 198.51.100.7:443
const Bytes kAddrs4 = {192, 0, 2, 1, 198, 51, 100, 7, 0xDC, 0x04, 0x01, 0xBB};

// 2001:db8::1:40000 -> 2001:db8::2:8443
Bytes addrs6() {
  Bytes b(36, 0);
  b[0] = 0x20; b[1] = 0x01; b[2] = 0x0d; b[3] = 0xb8; b[15] = 0x01;
  b[16] = 0x20; b[17] = 0x01; b[18] = 0x0d; b[19] = 0xb8; b[31] = 0x02;
  b[32] = 0x9C; b[33] = 0x40;  // 40000
  b[34] = 0x20; b[35] = 0xFB;  // 8443
  return b;
}

// Every strict prefix is need_more; the whole header is done with the right
// size, also when more bytes follow (they are not consumed).
void check_prefixes_and_trailer(const Bytes& header, ProxyProtocolVersion v) {
  for (std::size_t n = 0; n < header.size(); ++n) {
    ProxyHeader h;
    const Bytes prefix(header.begin(), header.begin() + static_cast<std::ptrdiff_t>(n));
    const auto res = parse(prefix, v, h);
    CAPTURE(n);
    CHECK(res.status == ProxyParseStatus::need_more);
    CHECK(res.reason.empty());
  }
  for (std::string_view trailer : {"", "\x16\x03\x01\x02\x00\x01", "GET / HTTP/1.1\r\n\r\n", "PROXY TCP4 "}) {
    Bytes b = header;
    b.insert(b.end(), trailer.begin(), trailer.end());
    ProxyHeader h;
    const auto res = parse(b, v, h);
    CAPTURE(trailer);
    REQUIRE(res.status == ProxyParseStatus::done);
    CHECK(h.header_bytes == header.size());
  }
}

void expect_error(const Bytes& b, ProxyProtocolVersion v, std::string_view reason_part, std::size_t max = 4096) {
  ProxyHeader h;
  h.header_bytes = 12345;  // untouched on error
  const auto res = parse(b, v, h, max);
  CHECK(res.status == ProxyParseStatus::error);
  CHECK_MESSAGE(res.reason.find(reason_part) != std::string::npos, "reason: ", res.reason);
  CHECK(h.header_bytes == 12345);
}

void expect_v1_error(std::string_view line, std::string_view reason_part) {
  CAPTURE(line);
  expect_error(bytes(line), ProxyProtocolVersion::v1, reason_part);
}

void expect_v2_error(const Bytes& b, std::string_view reason_part, std::size_t max = 4096) {
  expect_error(b, ProxyProtocolVersion::v2, reason_part, max);
}

}  // namespace

TEST_CASE("proxy v1: TCP4") {
  const std::string line = "PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n";
  ProxyHeader h;
  REQUIRE(parse_v1(line + "\x16\x03\x01", h).status == ProxyParseStatus::done);
  CHECK_FALSE(h.local);
  CHECK(h.header_bytes == line.size());
  CHECK(h.source.ss_family == AF_INET);
  CHECK(h.destination.ss_family == AF_INET);
  CHECK(ip_of(h.source) == "192.0.2.1");
  CHECK(ip_of(h.destination) == "198.51.100.7");
  CHECK(port_of(h.source) == 56324);
  CHECK(port_of(h.destination) == 443);
  CHECK(raw_port(h.destination) == htons(443));
  check_prefixes_and_trailer(bytes(line), ProxyProtocolVersion::v1);

  // Extremes of the port range and of the address syntax.
  REQUIRE(parse_v1("PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n", h).status == ProxyParseStatus::done);
  CHECK(port_of(h.source) == 0);
  CHECK(port_of(h.destination) == 65535);
  CHECK(ip_of(h.destination) == "255.255.255.255");
}

TEST_CASE("proxy v1: TCP6") {
  const std::string line = "PROXY TCP6 2001:db8::1 ::ffff:198.51.100.7 40000 8443\r\n";
  ProxyHeader h;
  REQUIRE(parse_v1(line + "rest", h).status == ProxyParseStatus::done);
  CHECK_FALSE(h.local);
  CHECK(h.header_bytes == line.size());
  CHECK(h.source.ss_family == AF_INET6);
  CHECK(h.destination.ss_family == AF_INET6);
  CHECK(ip_of(h.source) == "2001:db8::1");
  CHECK(ip_of(h.destination) == "::ffff:198.51.100.7");
  CHECK(port_of(h.source) == 40000);
  CHECK(port_of(h.destination) == 8443);
  check_prefixes_and_trailer(bytes(line), ProxyProtocolVersion::v1);

  // Every textual form inet_pton accepts, at the edges of the group count.
  for (std::string_view addr : {"::", "::1", "1::", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8",
                                "1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5::1.2.3.4", "::1.2.3.4", "::FFFF:0.0.0.0",
                                "0000:0000:0000:0000:0000:0000:0000:0001", "a:b::c:d"}) {
    const std::string l = "PROXY TCP6 " + std::string(addr) + " ::1 1 2\r\n";
    CAPTURE(l);
    REQUIRE(parse_v1(l, h).status == ProxyParseStatus::done);
    unsigned char want[16];
    REQUIRE(inet_pton(AF_INET6, std::string(addr).c_str(), want) == 1);
    sockaddr_in6 sin6;
    std::memcpy(&sin6, &h.source, sizeof sin6);
    CHECK(std::memcmp(&sin6.sin6_addr, want, 16) == 0);
    check_prefixes_and_trailer(bytes(l), ProxyProtocolVersion::v1);
  }
  // And just past those edges.
  for (std::string_view addr : {"1:2:3:4:5:6:7::8", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6::1.2.3.4",
                                "1:2:3:4:5:1.2.3.4", "1:2:3:4:5:6:7:1.2.3.4", "::1.2.3.4:5", ":1::", "1:::2",
                                "::1.2.3", "::1.2.3.04", "::g"})
    expect_v1_error("PROXY TCP6 " + std::string(addr) + " ::1 1 2\r\n", "invalid TCP6 source address");

  // The longest TCP6 line that fits: 107 bytes with the CRLF.
  const std::string longest =
      "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
  CHECK(longest.size() == 104);
  REQUIRE(parse_v1(longest, h).status == ProxyParseStatus::done);
  check_prefixes_and_trailer(bytes(longest), ProxyProtocolVersion::v1);
}

TEST_CASE("proxy v1: UNKNOWN") {
  ProxyHeader h;
  REQUIRE(parse_v1("PROXY UNKNOWN\r\nX", h).status == ProxyParseStatus::done);
  CHECK(h.local);
  CHECK(h.header_bytes == 15);
  check_prefixes_and_trailer(bytes("PROXY UNKNOWN\r\n"), ProxyProtocolVersion::v1);

  const std::string with_rest = "PROXY UNKNOWN ffff:: whatever the balancer sends\r\n";
  REQUIRE(parse_v1(with_rest + "tail", h).status == ProxyParseStatus::done);
  CHECK(h.local);
  CHECK(h.header_bytes == with_rest.size());
  check_prefixes_and_trailer(bytes(with_rest), ProxyProtocolVersion::v1);

  // Exactly 107 bytes with the CRLF is allowed, 108 is not.
  const std::string max_line = "PROXY UNKNOWN " + std::string(91, 'x') + "\r\n";
  REQUIRE(max_line.size() == 107);
  REQUIRE(parse_v1(max_line, h).status == ProxyParseStatus::done);
  CHECK(h.header_bytes == 107);
  check_prefixes_and_trailer(bytes(max_line), ProxyProtocolVersion::v1);
  expect_v1_error("PROXY UNKNOWN " + std::string(92, 'x') + "\r\n", "no CRLF within the first 107 bytes");
}

TEST_CASE("proxy v1: malformed lines are rejected with a reason") {
  // Wrong version / not a PROXY header at all.
  expect_v1_error("proxy TCP4 192.0.2.1 198.51.100.7 1 2\r\n", "does not start with \"PROXY \"");
  expect_v1_error("PROXY-TCP4", "does not start with \"PROXY \"");
  expect_v1_error("\x16\x03\x01", "does not start with \"PROXY \"");  // TLS straight away
  expect_v1_error("G", "does not start with \"PROXY \"");
  expect_v2_error(bytes("PROXY TCP4 192.0.2.1 198.51.100.7 1 2\r\n"), "got a v1 (text) header");
  expect_error(v2(0x21, 0x11, kAddrs4), ProxyProtocolVersion::v1, "got a binary (v2-like) header");
  expect_error(Bytes{0x0D}, ProxyProtocolVersion::v1, "got a binary (v2-like) header");

  // Protocol field.
  expect_v1_error("PROXY TCP5 ", "unknown protocol");
  expect_v1_error("PROXY TCP ", "unknown protocol");
  expect_v1_error("PROXY UDP4", "unknown protocol");
  expect_v1_error("PROXY tcp4", "unknown protocol");
  expect_v1_error("PROXY UNKNOWNX\r\n", "unknown protocol");
  expect_v1_error("PROXY TCP4\r\n", "ends before the addresses");
  expect_v1_error("PROXY  TCP4 192.0.2.1 198.51.100.7 1 2\r\n", "empty protocol field");

  // Spaces.
  expect_v1_error("PROXY TCP4  192.0.2.1 198.51.100.7 1 2\r\n", "empty source address");
  expect_v1_error("PROXY TCP4 192.0.2.1  198.51.100.7 1 2\r\n", "empty destination address");
  expect_v1_error("PROXY TCP4 192.0.2.1 198.51.100.7  1 2\r\n", "empty source port");
  expect_v1_error("PROXY TCP4 192.0.2.1 198.51.100.7 1  2\r\n", "empty destination port");
  expect_v1_error("PROXY TCP4 192.0.2.1 198.51.100.7 1 2 \r\n", "unexpected data after the destination port");
  expect_v1_error("PROXY TCP4 192.0.2.1\t198.51.100.7 1 2\r\n", "invalid TCP4 source address");

  // Addresses of the wrong family or malformed.
  expect_v1_error("PROXY TCP4 2001:db8::1 198.51.100.7 1 2\r\n", "invalid TCP4 source address");
  expect_v1_error("PROXY TCP4 192.0.2.1 ::1 1 2\r\n", "invalid TCP4 destination address");
  expect_v1_error("PROXY TCP6 192.0.2.1 ::1 1 2\r\n", "invalid TCP6 source address");
  expect_v1_error("PROXY TCP6 ::1 198.51.100.7 1 2\r\n", "invalid TCP6 destination address");
  expect_v1_error("PROXY TCP4 256.0.0.1 198.51.100.7 1 2\r\n", "invalid TCP4 source address");
  expect_v1_error("PROXY TCP4 192.0.2 198.51.100.7 1 2\r\n", "invalid TCP4 source address");
  expect_v1_error("PROXY TCP4 192.0.2.1.5 198.51.100.7 1 2\r\n", "invalid TCP4 source address");
  expect_v1_error("PROXY TCP4 192.0.02.1 198.51.100.7 1 2\r\n", "invalid TCP4 source address");
  expect_v1_error("PROXY TCP4 example.com 198.51.100.7 1 2\r\n", "invalid TCP4 source address");
  expect_v1_error("PROXY TCP6 2001:db8:::1 ::1 1 2\r\n", "invalid TCP6 source address");
  expect_v1_error("PROXY TCP6 1::2::3 ::1 1 2\r\n", "invalid TCP6 source address");
  expect_v1_error("PROXY TCP6 12345::1 ::1 1 2\r\n", "invalid TCP6 source address");
  expect_v1_error("PROXY TCP6 1:2:3:4:5:6:7 ::1 1 2\r\n", "invalid TCP6 source address");
  expect_v1_error("PROXY TCP6 [::1] ::1 1 2\r\n", "invalid TCP6 source address");
  expect_v1_error("PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "invalid TCP6 source address");

  // Ports.
  expect_v1_error("PROXY TCP4 192.0.2.1 198.51.100.7 65536 443\r\n", "source port is above 65535");
  expect_v1_error("PROXY TCP4 192.0.2.1 198.51.100.7 443 65536\r\n", "destination port is above 65535");
  expect_v1_error("PROXY TCP4 192.0.2.1 198.51.100.7 99999999 443\r\n", "source port is above 65535");
  expect_v1_error("PROXY TCP4 192.0.2.1 198.51.100.7 0443 443\r\n", "source port has a leading zero");
  expect_v1_error("PROXY TCP4 192.0.2.1 198.51.100.7 443 00\r\n", "destination port has a leading zero");
  expect_v1_error("PROXY TCP4 192.0.2.1 198.51.100.7 +443 443\r\n", "source port is not a decimal number");
  expect_v1_error("PROXY TCP4 192.0.2.1 198.51.100.7 443 -1\r\n", "destination port is not a decimal number");
  expect_v1_error("PROXY TCP4 192.0.2.1 198.51.100.7 0x1bb 443\r\n", "source port is not a decimal number");

  // Fields missing, line endings.
  expect_v1_error("PROXY TCP4 192.0.2.1\r\n", "line ends after the source address");
  expect_v1_error("PROXY TCP4 192.0.2.1 198.51.100.7\r\n", "line ends after the destination address");
  expect_v1_error("PROXY TCP4 192.0.2.1 198.51.100.7 1\r\n", "line ends after the source port");
  expect_v1_error("PROXY TCP4 192.0.2.1 198.51.100.7 1 2\n", "LF without CR");
  expect_v1_error("PROXY TCP4 192.0.2.1 198.51.100.7 1 2\rX", "CR not followed by LF");
  expect_v1_error("PROXY UNKNOWN\n", "LF without CR");
  expect_v1_error("PROXY UNKNOWN foo\nbar\r\n", "LF without CR");
  expect_v1_error("PROXY UNKNOWN\rX", "CR not followed by LF");
  expect_v1_error("PROXY UNKNOWN foo\rbar\r\n", "CR not followed by LF");

  // Too long: no CRLF in 107 bytes, whatever the content.
  expect_v1_error("PROXY UNKNOWN " + std::string(93, 'x'), "no CRLF within the first 107 bytes");
  expect_v1_error("PROXY UNKNOWN " + std::string(500, 'x'), "no CRLF within the first 107 bytes");
  expect_v1_error("PROXY TCP6 0000:0000:0000:0000:0000:ffff:192.000.2.1", "invalid TCP6 source address");
  const std::string long6 =
      "PROXY TCP6 0000:0000:0000:0000:0000:ffff:192.0.2.100 0000:0000:0000:0000:0000:ffff:198.51.100.7 65535 65535\r\n";
  REQUIRE(long6.size() > 107);
  expect_v1_error(long6, "no CRLF within the first 107 bytes");
}

TEST_CASE("proxy v1: what can never become a header is rejected at once") {
  // Early rejection: a wrong byte is an error as soon as it arrives.
  for (std::string_view s : {"X", "PROXY_", "PROXY X", "PROXY TCP4 a", "PROXY TCP4 1.2.3.4 1.2.3.4.",
                             "PROXY TCP6 :1", "PROXY TCP6 1:2:3:4:5:6:7:8:", "PROXY TCP6 1::3:4:5:6:7:8:",
                             "PROXY TCP6 1:2:3:4:5:6:1.2.3.4:", "PROXY TCP6 ::1.2.3.4.", "PROXY TCP6 ::1 ::1 01", "PROXY TCP6 ::1 ::1 1 65536",
                             "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 "}) {
    CAPTURE(s);
    ProxyHeader h;
    const auto res = parse_v1(s, h);
    CHECK(res.status == ProxyParseStatus::error);
    CHECK(!res.reason.empty());
  }
  // While what is there can still become a header, more is needed.
  for (std::string_view s : {"", "P", "PROXY", "PROXY ", "PROXY T", "PROXY UNK", "PROXY TCP4 1", "PROXY TCP4 1.2.3.",
                             "PROXY TCP6 :", "PROXY TCP6 ::ffff:1.2", "PROXY TCP6 1:2:3:4:5:6:7:",
                             "PROXY TCP4 1.2.3.4 5.6.7.8 0", "PROXY TCP4 1.2.3.4 5.6.7.8 1 6553",
                             "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r", "PROXY UNKNOWN anything"}) {
    CAPTURE(s);
    ProxyHeader h;
    const auto res = parse_v1(s, h);
    CHECK(res.status == ProxyParseStatus::need_more);
  }
}

TEST_CASE("proxy v1: a partial IPv6 address waits exactly when it can still be completed") {
  // For every short string over a small alphabet: need_more (as the source
  // address being received) if and only if some short completion makes it an
  // address inet_pton accepts.
  std::vector<std::string> strs{""};
  for (std::size_t i = 0; i < strs.size(); ++i)
    if (strs[i].size() < 5)
      for (char c : std::string_view("01a:.")) strs.push_back(strs[i] + c);
  std::vector<std::string> tails{""};
  for (std::size_t i = 0; i < tails.size(); ++i)
    if (tails[i].size() < 5)
      for (char c : std::string_view("0:.")) tails.push_back(tails[i] + c);
  int waits = 0, rejects = 0;
  for (const auto& s : strs) {
    bool completable = false;
    for (const auto& t : tails) {
      unsigned char a[16];
      if (inet_pton(AF_INET6, (s + t).c_str(), a) == 1) {
        completable = true;
        break;
      }
    }
    ProxyHeader h;
    const auto res = parse_v1("PROXY TCP6 " + s, h);
    CAPTURE(s);
    CHECK(res.status == (completable ? ProxyParseStatus::need_more : ProxyParseStatus::error));
    (completable ? waits : rejects)++;
  }
  CHECK(waits > 100);
  CHECK(rejects > 1000);
}

TEST_CASE("proxy v2: PROXY over IPv4, with and without TLVs") {
  const Bytes plain = v2(0x21, 0x11, kAddrs4);
  ProxyHeader h;
  REQUIRE(parse(plain, ProxyProtocolVersion::v2, h).status == ProxyParseStatus::done);
  CHECK_FALSE(h.local);
  CHECK(h.header_bytes == 28);
  CHECK(h.source.ss_family == AF_INET);
  CHECK(h.destination.ss_family == AF_INET);
  CHECK(ip_of(h.source) == "192.0.2.1");
  CHECK(ip_of(h.destination) == "198.51.100.7");
  CHECK(port_of(h.source) == 56324);
  CHECK(port_of(h.destination) == 443);
  CHECK(raw_port(h.destination) == htons(443));
  check_prefixes_and_trailer(plain, ProxyProtocolVersion::v2);

  // ALPN, authority, an empty NOOP and an SSL TLV with a sub-TLV.
  const Bytes with_tlvs =
      v2(0x21, 0x11, kAddrs4,
         tlvs({{0x01, bytes("h2")}, {0x02, bytes("example.com")}, {0x04, {}},
               {0x20, {0x01, 0x00, 0x00, 0x00, 0x00, 0x21, 0x00, 0x07, 'T', 'L', 'S', 'v', '1', '.', '3'}}}));
  REQUIRE(parse(with_tlvs, ProxyProtocolVersion::v2, h).status == ProxyParseStatus::done);
  CHECK(h.header_bytes == with_tlvs.size());
  CHECK(ip_of(h.source) == "192.0.2.1");
  CHECK(port_of(h.source) == 56324);
  check_prefixes_and_trailer(with_tlvs, ProxyProtocolVersion::v2);
}

TEST_CASE("proxy v2: PROXY over IPv6, with and without TLVs") {
  const Bytes plain = v2(0x21, 0x21, addrs6());
  ProxyHeader h;
  REQUIRE(parse(plain, ProxyProtocolVersion::v2, h).status == ProxyParseStatus::done);
  CHECK_FALSE(h.local);
  CHECK(h.header_bytes == 52);
  CHECK(h.source.ss_family == AF_INET6);
  CHECK(h.destination.ss_family == AF_INET6);
  CHECK(ip_of(h.source) == "2001:db8::1");
  CHECK(ip_of(h.destination) == "2001:db8::2");
  CHECK(port_of(h.source) == 40000);
  CHECK(port_of(h.destination) == 8443);
  check_prefixes_and_trailer(plain, ProxyProtocolVersion::v2);

  const Bytes with_tlvs = v2(0x21, 0x21, addrs6(), tlvs({{0xE0, Bytes(300, 0xAB)}, {0x05, bytes("id")}}));
  REQUIRE(parse(with_tlvs, ProxyProtocolVersion::v2, h).status == ProxyParseStatus::done);
  CHECK(h.header_bytes == 52 + 303 + 5);
  CHECK(ip_of(h.destination) == "2001:db8::2");
  check_prefixes_and_trailer(with_tlvs, ProxyProtocolVersion::v2);
}

TEST_CASE("proxy v2: LOCAL keeps the socket's addresses") {
  const Bytes local = v2(0x20, 0x00, {});
  ProxyHeader h;
  REQUIRE(parse(local, ProxyProtocolVersion::v2, h).status == ProxyParseStatus::done);
  CHECK(h.local);
  CHECK(h.header_bytes == 16);
  CHECK(h.source.ss_family == AF_UNSPEC);
  CHECK(h.destination.ss_family == AF_UNSPEC);
  check_prefixes_and_trailer(local, ProxyProtocolVersion::v2);

  // The family of a LOCAL header is ignored (the spec says so), addresses
  // included; its TLVs are still checked.
  const Bytes local_v4 = v2(0x20, 0x11, kAddrs4, tlvs({{0x04, Bytes(3, 0)}}));
  REQUIRE(parse(local_v4, ProxyProtocolVersion::v2, h).status == ProxyParseStatus::done);
  CHECK(h.local);
  CHECK(h.header_bytes == 28 + 6);
  CHECK(h.source.ss_family == AF_UNSPEC);
  check_prefixes_and_trailer(local_v4, ProxyProtocolVersion::v2);
  REQUIRE(parse(v2(0x20, 0x31, Bytes(216, 0)), ProxyProtocolVersion::v2, h).status == ProxyParseStatus::done);
  CHECK(h.header_bytes == 16 + 216);
  expect_v2_error(v2(0x20, 0x00, {}, tlvs({{0x04, Bytes(3, 0)}}), 2), "truncated TLV header at offset 16");
  expect_v2_error(v2(0x20, 0x00, {}, tlvs({{0x04, Bytes(3, 0)}}), 5), "TLV 0x04 at offset 16 runs past the end");
}

TEST_CASE("proxy v2: malformed headers are rejected with a reason") {
  // Signature.
  Bytes bad_sig = v2(0x21, 0x11, kAddrs4);
  bad_sig[7] = 'q';  // "qUIT"
  expect_v2_error(bad_sig, "bad signature");
  expect_v2_error(Bytes{0x0D, 0x0A, 0x0D, 0x0A, 0x01}, "bad signature");
  expect_v2_error(Bytes{0x16, 0x03, 0x01}, "bad signature");  // TLS straight away
  expect_v2_error(bytes("P"), "got a v1 (text) header");

  // Version and command.
  expect_v2_error(v2(0x11, 0x11, kAddrs4), "unsupported version 1");
  expect_v2_error(v2(0x31, 0x11, kAddrs4), "unsupported version 3");
  expect_v2_error(v2(0x22, 0x11, kAddrs4), "unknown command 2");
  expect_v2_error(v2(0x2F, 0x11, kAddrs4), "unknown command 15");

  // Families.
  expect_v2_error(v2(0x21, 0x00, {}), "UNSPEC address family with the PROXY command");
  expect_v2_error(v2(0x21, 0x12, kAddrs4), "UDP is not supported");
  expect_v2_error(v2(0x21, 0x22, addrs6()), "UDP is not supported");
  expect_v2_error(v2(0x21, 0x31, Bytes(216, 0)), "UNIX socket addresses are not supported");
  expect_v2_error(v2(0x21, 0x32, Bytes(216, 0)), "UNIX socket addresses are not supported");
  expect_v2_error(v2(0x21, 0x10, kAddrs4), "unknown address family/protocol 0x10");
  expect_v2_error(v2(0x21, 0x13, kAddrs4), "unknown address family/protocol 0x13");
  expect_v2_error(v2(0x21, 0x41, kAddrs4), "unknown address family/protocol 0x41");
  expect_v2_error(v2(0x20, 0x41, {}), "unknown address family/protocol 0x41");

  // Lengths.
  expect_v2_error(v2(0x21, 0x11, kAddrs4, {}, 11), "length 11 is shorter than the 12-byte address block");
  expect_v2_error(v2(0x21, 0x21, addrs6(), {}, 12), "length 12 is shorter than the 36-byte address block");
  expect_v2_error(v2(0x20, 0x21, {}, {}, 0), "length 0 is shorter than the 36-byte address block");
  // Decided from the fixed part alone: no need to wait for the addresses.
  expect_v2_error(Bytes(v2(0x21, 0x21, {}, {}, 35)), "shorter than the 36-byte address block");

  // Truncated TLVs: a header cut short, or a value longer than what is left.
  expect_v2_error(v2(0x21, 0x11, kAddrs4, {0x04}), "truncated TLV header at offset 28");
  expect_v2_error(v2(0x21, 0x11, kAddrs4, {0x04, 0x00}), "truncated TLV header at offset 28");
  expect_v2_error(v2(0x21, 0x11, kAddrs4, {0x04, 0x00, 0x02, 0xAA}), "TLV 0x04 at offset 28 runs past the end");
  expect_v2_error(v2(0x21, 0x11, kAddrs4, {0x04, 0x00, 0x00, 0x01, 0x00, 0x01}),
                  "TLV 0x01 at offset 31 runs past the end");
  expect_v2_error(v2(0x21, 0x11, kAddrs4, Bytes{0x04, 0x00, 0x00, 0x04}), "truncated TLV header at offset 31");
  // A TLV that claims more than the header holds fails before its value arrives.
  expect_v2_error(v2(0x21, 0x11, kAddrs4, {0x02, 0x01, 0x00}, 12 + 3 + 10), "TLV 0x02 at offset 28 runs past");

  // Oversize: against the caller's limit and the default one.
  const Bytes big = v2(0x21, 0x11, kAddrs4, tlvs({{0xE0, Bytes(4066, 0)}}));
  REQUIRE(big.size() == 4097);
  expect_v2_error(big, "header of 4097 bytes exceeds the limit of 4096");
  ProxyHeader h;
  CHECK(parse(big, ProxyProtocolVersion::v2, h, 4097).status == ProxyParseStatus::done);
  CHECK(h.header_bytes == 4097);
  const Bytes just_fits = v2(0x21, 0x11, kAddrs4, tlvs({{0xE0, Bytes(4065, 0)}}));
  CHECK(parse(just_fits, ProxyProtocolVersion::v2, h).status == ProxyParseStatus::done);
  expect_v2_error(v2(0x21, 0x11, kAddrs4, {}, 0xFFFF), "header of 65551 bytes exceeds the limit of 4096");
  expect_v2_error(v2(0x21, 0x11, kAddrs4), "header of 28 bytes exceeds the limit of 27", 27);
  // Rejected from the 16 fixed bytes alone.
  expect_v2_error(Bytes(v2(0x21, 0x11, {}, {}, 5000)), "exceeds the limit");
}

TEST_CASE("proxy v2: what can never become a header is rejected at once") {
  const Bytes good = v2(0x21, 0x11, kAddrs4, tlvs({{0x01, bytes("h2")}}));
  // The shortest prefix with a wrong byte is already an error.
  for (const std::size_t i : std::vector<std::size_t>{0, 4, 11, 12, 13}) {
    Bytes b(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(i) + 1);
    b[i] = static_cast<std::uint8_t>(b[i] ^ 0xF0);
    CAPTURE(i);
    ProxyHeader h;
    CHECK(parse(b, ProxyProtocolVersion::v2, h).status == ProxyParseStatus::error);
  }
  // Up to the last byte, a good header only needs more.
  ProxyHeader h;
  Bytes partial(good.begin(), good.end() - 1);
  CHECK(parse(partial, ProxyProtocolVersion::v2, h).status == ProxyParseStatus::need_more);
}
