#include "tls/client_tickets.h"
#include "tls/contexts.h"
#include "tls/forge.h"
#include "tls/leaf_keys.h"

#include <doctest/doctest.h>

using namespace sightline::tls;
using std::chrono::hours;
using std::chrono::minutes;

TEST_CASE("ticket keys rotate every lifetime and decrypt one lifetime more") {
  TicketKeys keys(hours(1));
  auto t0 = TicketKeys::Clock::time_point{} + hours(100);
  TicketKeys::Key k1, k2, k3, found;
  REQUIRE(keys.current(t0, k1));
  REQUIRE(keys.current(t0 + minutes(59), k2));
  CHECK(k1.name == k2.name);  // not due yet
  CHECK(keys.find(k1.name.data(), t0 + minutes(59), found) == TicketKeys::Found::current);
  CHECK(found.aes == k1.aes);

  REQUIRE(keys.current(t0 + minutes(61), k2));
  CHECK(k2.name != k1.name);
  CHECK(k2.aes != k1.aes);
  CHECK(k2.hmac != k1.hmac);
  CHECK(keys.find(k1.name.data(), t0 + minutes(62), found) == TicketKeys::Found::previous);
  CHECK(found.hmac == k1.hmac);
  CHECK(keys.find(k2.name.data(), t0 + minutes(62), found) == TicketKeys::Found::current);
  // k1 made at t0: its tickets are all expired two lifetimes later.
  CHECK(keys.find(k1.name.data(), t0 + minutes(119), found) == TicketKeys::Found::previous);
  CHECK(keys.find(k1.name.data(), t0 + minutes(120), found) == TicketKeys::Found::none);

  REQUIRE(keys.current(t0 + minutes(122), k3));
  CHECK(keys.find(k2.name.data(), t0 + minutes(122), found) == TicketKeys::Found::previous);
  CHECK(keys.rotations() == 3);

  unsigned char unknown[16] = {};
  CHECK(keys.find(unknown, t0 + minutes(122), found) == TicketKeys::Found::none);
}

TEST_CASE("a late rotation does not extend the old key; expire wipes idle keys") {
  TicketKeys keys(hours(1));
  auto t0 = TicketKeys::Clock::time_point{} + hours(100);
  TicketKeys::Key k1, k2, found;
  REQUIRE(keys.current(t0, k1));
  // No handshake for 110 minutes: k1 issued tickets until t0 + 60 min at most.
  CHECK(keys.find(k1.name.data(), t0 + minutes(110), found) == TicketKeys::Found::previous);
  REQUIRE(keys.current(t0 + minutes(110), k2));
  CHECK(keys.find(k1.name.data(), t0 + minutes(115), found) == TicketKeys::Found::previous);
  CHECK(keys.find(k1.name.data(), t0 + minutes(121), found) == TicketKeys::Found::none);
  // Nothing at all for two lifetimes: expire() alone wipes k2.
  keys.expire(t0 + minutes(110) + hours(2));
  CHECK(keys.find(k2.name.data(), t0 + minutes(110) + minutes(1), found) == TicketKeys::Found::none);
}

namespace {

struct Handler : ClientHandshakeHandler {
  TicketBinding binding{};
  int refused = 0;
  int on_client_hello(SSL*, int*) override { return SSL_CLIENT_HELLO_SUCCESS; }
  std::string_view selected_alpn() const override { return {}; }
  const TicketBinding* ticket_binding() const override { return &binding; }
  void on_ticket_refused() override { ++refused; }
};

struct Endpoints {
  SslPtr client, server;
};

// Client and server joined by a BIO pair, handshaken; the client has read
// whatever the server sent after the handshake (TLS 1.3 tickets).
Endpoints handshake(SSL_CTX* server_ctx, SSL_CTX* client_ctx, Handler& h, SSL_SESSION* session) {
  Endpoints e{SslPtr(SSL_new(client_ctx)), SslPtr(SSL_new(server_ctx))};
  REQUIRE(e.client);
  REQUIRE(e.server);
  BIO *a = nullptr, *b = nullptr;
  REQUIRE(BIO_new_bio_pair(&a, 0, &b, 0) == 1);
  SSL_set_bio(e.client.get(), a, a);
  SSL_set_bio(e.server.get(), b, b);
  SSL_set_app_data(e.server.get(), static_cast<ClientHandshakeHandler*>(&h));
  SSL_set_tlsext_host_name(e.client.get(), "www.example.test");
  if (session) SSL_set_session(e.client.get(), session);
  SSL_set_connect_state(e.client.get());
  SSL_set_accept_state(e.server.get());
  bool c_done = false, s_done = false;
  for (int i = 0; i < 20 && !(c_done && s_done); ++i) {
    if (!c_done) c_done = SSL_do_handshake(e.client.get()) == 1;
    if (!s_done) s_done = SSL_do_handshake(e.server.get()) == 1;
  }
  REQUIRE(c_done);
  REQUIRE(s_done);
  char buf[16];
  CHECK(SSL_read(e.client.get(), buf, sizeof buf) <= 0);  // processes the tickets, no data
  ERR_clear_error();
  return e;
}

// A server context with a forged-style leaf and tickets on, and a client
// context that keeps sessions.
struct TicketPair {
  SslCtxPtr server_ctx{SSL_CTX_new(TLS_server_method())};
  SslCtxPtr client_ctx{SSL_CTX_new(TLS_client_method())};
  IssuingCa ca;
  EvpPkeyPtr key = generate_key(LeafKeyType::ec_p256);
  X509Ptr cert;

