#include "tls/client_tickets.h"

#include "tls/contexts.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cstring>
#include <ctime>

namespace sightline::tls {
namespace {

int keys_index() {
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

// One fetch for the life of the process: OpenSSL 3.0 would otherwise look
// the implementation up again for every ticket.
const EVP_CIPHER* ticket_cipher() {
  static EVP_CIPHER* const cipher = EVP_CIPHER_fetch(nullptr, "AES-256-CBC", nullptr);
  return cipher;
}

bool set_mac_key(EVP_MAC_CTX* hctx, TicketKeys::Key& k) {
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, k.hmac.data(), k.hmac.size()),
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_end(),
  };
  return EVP_MAC_CTX_set_params(hctx, params) == 1;
}

// OpenSSL's ticket key callback: 1 = keys set, 2 = set and renew the
// ticket (made with the previous key), 0 = unknown key (full handshake),
// -1 = error.
int ticket_key_cb(SSL* ssl, unsigned char key_name[16], unsigned char iv[EVP_MAX_IV_LENGTH],
                  EVP_CIPHER_CTX* cctx, EVP_MAC_CTX* hctx, int enc) {
  auto* keys = static_cast<TicketKeys*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), keys_index()));
  const EVP_CIPHER* cipher = ticket_cipher();
  if (!keys || !cipher) return -1;
  TicketKeys::Key k;
  auto now = TicketKeys::Clock::now();
  int rc = -1;
  if (enc) {
    if (keys->current(now, k) && RAND_bytes(iv, EVP_CIPHER_get_iv_length(cipher)) == 1 &&
        EVP_EncryptInit_ex2(cctx, cipher, k.aes.data(), iv, nullptr) == 1 && set_mac_key(hctx, k)) {
      std::memcpy(key_name, k.name.data(), k.name.size());
      rc = 1;
    }
  } else {
    auto found = keys->find(key_name, now, k);
    if (found == TicketKeys::Found::none)
      rc = 0;
    else if (EVP_DecryptInit_ex2(cctx, cipher, k.aes.data(), iv, nullptr) == 1 && set_mac_key(hctx, k))
      rc = found == TicketKeys::Found::previous ? 2 : 1;
  }
  OPENSSL_cleanse(&k, sizeof k);
  return rc;
}

// A ticket's app data: the binding, then the time (seconds since the
// epoch, 8 bytes big-endian) of the full handshake its resumption chain
// started from.
constexpr std::size_t kAppDataSize = sizeof(TicketBinding) + 8;

std::int64_t chain_start(const unsigned char* data) {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < 8; ++i) v = (v << 8) | data[sizeof(TicketBinding) + i];
  return static_cast<std::int64_t>(v);
}

int generate_ticket(SSL* ssl, void*) {
  auto* h = static_cast<ClientHandshakeHandler*>(SSL_get_app_data(ssl));
  const TicketBinding* b = h ? h->ticket_binding() : nullptr;
  if (!b) return 1;  // a ticket without app data is never accepted
  SSL_SESSION* session = SSL_get0_session(ssl);
  std::array<unsigned char, kAppDataSize> data{};
  std::memcpy(data.data(), b->data(), b->size());
  // A resumption's new ticket continues the chain: it keeps the start.
  auto start = static_cast<std::uint64_t>(std::time(nullptr));
  void* old = nullptr;
  std::size_t old_len = 0;
  if (SSL_session_reused(ssl) && SSL_SESSION_get0_ticket_appdata(session, &old, &old_len) == 1 &&
      old_len == kAppDataSize)
    start = static_cast<std::uint64_t>(chain_start(static_cast<const unsigned char*>(old)));
  for (std::size_t i = 0; i < 8; ++i)
    data[sizeof(TicketBinding) + i] = static_cast<unsigned char>(start >> (56 - 8 * i));
  return SSL_SESSION_set1_ticket_appdata(session, data.data(), data.size()) == 1 ? 1 : 0;
}

SSL_TICKET_RETURN decrypt_ticket(SSL* ssl, SSL_SESSION* session, const unsigned char*, size_t,
                                 SSL_TICKET_STATUS status, void* arg) {
  auto* h = static_cast<ClientHandshakeHandler*>(SSL_get_app_data(ssl));
  const TicketBinding* b = h ? h->ticket_binding() : nullptr;
  // Not resumed. With a binding a new ticket follows; without one none
  // (TLS 1.2 issues one only on "renew"; TLS 1.3 has num_tickets 0 then).
  const SSL_TICKET_RETURN full = b ? SSL_TICKET_RETURN_IGNORE_RENEW : SSL_TICKET_RETURN_IGNORE;
  switch (status) {
    case SSL_TICKET_SUCCESS:
    case SSL_TICKET_SUCCESS_RENEW:
      break;
    case SSL_TICKET_FATAL_ERR_MALLOC:
    case SSL_TICKET_FATAL_ERR_OTHER:
      return SSL_TICKET_RETURN_ABORT;
    default:  // none offered, empty, or not decryptable (rotated away)
      return full;
  }
  void* data = nullptr;
  std::size_t len = 0;
  if (SSL_SESSION_get0_ticket_appdata(session, &data, &len) != 1 || len != kAppDataSize) return full;
  auto* bytes = static_cast<const unsigned char*>(data);
  if (!b || CRYPTO_memcmp(bytes, b->data(), b->size()) != 0) {
    if (h) h->on_ticket_refused();
    return full;
  }
  // RFC 8446 4.6.1: bound how long renewed tickets extend the first
  // handshake's authentication.
  auto max_chain = *static_cast<const std::chrono::seconds*>(arg);
  if (std::time(nullptr) - chain_start(bytes) > max_chain.count()) return full;
  // TLS 1.3 clients use a ticket once (RFC 8446 C.4), and OpenSSL sends a
  // new one after a resumption only when asked to renew.
  bool renew = status == SSL_TICKET_SUCCESS_RENEW || SSL_version(ssl) == TLS1_3_VERSION;
  return renew ? SSL_TICKET_RETURN_USE_RENEW : SSL_TICKET_RETURN_USE;
}

