// Why a connection ended badly, in a fixed set of values: the `cause` field
// of the connection log line and the label of
// sightline_connection_failures_total (docs/metrics.md). The first cause
// noted for a connection wins: it is the failure, what follows is fallout.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

namespace sightline::core {

enum class FailureCause : std::uint8_t {
  none,
  client_timeout,      // no request, ClientHello or finished handshake in timeouts.handshake
  client_closed,       // the client went away before relaying started
  client_tls,          // the client's TLS handshake (or a later record) failed
  client_bad_request,  // unparseable or refused request from the client
  upstream_dns,
  upstream_connect,          // refused, unreachable
  upstream_connect_timeout,
  upstream_tls,              // the origin's handshake failed (closed, non-TLS bytes, alert)
  upstream_certificate,      // the origin's certificate was refused
  upstream_reset,            // the origin reset or closed mid-response
  upstream_protocol,         // unparseable HTTP (or TLS records) from the origin
  upstream_timeout,          // the origin did not answer in time
  limit_connections,         // limits.max_connections reached
  limit_client,              // limits.max_connections_per_client reached
  access_client,             // client address not in access.allow_clients
  access_port,               // CONNECT/HTTP port not allowed
  access_destination,        // destination refused (SSRF protection)
  internal,                  // the proxy's own failure (out of memory, forging)
  count
};

inline constexpr std::array<std::string_view, static_cast<std::size_t>(FailureCause::count)>
    kFailureCauseNames = {"none",
                          "client_timeout",
                          "client_closed",
                          "client_tls",
                          "client_bad_request",
                          "upstream_dns",
                          "upstream_connect",
                          "upstream_connect_timeout",
                          "upstream_tls",
                          "upstream_certificate",
                          "upstream_reset",
                          "upstream_protocol",
                          "upstream_timeout",
                          "limit_connections",
                          "limit_client",
                          "access_client",
                          "access_port",
                          "access_destination",
                          "internal"};

inline std::string_view name(FailureCause c) { return kFailureCauseNames[static_cast<std::size_t>(c)]; }

}  // namespace sightline::core
