// PROXY protocol (HAProxy spec, versions 1 and 2) header parser: a load
// balancer in front of a pool of sightline instances tells each of them the
// real client (and original destination) address. Strict and incremental:
// call parse() with what has arrived; it never reads past the header.
#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace sightline::net {

enum class ProxyProtocolVersion { v1, v2 };

struct ProxyHeader {
  bool local = false;          // v2 LOCAL command / v1 "UNKNOWN": keep the socket's own addresses
  sockaddr_storage source{};   // the real client (AF_INET or AF_INET6) unless local
  sockaddr_storage destination{};  // the address the client connected to, unless local
  std::size_t header_bytes = 0;    // bytes consumed (v2 TLVs included and skipped)
};

enum class ProxyParseStatus { need_more, done, error };

struct ProxyParseResult {
  ProxyParseStatus status = ProxyParseStatus::need_more;
  std::string reason;  // for error
};

// Parses the header at the start of `data` for the expected version. A
// header of the other version, a missing header, bad syntax, bad lengths,
// unsupported families (v2 UNIX/UNSPEC with PROXY command) are errors.
// v1 lines are at most 107 bytes; v2 headers at most 16 + 65535 bytes, and
// `max_v2_bytes` (default 4096) caps what is accepted.
ProxyParseResult parse_proxy_header(std::span<const std::uint8_t> data, ProxyProtocolVersion version,
                                    ProxyHeader& out, std::size_t max_v2_bytes = 4096);

}  // namespace sightline::net
