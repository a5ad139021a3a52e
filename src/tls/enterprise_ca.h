// The issuing CA that signs forged leaves: the enterprise CA loaded from disk,
// or the in-memory untrusted CA used for on_invalid = "forward-untrusted".
#pragma once

#include "tls/ossl.h"

#include <optional>
#include <string>

namespace sightline::tls {

struct IssuingCa {
  X509Ptr cert;
  EvpPkeyPtr key;
  X509StackPtr chain;  // sent after the leaf: the issuing cert and its intermediates
  std::string subject;  // one-line, for logs
};

// Loads `cert_file` (issuing CA first, then optional intermediates/root) and
// `key_file`. Refuses a key readable by group or others, a key that does not
// match, and a certificate that is not a CA allowed to sign certificates.
std::optional<IssuingCa> load_issuing_ca(const std::string& cert_file,
                                         const std::string& key_file, std::string* error);

// A fresh self-signed ECDSA P-256 CA that no client trusts, generated in
// memory at start. Leaves it signs fail validation exactly like the invalid
// origin certificate they stand for.
std::optional<IssuingCa> make_untrusted_ca(std::string* error);

}  // namespace sightline::tls
