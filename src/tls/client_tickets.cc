#include "tls/client_tickets.h"

#include "tls/contexts.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <cstring>

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

int generate_ticket(SSL* ssl, void*) {
  auto* h = static_cast<ClientHandshakeHandler*>(SSL_get_app_data(ssl));
  const TicketBinding* b = h ? h->ticket_binding() : nullptr;
  // Without a binding the ticket carries none and is never accepted.
  if (b && SSL_SESSION_set1_ticket_appdata(SSL_get0_session(ssl), b->data(), b->size()) != 1)
    return 0;
  return 1;
}

SSL_TICKET_RETURN decrypt_ticket(SSL* ssl, SSL_SESSION* session, const unsigned char*, size_t,
                                 SSL_TICKET_STATUS status, void*) {
  switch (status) {
    case SSL_TICKET_SUCCESS:
    case SSL_TICKET_SUCCESS_RENEW:
      break;
    case SSL_TICKET_FATAL_ERR_MALLOC:
    case SSL_TICKET_FATAL_ERR_OTHER:
      return SSL_TICKET_RETURN_ABORT;
    default:  // none offered, empty, or not decryptable (rotated away): full handshake
      return SSL_TICKET_RETURN_IGNORE_RENEW;
  }
  auto* h = static_cast<ClientHandshakeHandler*>(SSL_get_app_data(ssl));
  const TicketBinding* b = h ? h->ticket_binding() : nullptr;
  void* data = nullptr;
  std::size_t len = 0;
  if (!b || SSL_SESSION_get0_ticket_appdata(session, &data, &len) != 1 || len != b->size() ||
      CRYPTO_memcmp(data, b->data(), len) != 0) {
    if (h) h->on_ticket_refused();
    return SSL_TICKET_RETURN_IGNORE_RENEW;
  }
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

TicketKeys::TicketKeys(std::chrono::milliseconds lifetime) : lifetime_(lifetime) {}

TicketKeys::~TicketKeys() {
  OPENSSL_cleanse(&current_, sizeof current_);
  OPENSSL_cleanse(&previous_, sizeof previous_);
}

bool TicketKeys::rotate_if_due(Clock::time_point now) {
  if (have_current_ && now - rotated_at_ < lifetime_) return true;
  // Rotation is lazy: the current key was last used for new tickets before
  // rotated_at_ + lifetime, so its tickets are all expired 2 × lifetime
  // after it was made.
  have_previous_ = have_current_ && now - rotated_at_ < 2 * lifetime_;
  if (have_previous_) previous_ = current_;
  else OPENSSL_cleanse(&previous_, sizeof previous_);
  have_current_ = fill_random(current_);
  if (!have_current_) {
    OPENSSL_cleanse(&current_, sizeof current_);
    return false;
  }
  rotated_at_ = now;
  ++rotations_;
  return true;
}

bool TicketKeys::current(Clock::time_point now, Key& out) {
  std::lock_guard lock(mu_);
  if (!rotate_if_due(now)) return false;
  out = current_;
  return true;
}

TicketKeys::Found TicketKeys::find(const unsigned char* name, Clock::time_point now, Key& out) {
  std::lock_guard lock(mu_);
  rotate_if_due(now);
  if (have_current_ && CRYPTO_memcmp(name, current_.name.data(), current_.name.size()) == 0) {
    out = current_;
    return Found::current;
  }
  if (have_previous_ && CRYPTO_memcmp(name, previous_.name.data(), previous_.name.size()) == 0) {
    out = previous_;
    return Found::previous;
  }
  return Found::none;
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
      SSL_CTX_set_session_ticket_cb(ctx, generate_ticket, decrypt_ticket, nullptr) != 1) {
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
