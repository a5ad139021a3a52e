// TLS session tickets toward clients (RFC 8446 4.6.1, RFC 5077): a client
// that connects again to a site resumes instead of receiving and verifying
// the forged certificate once more.
//
// Two things make this safe for an interception proxy:
// - Binding. A resumed handshake presents no certificate, so a ticket may
//   only stand in for the certificate the connection would present now. Each
//   ticket carries the SHA-256 of the forged certificate it was issued under
//   (which names the origin certificate, the SNI and the issuing CA, trusted
//   or untrusted), and it is accepted only when the connection, after
//   verifying the origin again, would present that very certificate. A ticket
//   from before an origin's certificate turned invalid, from another site, or
//   from before a leaf key rotation makes a full handshake.
// - Key rotation. Ticket encryption keys live in memory only. A key
//   encrypts new tickets for one `lifetime` from when it was made and
//   decrypts them for one more, then it is wiped; a restart invalidates
//   every ticket.
// - Chains. A TLS 1.3 resumption gets a fresh ticket, which carries the
//   time of the full handshake the chain started from; a chain ends after
//   max(lifetime, 24 h) (RFC 8446 4.6.1 asks for such a bound).
#pragma once

#include "tls/ossl.h"

#include <array>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string_view>

namespace sightline::tls {

// Ticket encryption keys: AES-256-CBC and HMAC-SHA256 (the ticket format
// OpenSSL itself uses), named by 16 random bytes. Shared by all workers.
class TicketKeys {
 public:
  using Clock = std::chrono::steady_clock;
  struct Key {
    std::array<unsigned char, 16> name{};
    std::array<unsigned char, 32> aes{};
    std::array<unsigned char, 32> hmac{};
  };
  enum class Found { none, current, previous };

  // `max_chain` defaults to max(lifetime, 24 h); tests pass their own.
  explicit TicketKeys(std::chrono::milliseconds lifetime,
                      std::optional<std::chrono::seconds> max_chain = std::nullopt);
  // How long a chain of resumptions may extend its first full handshake.
  const std::chrono::seconds& max_chain() const { return max_chain_; }
  ~TicketKeys();
  TicketKeys(const TicketKeys&) = delete;
  TicketKeys& operator=(const TicketKeys&) = delete;

  // The key new tickets are encrypted with, rotated first when due.
  // False only when the random generator fails.
  bool current(Clock::time_point now, Key& out);
  // The key named `name`: the current one, an older one still valid for
  // decryption (the ticket should be renewed), or none (expired or
  // unknown: full handshake).
  Found find(const unsigned char* name, Clock::time_point now, Key& out);
  // Wipes keys past decryption even when no handshake comes (called
  // periodically).
  void expire(Clock::time_point now);
  std::uint64_t rotations() const;

 private:
  bool rotate_if_due(Clock::time_point now);  // mutex held
  void wipe_expired(Clock::time_point now);   // mutex held

  std::chrono::milliseconds lifetime_;
  std::chrono::seconds max_chain_;
  mutable std::mutex mu_;
  Key current_, previous_;
  bool have_current_ = false, have_previous_ = false;
  Clock::time_point current_made_{}, previous_made_{};
  std::uint64_t rotations_ = 0;
};

// What the connection's handler offers the ticket callbacks (app data of
// the client-facing SSL, see ClientHandshakeHandler).
using TicketBinding = std::array<unsigned char, 32>;
TicketBinding certificate_binding(X509* forged);

// Turns tickets on for the client-facing context: keys from `keys` (which
// must outlive the context), lifetime hint and session timeout `lifetime`,
// one ticket per handshake, each bound as described above.
bool enable_client_tickets(SSL_CTX* ctx, TicketKeys* keys, std::chrono::milliseconds lifetime,
                           std::string* error);

}  // namespace sightline::tls
