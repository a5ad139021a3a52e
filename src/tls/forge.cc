#include "tls/forge.h"

#include <arpa/inet.h>
#include <openssl/rand.h>

namespace sightline::tls {
namespace {

bool set_random_serial(X509* x) {
  unsigned char bytes[16];
  if (RAND_bytes(bytes, sizeof bytes) != 1) return false;
  bytes[0] &= 0x7f;  // positive
  bytes[0] |= 0x40;  // no leading zero octet: always 16 bytes, never zero
  BnPtr bn(BN_bin2bn(bytes, sizeof bytes, nullptr));
  if (!bn) return false;
  Asn1IntegerPtr serial(BN_to_ASN1_INTEGER(bn.get(), nullptr));
  return serial && X509_set_serialNumber(x, serial.get()) == 1;
}

bool add_key_ids(X509* x, X509* issuer) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  if (X509_pubkey_digest(x, EVP_sha1(), md, &md_len) != 1) return false;
  Asn1OctetStringPtr ski(ASN1_OCTET_STRING_new());
  if (!ski || ASN1_OCTET_STRING_set(ski.get(), md, static_cast<int>(md_len)) != 1) return false;
  if (X509_add1_ext_i2d(x, NID_subject_key_identifier, ski.get(), 0, X509V3_ADD_REPLACE) != 1)
    return false;
  const ASN1_OCTET_STRING* issuer_ski = issuer ? X509_get0_subject_key_id(issuer) : ski.get();
  if (!issuer_ski) return true;  // issuer without SKI: AKI cannot name it, leave it out
  AuthorityKeyIdPtr aki(AUTHORITY_KEYID_new());
  if (!aki) return false;
  aki->keyid = ASN1_OCTET_STRING_dup(issuer_ski);
  return aki->keyid &&
         X509_add1_ext_i2d(x, NID_authority_key_identifier, aki.get(), 0, X509V3_ADD_REPLACE) == 1;
}

bool add_key_usage(X509* x, int bits_set) {
  Asn1BitStringPtr ku(ASN1_BIT_STRING_new());
  if (!ku) return false;
  // Bit numbers per RFC 5280: 0 digitalSignature, 2 keyEncipherment, 5 keyCertSign, 6 cRLSign.
  for (int bit = 0; bit < 9; ++bit)
    if (bits_set & (1 << bit))
      if (ASN1_BIT_STRING_set_bit(ku.get(), bit, 1) != 1) return false;
  return X509_add1_ext_i2d(x, NID_key_usage, ku.get(), 1, X509V3_ADD_REPLACE) == 1;
}

bool add_basic_constraints(X509* x, bool ca, long pathlen) {
  BasicConstraintsPtr bc(BASIC_CONSTRAINTS_new());
  if (!bc) return false;
  bc->ca = ca ? 0xff : 0;
  if (ca && pathlen >= 0) {
    bc->pathlen = ASN1_INTEGER_new();
    if (!bc->pathlen || ASN1_INTEGER_set(bc->pathlen, pathlen) != 1) return false;
  }
  return X509_add1_ext_i2d(x, NID_basic_constraints, bc.get(), 1, X509V3_ADD_REPLACE) == 1;
}

bool add_server_auth_eku(X509* x) {
  ExtKeyUsagePtr eku(sk_ASN1_OBJECT_new_null());
  if (!eku) return false;
  ASN1_OBJECT* obj = OBJ_nid2obj(NID_server_auth);
  if (!obj || sk_ASN1_OBJECT_push(eku.get(), OBJ_dup(obj)) <= 0) return false;
  return X509_add1_ext_i2d(x, NID_ext_key_usage, eku.get(), 0, X509V3_ADD_REPLACE) == 1;
}

// Copies DNS and IP entries only: other name types (email, URI, otherName)
// have no meaning for a TLS server and are not worth the parsing risk.
bool copy_san(X509* origin, X509* x) {
  GeneralNamesPtr src(static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(origin, NID_subject_alt_name, nullptr, nullptr)));
  if (!src) return true;
  GeneralNamesPtr dst(sk_GENERAL_NAME_new_null());
  if (!dst) return false;
  for (int i = 0; i < sk_GENERAL_NAME_num(src.get()); ++i) {
    GENERAL_NAME* gn = sk_GENERAL_NAME_value(src.get(), i);
    if (gn->type != GEN_DNS && gn->type != GEN_IPADD) continue;
    GENERAL_NAME* copy = GENERAL_NAME_dup(gn);
    if (!copy) return false;
    if (sk_GENERAL_NAME_push(dst.get(), copy) <= 0) {
      GENERAL_NAME_free(copy);
      return false;
    }
  }
  if (sk_GENERAL_NAME_num(dst.get()) == 0) return true;
  return X509_add1_ext_i2d(x, NID_subject_alt_name, dst.get(), 0, X509V3_ADD_REPLACE) == 1;
}

