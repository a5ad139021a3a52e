#include "tls/upstream_verify.h"

#include <openssl/pem.h>

#include <cstdio>
#include <memory>

namespace sightline::tls {
namespace {

int verify_index() {
  static const int idx = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return idx;
}

std::string time_text(const ASN1_TIME* t) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || ASN1_TIME_print(bio.get(), t) != 1) return "?";
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(n));
}

int verify_callback(int preverify_ok, X509_STORE_CTX* store) {
  int err = X509_STORE_CTX_get_error(store);
  // A CRL file covers only the issuers it names; other chains are not
  // failed for lacking a CRL.
  if (!preverify_ok && err == X509_V_ERR_UNABLE_TO_GET_CRL) {
    X509_STORE_CTX_set_error(store, X509_V_OK);
    return 1;
  }
  auto* ssl = static_cast<SSL*>(
      X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
  auto* state = ssl ? static_cast<UpstreamVerifyState*>(SSL_get_ex_data(ssl, verify_index()))
                    : nullptr;
  if (!state) return preverify_ok;  // no state attached: never relax anything
  if (!preverify_ok && state->first_error == X509_V_OK) {
    state->first_error = err;
    state->first_error_depth = X509_STORE_CTX_get_error_depth(store);
    X509* cert = X509_STORE_CTX_get_current_cert(store);
    if (cert && err == X509_V_ERR_CERT_HAS_EXPIRED)
      state->first_error_detail = "expired on " + time_text(X509_get0_notAfter(cert));
    else if (cert && err == X509_V_ERR_CERT_NOT_YET_VALID)
      state->first_error_detail = "not valid before " + time_text(X509_get0_notBefore(cert));
  }
  return state->allow_invalid ? 1 : preverify_ok;
}

}  // namespace

std::string_view verdict_for(int e) {
  switch (e) {
    case X509_V_OK: return "ok";
    case X509_V_ERR_CERT_HAS_EXPIRED: return "expired";
    case X509_V_ERR_CERT_NOT_YET_VALID: return "not-yet-valid";
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH: return "hostname-mismatch";
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT: return "self-signed";
    // A chain ending in a root the trust store does not hold.
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE: return "unknown-issuer";
    case X509_V_ERR_CERT_REVOKED: return "revoked";
    default: return "invalid";
  }
}

std::string reason_for(const UpstreamVerifyState& state) {
  std::string r = X509_verify_cert_error_string(state.first_error);
  if (!state.first_error_detail.empty()) r += ": " + state.first_error_detail;
  if (state.first_error_depth >= 0) r += " (chain depth " + std::to_string(state.first_error_depth) + ")";
  return r;
}

bool configure_upstream_verification(SSL_CTX* ctx, const std::string& ca_file,
                                     const std::string& crl_file, std::string* error) {
  if (ca_file.empty()) {
    if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
      if (error) *error = "system trust store: " + drain_errors();
      return false;
    }
  } else if (SSL_CTX_load_verify_locations(ctx, ca_file.c_str(), nullptr) != 1) {
    if (error) *error = "upstream CA file " + ca_file + ": " + drain_errors();
    return false;
  }
  if (!crl_file.empty()) {
    BioPtr bio(BIO_new_file(crl_file.c_str(), "r"));
    if (!bio) {
      if (error) *error = "CRL file " + crl_file + ": " + drain_errors();
      return false;
    }
    X509_STORE* store = SSL_CTX_get_cert_store(ctx);
    int count = 0;
    while (X509_CRL* crl = PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr)) {
      X509_STORE_add_crl(store, crl);
      X509_CRL_free(crl);
      ++count;
    }
    ERR_clear_error();
    if (count == 0) {
      if (error) *error = "CRL file " + crl_file + ": no PEM CRL found";
      return false;
    }
    X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, verify_callback);
  SSL_CTX_set_verify_depth(ctx, 10);
  return true;
}

void detach_verify_state(SSL* ssl) { SSL_set_ex_data(ssl, verify_index(), nullptr); }

bool prepare_upstream_ssl(SSL* ssl, const std::string& verify_name, bool is_ip,
                          UpstreamVerifyState* state) {
  SSL_set_ex_data(ssl, verify_index(), state);
  X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
  // As browsers (and RFC 9525): the name must be in a subjectAltName; the
  // subject CN of a certificate without DNS names is never matched.
  X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS |
                                             X509_CHECK_FLAG_NEVER_CHECK_SUBJECT);
  if (is_ip) return X509_VERIFY_PARAM_set1_ip_asc(param, verify_name.c_str()) == 1;
  return SSL_set1_host(ssl, verify_name.c_str()) == 1;
}

}  // namespace sightline::tls
