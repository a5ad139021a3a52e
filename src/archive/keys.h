// The archive's Ed25519 signing key: sealed segments' manifests are signed
// with it, and `sightline archive verify` checks them with its public half.
#pragma once

#include "tls/ossl.h"

#include <optional>
#include <string>
#include <string_view>

namespace sightline::archive {

// Writes a new key: FILE (PKCS#8 PEM, mode 0600, never overwrites) and
// FILE.pub (public key PEM). False with *error set on failure.
bool keygen(const std::string& path, std::string* error);

// The private key, for signing. Null with *error set on failure.
tls::EvpPkeyPtr load_signing_key(const std::string& path, std::string* error);
// A public or private key PEM (the public half of a private key is used).
tls::EvpPkeyPtr load_verify_key(const std::string& path, std::string* error);

// SHA-256 of the DER-encoded public key, lower-case hex.
std::string key_fingerprint(EVP_PKEY* key);

// Ed25519 signature over `data`, base64; nullopt with *error on failure.
std::optional<std::string> sign_base64(EVP_PKEY* key, std::string_view data, std::string* error);
bool verify_base64(EVP_PKEY* key, std::string_view data, std::string_view signature_b64);

}  // namespace sightline::archive