bool copy_subject_cn(X509* origin, X509* x) {
  X509NamePtr name(X509_NAME_new());
  if (!name) return false;
  X509_NAME* src = X509_get_subject_name(origin);
  int idx = X509_NAME_get_index_by_NID(src, NID_commonName, -1);
  if (idx >= 0) {
    X509_NAME_ENTRY* e = X509_NAME_get_entry(src, idx);
    if (X509_NAME_add_entry(name.get(), e, -1, 0) != 1) return false;
  }
  return X509_set_subject_name(x, name.get()) == 1;
}

const ASN1_TIME* later(const ASN1_TIME* a, const ASN1_TIME* b) {
  return ASN1_TIME_compare(a, b) >= 0 ? a : b;
}
const ASN1_TIME* earlier(const ASN1_TIME* a, const ASN1_TIME* b) {
  return ASN1_TIME_compare(a, b) <= 0 ? a : b;
}

}  // namespace

X509Ptr forge_leaf(X509* origin, const IssuingCa& ca, EVP_PKEY* leaf_key, std::string* error) {
  auto fail = [&](const char* step) {
    if (error) *error = std::string("forge: ") + step + ": " + drain_errors();
    return X509Ptr();
  };
  X509Ptr x(X509_new());
  if (!x || X509_set_version(x.get(), 2) != 1) return fail("new certificate");
  if (!set_random_serial(x.get())) return fail("serial");
  if (!copy_subject_cn(origin, x.get())) return fail("subject");
  if (X509_set_issuer_name(x.get(), X509_get_subject_name(ca.cert.get())) != 1)
    return fail("issuer");
  const ASN1_TIME* nb = later(X509_get0_notBefore(origin), X509_get0_notBefore(ca.cert.get()));
  const ASN1_TIME* na = earlier(X509_get0_notAfter(origin), X509_get0_notAfter(ca.cert.get()));
  if (X509_set1_notBefore(x.get(), nb) != 1 || X509_set1_notAfter(x.get(), na) != 1)
    return fail("validity");
  if (X509_set_pubkey(x.get(), leaf_key) != 1) return fail("public key");
  bool rsa = EVP_PKEY_get_base_id(leaf_key) == EVP_PKEY_RSA;
  if (!add_basic_constraints(x.get(), false, -1)) return fail("basicConstraints");
  if (!add_key_usage(x.get(), rsa ? (1 << 0) | (1 << 2) : (1 << 0))) return fail("keyUsage");
  if (!add_server_auth_eku(x.get())) return fail("extendedKeyUsage");
  if (!copy_san(origin, x.get())) return fail("subjectAltName");
  if (!add_key_ids(x.get(), ca.cert.get())) return fail("key identifiers");
  if (X509_sign(x.get(), ca.key.get(), EVP_sha256()) <= 0) return fail("sign");
  return x;
}