bool fill_random(TicketKeys::Key& k) {
  return RAND_bytes(k.name.data(), static_cast<int>(k.name.size())) == 1 &&
         RAND_priv_bytes(k.aes.data(), static_cast<int>(k.aes.size())) == 1 &&
         RAND_priv_bytes(k.hmac.data(), static_cast<int>(k.hmac.size())) == 1;
}

}  // namespace

TicketKeys::TicketKeys(std::chrono::milliseconds lifetime, std::optional<std::chrono::seconds> max_chain)
    : lifetime_(lifetime),
      max_chain_(max_chain.value_or(std::max<std::chrono::seconds>(
          std::chrono::hours(24), std::chrono::duration_cast<std::chrono::seconds>(lifetime)))) {}

TicketKeys::~TicketKeys() {
  OPENSSL_cleanse(&current_, sizeof current_);
  OPENSSL_cleanse(&previous_, sizeof previous_);
}

// A key encrypts new tickets for one lifetime from when it was made, and
// decrypts them for one more: its tickets expire by then.
bool TicketKeys::rotate_if_due(Clock::time_point now) {
  if (have_current_ && now - current_made_ < lifetime_) return true;
  Key fresh;
  if (!fill_random(fresh)) {
    OPENSSL_cleanse(&fresh, sizeof fresh);
    return false;  // the keys stay as they were
  }
  if (have_current_ && now - current_made_ < 2 * lifetime_) {
    previous_ = current_;
    previous_made_ = current_made_;
    have_previous_ = true;
  } else {
    OPENSSL_cleanse(&previous_, sizeof previous_);
    have_previous_ = false;
  }
  current_ = fresh;
  OPENSSL_cleanse(&fresh, sizeof fresh);
  current_made_ = now;
  have_current_ = true;
  ++rotations_;
  return true;
}

void TicketKeys::wipe_expired(Clock::time_point now) {
  if (have_previous_ && now - previous_made_ >= 2 * lifetime_) {
    OPENSSL_cleanse(&previous_, sizeof previous_);
    have_previous_ = false;
  }
  if (have_current_ && now - current_made_ >= 2 * lifetime_) {
    OPENSSL_cleanse(&current_, sizeof current_);
    have_current_ = false;
  }
}

bool TicketKeys::current(Clock::time_point now, Key& out) {
  std::lock_guard lock(mu_);
  wipe_expired(now);
  if (!rotate_if_due(now)) return false;
  out = current_;
  return true;
}

TicketKeys::Found TicketKeys::find(const unsigned char* name, Clock::time_point now, Key& out) {
  std::lock_guard lock(mu_);
  wipe_expired(now);
  if (have_current_ && CRYPTO_memcmp(name, current_.name.data(), current_.name.size()) == 0) {
    out = current_;
    // Made with a key that is due for rotation: replace it.
    return now - current_made_ < lifetime_ ? Found::current : Found::previous;
  }
  if (have_previous_ && CRYPTO_memcmp(name, previous_.name.data(), previous_.name.size()) == 0) {
    out = previous_;
    return Found::previous;
  }
  return Found::none;
}

void TicketKeys::expire(Clock::time_point now) {
  std::lock_guard lock(mu_);
  wipe_expired(now);
}

std::uint64_t TicketKeys::rotations() const {
  std::lock_guard lock(mu_);
  return rotations_;
}

TicketBinding certificate_binding(X509* forged) {
  TicketBinding b{};
  unsigned int len = 0;
  if (X509_digest(forged, EVP_sha256(), b.data(), &len) != 1 || len != b.size()) {
    // Unreachable in practice; a random binding matches no ticket.
    ERR_clear_error();
    RAND_bytes(b.data(), static_cast<int>(b.size()));
  }
  return b;
}

bool enable_client_tickets(SSL_CTX* ctx, TicketKeys* keys, std::chrono::milliseconds lifetime,
                           std::string* error) {
  auto seconds = std::chrono::duration_cast<std::chrono::seconds>(lifetime).count();
  if (!ticket_cipher() || SSL_CTX_set_ex_data(ctx, keys_index(), keys) != 1 ||
      SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_key_cb) != 1 ||
      SSL_CTX_set_session_ticket_cb(ctx, generate_ticket, decrypt_ticket,
                                    const_cast<std::chrono::seconds*>(&keys->max_chain())) != 1) {
    if (error) *error = "session tickets: " + drain_errors();
    return false;
  }
  SSL_CTX_clear_options(ctx, SSL_OP_NO_TICKET);
  // Stateless tickets only: nothing is cached server-side (TLS 1.2 session
  // IDs are not resumed).
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_timeout(ctx, seconds > 0 ? seconds : 1);
  // One ticket per handshake (OpenSSL sends two by default); a resumption
  // gets a fresh one.
  SSL_CTX_set_num_tickets(ctx, 1);
  return true;
}

}  // namespace sightline::tls
