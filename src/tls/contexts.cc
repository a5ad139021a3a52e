#include "tls/contexts.h"

#include "sightline_build.h"

#include <cstring>

namespace sightline::tls {
namespace {

// TLS 1.3: OpenSSL's default suites, named here so that a system openssl.cnf
// (Ciphersuites = ...) cannot add others such as TLS_AES_128_CCM_8_SHA256.
constexpr const char* kTls13Ciphers =
    "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256";
// Handshake signatures: OpenSSL's default list without SHA-224 and DSA, which
// no browser offers (SHA-1 is already excluded by security level 2).
constexpr const char* kSigalgs =
    "ECDSA+SHA256:ECDSA+SHA384:ECDSA+SHA512:ed25519:ed448:"
    "rsa_pss_pss_sha256:rsa_pss_pss_sha384:rsa_pss_pss_sha512:"
    "rsa_pss_rsae_sha256:rsa_pss_rsae_sha384:rsa_pss_rsae_sha512:"
    "RSA+SHA256:RSA+SHA384:RSA+SHA512";
// Mozilla "intermediate" TLS 1.2 suites: ECDHE key exchange, AEAD only.
constexpr const char* kTls12Ciphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
// Toward origins, also ECDHE-CBC for old servers that browsers still reach;
// never static-RSA key exchange, RC4, 3DES or NULL.
constexpr const char* kUpstreamTls12Ciphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA";

int client_hello_trampoline(SSL* ssl, int* alert, void*) {
  auto* h = static_cast<ClientHandshakeHandler*>(SSL_get_app_data(ssl));
  if (!h) {
    *alert = SSL_AD_INTERNAL_ERROR;
    return SSL_CLIENT_HELLO_ERROR;
  }
  return h->on_client_hello(ssl, alert);
}

int alpn_select_trampoline(SSL* ssl, const unsigned char** out, unsigned char* outlen,
                           const unsigned char* in, unsigned int inlen, void*) {
  auto* h = static_cast<ClientHandshakeHandler*>(SSL_get_app_data(ssl));
  if (!h) return SSL_TLSEXT_ERR_NOACK;
  std::string_view want = h->selected_alpn();
  if (want.empty()) return SSL_TLSEXT_ERR_NOACK;
  // Point into the client's own list: OpenSSL requires `out` to outlive the call.
  for (unsigned int i = 0; i < inlen;) {
    unsigned int len = in[i];
    if (i + 1 + len > inlen) break;
    if (std::string_view(reinterpret_cast<const char*>(in + i + 1), len) == want) {
      *out = in + i + 1;
      *outlen = static_cast<unsigned char>(len);
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + len;
  }
  return SSL_TLSEXT_ERR_NOACK;
}

int new_upstream_session(SSL* ssl, SSL_SESSION* session) {
  auto* sink = static_cast<UpstreamSessionSink*>(SSL_get_app_data(ssl));
  if (!sink) return 0;
  sink->on_upstream_session(session);
  return 1;  // the sink took the reference
}

bool common_settings(SSL_CTX* ctx, bool min13, const char* tls12_ciphers, std::string* error) {
  SSL_CTX_set_min_proto_version(ctx, min13 ? TLS1_3_VERSION : TLS1_2_VERSION);
  SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
  // Security level 2 (112-bit): RSA and DH keys of 2048 bits or more, ECC of
  // 224 or more, no SHA-1 signatures, in handshakes and certificate chains
  // (the origin's included). Debian's libssl defaults to it already; set here
  // so that neither another build of OpenSSL (upstream defaults to 1) nor a
  // system openssl.cnf (CipherString = ...:@SECLEVEL=1) can lower it. The
  // versions, suites, signature algorithms and groups below likewise
  // override that file.
  SSL_CTX_set_security_level(ctx, 2);
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
  // No SSL_MODE_RELEASE_BUFFERS: it frees and re-allocates the 17 KiB
  // record buffers around every record of a keep-alive connection. The
  // session frees them once a connection is quiet (Session::on_timer).
  if (SSL_CTX_set_cipher_list(ctx, tls12_ciphers) != 1 ||
      SSL_CTX_set_ciphersuites(ctx, kTls13Ciphers) != 1 ||
      SSL_CTX_set1_sigalgs_list(ctx, kSigalgs) != 1 ||
      SSL_CTX_set1_groups_list(ctx, group_list()) != 1) {
    if (error) *error = "TLS parameters: " + drain_errors();
    return false;
  }
  return true;
}

}  // namespace

const char* group_list() {
#if SIGHTLINE_HAVE_MLKEM
  return "X25519MLKEM768:X25519:P-256:P-384";
#else
  return "X25519:P-256:P-384";
#endif
}

bool build_contexts(const ContextOptions& opts, TlsContexts& out, std::string* error) {
  out.client.reset(SSL_CTX_new(TLS_server_method()));
  out.upstream.reset(SSL_CTX_new(TLS_client_method()));
  if (!out.client || !out.upstream) {
    if (error) *error = "SSL_CTX_new: " + drain_errors();
    return false;
  }
  if (!common_settings(out.client.get(), opts.client_min_tls13, kTls12Ciphers, error) ||
      !common_settings(out.upstream.get(), opts.upstream_min_tls13, kUpstreamTls12Ciphers, error))
    return false;

  // Client leg: only stateless tickets bound to the presented certificate
  // resume (client_tickets.h); no server-side session cache.
  SSL_CTX_set_session_cache_mode(out.client.get(), SSL_SESS_CACHE_OFF);
  if (opts.client_ticket_lifetime.count() > 0) {
    out.client_ticket_keys = std::make_unique<TicketKeys>(opts.client_ticket_lifetime);
    if (!enable_client_tickets(out.client.get(), out.client_ticket_keys.get(),
                               opts.client_ticket_lifetime, error))
      return false;
  } else {
    SSL_CTX_set_options(out.client.get(), SSL_OP_NO_TICKET);
    SSL_CTX_set_num_tickets(out.client.get(), 0);
  }
  SSL_CTX_set_client_hello_cb(out.client.get(), client_hello_trampoline, nullptr);
  SSL_CTX_set_alpn_select_cb(out.client.get(), alpn_select_trampoline, nullptr);

  // Toward origins, sessions are kept by the workers (see
  // UpstreamSessionCache), not in OpenSSL's internal cache.
  SSL_CTX_set_session_cache_mode(out.upstream.get(),
                                 SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_sess_set_new_cb(out.upstream.get(), new_upstream_session);
  return configure_upstream_verification(out.upstream.get(), opts.upstream_ca_file,
                                         opts.upstream_crl_file, error);
}

}  // namespace sightline::tls