  TicketPair(TicketKeys& keys, int max_version = TLS1_3_VERSION) {
    REQUIRE(server_ctx);
    REQUIRE(client_ctx);
    SSL_CTX_set_max_proto_version(client_ctx.get(), max_version);
    SSL_CTX_set_session_cache_mode(client_ctx.get(), SSL_SESS_CACHE_CLIENT);
    ca.key = generate_key(LeafKeyType::ec_p256);
    ca.cert = make_self_signed_ca(ca.key.get(), "unit test CA");
    cert = leaf();
    REQUIRE(SSL_CTX_use_certificate(server_ctx.get(), cert.get()) == 1);
    REQUIRE(SSL_CTX_use_PrivateKey(server_ctx.get(), key.get()) == 1);
    std::string error;
    REQUIRE_MESSAGE(enable_client_tickets(server_ctx.get(), &keys, hours(1), &error), error);
  }
  // Another certificate for the same name (a fresh serial).
  X509Ptr leaf() {
    std::string error;
    auto x = forge_for_name("www.example.test", false, ca, key.get(), &error);
    REQUIRE_MESSAGE(x, error);
    return x;
  }
};

}  // namespace

TEST_CASE("a client ticket resumes only under the certificate it was issued with") {
  for (int version : {TLS1_3_VERSION, TLS1_2_VERSION}) {
    CAPTURE(version);
    TicketKeys keys(hours(1));
    TicketPair pair(keys, version);
    SSL_CTX* server_ctx = pair.server_ctx.get();
    SSL_CTX* client_ctx = pair.client_ctx.get();

    Handler h;
    h.binding = certificate_binding(pair.cert.get());
    auto first = handshake(server_ctx, client_ctx, h, nullptr);
    CHECK(SSL_session_reused(first.server.get()) == 0);
    SSL_SESSION* ticket = SSL_get1_session(first.client.get());
    const unsigned char* first_ticket = nullptr;
    std::size_t first_len = 0;
    REQUIRE(ticket);
    CHECK(SSL_SESSION_has_ticket(ticket) == 1);
    CHECK(SSL_SESSION_get_ticket_lifetime_hint(ticket) == 3600);
    SSL_SESSION_get0_ticket(ticket, &first_ticket, &first_len);
    std::string first_bytes(reinterpret_cast<const char*>(first_ticket), first_len);

    auto resumed = handshake(server_ctx, client_ctx, h, ticket);
    CHECK(SSL_session_reused(resumed.server.get()) == 1);
    CHECK(h.refused == 0);
    // Clients use each TLS 1.3 ticket once; take the one the resumption gave.
    SSL_SESSION_free(ticket);
    ticket = SSL_get1_session(resumed.client.get());
    REQUIRE(ticket);
    CHECK(SSL_SESSION_has_ticket(ticket) == 1);
    if (version == TLS1_3_VERSION) {  // a fresh ticket, not the one used
      const unsigned char* t = nullptr;
      std::size_t n = 0;
      SSL_SESSION_get0_ticket(ticket, &t, &n);
      CHECK(std::string(reinterpret_cast<const char*>(t), n) != first_bytes);
    }

    // The same ticket where another certificate would be presented.
    auto other_cert = pair.leaf();
    h.binding = certificate_binding(other_cert.get());
    CHECK(h.binding != certificate_binding(pair.cert.get()));  // fresh serial: another certificate
    auto refused = handshake(server_ctx, client_ctx, h, ticket);
    CHECK(SSL_session_reused(refused.server.get()) == 0);
    CHECK(h.refused == 1);
    SSL_SESSION_free(ticket);
  }
}

TEST_CASE("no resumption past the chain limit") {
  TicketKeys keys(hours(1), std::chrono::seconds(-1));  // every chain is over the limit at once
  TicketPair pair(keys);
  Handler h;
  h.binding = certificate_binding(pair.cert.get());
  auto first = handshake(pair.server_ctx.get(), pair.client_ctx.get(), h, nullptr);
  SSL_SESSION* ticket = SSL_get1_session(first.client.get());
  REQUIRE(ticket);
  CHECK(SSL_SESSION_has_ticket(ticket) == 1);
  auto again = handshake(pair.server_ctx.get(), pair.client_ctx.get(), h, ticket);
  CHECK(SSL_session_reused(again.server.get()) == 0);
  CHECK(h.refused == 0);  // not a certificate mismatch
  SSL_SESSION_free(ticket);
}
