// Verification of the origin's certificate chain and name: the one component
// that decides whether a forged certificate may be trusted by the client.
#pragma once

#include "tls/ossl.h"

#include <string>
#include <string_view>

namespace sightline::tls {

enum class OnInvalid { block, forward_untrusted };

// Per-connection verification record, attached to the upstream SSL.
struct UpstreamVerifyState {
  bool allow_invalid = false;  // forward-untrusted: finish the handshake anyway
  int first_error = X509_V_OK;
  int first_error_depth = -1;
  std::string first_error_detail;  // e.g. "expired on Jan  1 00:00:00 2021 GMT"
};

// Bounded set of verdicts (used as a metric label later).
// "ok", "expired", "not-yet-valid", "hostname-mismatch", "self-signed",
// "unknown-issuer", "revoked", "invalid".
std::string_view verdict_for(int x509_error);
std::string reason_for(const UpstreamVerifyState& state);

// Installs the verification callback and trust store settings on the
// upstream context. `ca_file` empty: the system trust store. `crl_file`
// non-empty: leaf revocation is checked against the CRLs in that file.
bool configure_upstream_verification(SSL_CTX* ctx, const std::string& ca_file,
                                     const std::string& crl_file, std::string* error);

// Sets the expected name (DNS name or IP literal) on a new upstream SSL and
// attaches `state`.
bool prepare_upstream_ssl(SSL* ssl, const std::string& verify_name, bool is_ip,
                          UpstreamVerifyState* state);
// Detaches the state from an SSL that outlives it (an origin connection
// handed to the reuse pool); a later verification would relax nothing.
void detach_verify_state(SSL* ssl);

}  // namespace sightline::tls
