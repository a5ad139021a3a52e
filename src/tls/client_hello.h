// Strict, incremental parser for a TLS ClientHello as it arrives on the wire:
// possibly split across TCP segments and across TLS records, up to a cap.
// Used to decide what to do with a connection before any handshake starts.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace sightline::tls {

struct ClientHelloInfo {
  std::string sni;                 // lower-cased, no trailing dot; empty if absent
  bool sni_is_ip = false;          // an IP literal was sent as server_name (ignored)
  std::vector<std::string> alpn;   // offered protocols, in order
  std::vector<std::uint16_t> supported_versions;  // from the extension, GREASE kept
  std::uint16_t legacy_version = 0;
  std::size_t message_bytes = 0;   // handshake message length (header included)
  std::size_t record_bytes = 0;    // wire bytes of the records that carried it
};

enum class HelloStatus { need_more, done, not_tls, malformed };

struct HelloResult {
  HelloStatus status = HelloStatus::need_more;
  std::string reason;  // for malformed / not_tls
};

inline constexpr std::size_t kDefaultMaxClientHello = 16 * 1024;

// Parses the ClientHello at the start of `wire`. Call again with more bytes
// while need_more is returned.
HelloResult parse_client_hello(std::span<const std::uint8_t> wire, ClientHelloInfo& out,
                               std::size_t max_hello = kDefaultMaxClientHello);

bool offers_tls13(const ClientHelloInfo& info);

}  // namespace sightline::tls
