// Host/port parsing and socket address formatting.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace sightline::net {

enum class HostKind { name, ipv4, ipv6 };

struct HostPort {
  std::string host;  // names lower-cased, IPv6 without brackets
  std::uint16_t port = 0;
  HostKind kind = HostKind::name;

  // "host:port" with IPv6 in brackets, as in CONNECT and logs.
  std::string to_string() const;
};

// Strict authority-form parser: "name:port", "1.2.3.4:port", "[v6]:port".
// Names must be LDH labels (underscore tolerated) of at most 253 octets; a
// trailing dot is dropped. Port 1-65535 is required.
std::optional<HostPort> parse_host_port(std::string_view text);

// Parses a listen address; same syntax as parse_host_port but the host must be
// an IP literal ("*" or "0.0.0.0" for any). Fills a sockaddr_storage.
std::optional<sockaddr_storage> parse_listen_address(std::string_view text);

std::string sockaddr_to_string(const sockaddr* sa);

}  // namespace sightline::net
