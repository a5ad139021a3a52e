// On-the-fly leaf certificates that stand in for an origin's certificate.
// Names are copied as GENERAL_NAME structures, never through OpenSSL's
// config-string extension API, so a crafted origin name cannot inject
// extensions.
#pragma once

#include "tls/enterprise_ca.h"
#include "tls/ossl.h"

#include <string>

namespace sightline::tls {

// Mirrors subject CN and every DNS/IP subjectAltName of `origin`; validity is
// the intersection of the origin's and the CA's; fresh 127-bit positive serial;
// keyUsage digitalSignature (+keyEncipherment for RSA keys), EKU serverAuth,
// SKI/AKI; signed by `ca` with SHA-256.
X509Ptr forge_leaf(X509* origin, const IssuingCa& ca, EVP_PKEY* leaf_key, std::string* error);

// A short-lived leaf (one day, within the CA's validity) for one name only:
// CN and a single DNS or IP subjectAltName. Presented when the proxy itself
// answers (error pages) and no origin certificate may be mirrored.
X509Ptr forge_for_name(const std::string& name, bool is_ip, const IssuingCa& ca,
                       EVP_PKEY* leaf_key, std::string* error);

// Self-signed CA certificate (CA:TRUE, pathlen 0, keyCertSign|cRLSign), valid
// from one hour ago for ten years. Used for the untrusted CA and in tests.
X509Ptr make_self_signed_ca(EVP_PKEY* key, const char* common_name);

}  // namespace sightline::tls