X509Ptr forge_for_name(const std::string& name, bool is_ip, const IssuingCa& ca,
                       EVP_PKEY* leaf_key, std::string* error) {
  auto fail = [&](const char* step) {
    if (error) *error = std::string("forge: ") + step + ": " + drain_errors();
    return X509Ptr();
  };
  X509Ptr x(X509_new());
  if (!x || X509_set_version(x.get(), 2) != 1 || !set_random_serial(x.get()))
    return fail("new certificate");
  X509NamePtr subject(X509_NAME_new());
  // CN is limited to 64 characters; longer names live in the SAN only.
  if (!subject || (name.size() <= 64 &&
                   X509_NAME_add_entry_by_NID(subject.get(), NID_commonName, MBSTRING_UTF8,
                                              reinterpret_cast<const unsigned char*>(name.c_str()),
                                              -1, -1, 0) != 1) ||
      X509_set_subject_name(x.get(), subject.get()) != 1 ||
      X509_set_issuer_name(x.get(), X509_get_subject_name(ca.cert.get())) != 1)
    return fail("names");
  Asn1TimePtr not_after(X509_gmtime_adj(nullptr, 24 * 3600));
  if (!not_after || !X509_gmtime_adj(X509_getm_notBefore(x.get()), -3600) ||
      X509_set1_notAfter(x.get(), earlier(not_after.get(), X509_get0_notAfter(ca.cert.get()))) != 1)
    return fail("validity");
  if (X509_set_pubkey(x.get(), leaf_key) != 1) return fail("public key");
  GeneralNamesPtr sans(sk_GENERAL_NAME_new_null());
  GENERAL_NAME* gn = GENERAL_NAME_new();
  if (!sans || !gn) {
    GENERAL_NAME_free(gn);
    return fail("subjectAltName");
  }
  if (is_ip) {
    unsigned char addr[16];
    int len = 0;
    if (inet_pton(AF_INET, name.c_str(), addr) == 1) len = 4;
    else if (inet_pton(AF_INET6, name.c_str(), addr) == 1) len = 16;
    ASN1_OCTET_STRING* os = ASN1_OCTET_STRING_new();
    if (!len || !os || ASN1_OCTET_STRING_set(os, addr, len) != 1) {
      ASN1_OCTET_STRING_free(os);
      GENERAL_NAME_free(gn);
      return fail("IP subjectAltName");
    }
    GENERAL_NAME_set0_value(gn, GEN_IPADD, os);
  } else {
    ASN1_IA5STRING* s = ASN1_IA5STRING_new();
    if (!s || ASN1_STRING_set(s, name.data(), static_cast<int>(name.size())) != 1) {
      ASN1_IA5STRING_free(s);
      GENERAL_NAME_free(gn);
      return fail("DNS subjectAltName");
    }
    GENERAL_NAME_set0_value(gn, GEN_DNS, s);
  }
  if (sk_GENERAL_NAME_push(sans.get(), gn) <= 0) {
    GENERAL_NAME_free(gn);
    return fail("subjectAltName");
  }
  bool rsa = EVP_PKEY_get_base_id(leaf_key) == EVP_PKEY_RSA;
  if (X509_add1_ext_i2d(x.get(), NID_subject_alt_name, sans.get(), 0, X509V3_ADD_REPLACE) != 1 ||
      !add_basic_constraints(x.get(), false, -1) ||
      !add_key_usage(x.get(), rsa ? (1 << 0) | (1 << 2) : (1 << 0)) ||
      !add_server_auth_eku(x.get()) || !add_key_ids(x.get(), ca.cert.get()))
    return fail("extensions");
  if (X509_sign(x.get(), ca.key.get(), EVP_sha256()) <= 0) return fail("sign");
  return x;
}

X509Ptr make_self_signed_ca(EVP_PKEY* key, const char* common_name) {
  X509Ptr x(X509_new());
  if (!x || X509_set_version(x.get(), 2) != 1 || !set_random_serial(x.get())) return {};
  X509NamePtr name(X509_NAME_new());
  if (!name ||
      X509_NAME_add_entry_by_NID(name.get(), NID_commonName, MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(common_name), -1, -1,
                                 0) != 1 ||
      X509_set_subject_name(x.get(), name.get()) != 1 ||
      X509_set_issuer_name(x.get(), name.get()) != 1)
    return {};
  if (!X509_gmtime_adj(X509_getm_notBefore(x.get()), -3600) ||
      !X509_gmtime_adj(X509_getm_notAfter(x.get()), 10L * 365 * 24 * 3600))
    return {};
  if (X509_set_pubkey(x.get(), key) != 1) return {};
  if (!add_basic_constraints(x.get(), true, 0) || !add_key_usage(x.get(), (1 << 5) | (1 << 6)))
    return {};
  if (!add_key_ids(x.get(), nullptr)) return {};
  if (X509_sign(x.get(), key, EVP_sha256()) <= 0) return {};
  return x;
}

}  // namespace sightline::tls
