// The two TLS contexts of the interception path: the client-facing one (the
// proxy acts as server with forged certificates) and the upstream one (the
// proxy acts as a verifying client). Both are built once and shared by all
// workers; SSL_CTX is safe to use from several threads for SSL_new.
#pragma once

#include "tls/client_tickets.h"
#include "tls/ossl.h"
#include "tls/upstream_verify.h"

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace sightline::tls {

// Receives new sessions from origins (TLS 1.3 tickets arrive after the
// handshake); attached to upstream SSLs as app data.
class UpstreamSessionSink {
 public:
  virtual ~UpstreamSessionSink() = default;
  // Takes ownership of `session` (one reference).
  virtual void on_upstream_session(SSL_SESSION* session) = 0;
};

// Implemented by whoever owns a client-facing SSL; attached as app data.
class ClientHandshakeHandler {
 public:
  virtual ~ClientHandshakeHandler() = default;
  // Return SSL_CLIENT_HELLO_SUCCESS, _RETRY (suspend the handshake) or _ERROR
  // (with *alert set). Installs the leaf when it succeeds.
  virtual int on_client_hello(SSL* ssl, int* alert) = 0;
  // The ALPN protocol to select from the client's offer, or empty for none.
  virtual std::string_view selected_alpn() const = 0;
  // What a session ticket must carry to resume this connection (see
  // client_tickets.h), or null when no certificate is chosen yet.
  virtual const TicketBinding* ticket_binding() const = 0;
  // The client offered a valid ticket issued under another certificate.
  virtual void on_ticket_refused() = 0;
};

struct ContextOptions {
  bool client_min_tls13 = false;
  // Session tickets toward clients; 0 turns them off.
  std::chrono::milliseconds client_ticket_lifetime{0};
  std::string upstream_ca_file;  // empty: system trust store
  std::string upstream_crl_file;
  bool upstream_min_tls13 = false;
};

struct TlsContexts {
  std::unique_ptr<TicketKeys> client_ticket_keys;  // outlives `client` (declared first)
  SslCtxPtr client;
  SslCtxPtr upstream;
};

// Group preference: X25519MLKEM768 first where OpenSSL has it (3.5+), then
// X25519, P-256, P-384.
const char* group_list();

bool build_contexts(const ContextOptions& opts, TlsContexts& out, std::string* error);

}  // namespace sightline::tls
