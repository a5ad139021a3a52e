#include "tls/enterprise_ca.h"
#include "tls/forge.h"
#include "tls/leaf_keys.h"

#include <doctest/doctest.h>

#include <arpa/inet.h>

#include <set>
#include <thread>
#include <string>

using namespace sightline::tls;

namespace {

IssuingCa test_ca(LeafKeyType type, long not_after_days = 3650) {
  IssuingCa ca;
  ca.key = generate_key(type);
  REQUIRE(ca.key);
  ca.cert = make_self_signed_ca(ca.key.get(), "unit test CA");
  REQUIRE(ca.cert);
  X509_gmtime_adj(X509_getm_notAfter(ca.cert.get()), not_after_days * 86400);
  REQUIRE(X509_sign(ca.cert.get(), ca.key.get(), EVP_sha256()) > 0);
  return ca;
}

// An "origin" certificate with the given names, self-signed is enough here.
X509Ptr origin_cert(EVP_PKEY* key, long days_valid) {
  X509Ptr x(X509_new());
  X509_set_version(x.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x.get()), 42);
  X509_NAME* name = X509_get_subject_name(x.get());
  X509_NAME_add_entry_by_NID(name, NID_organizationName, MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>("Origin Org"), -1, -1, 0);
  X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>("www.origin.test"), -1, -1, 0);
  X509_set_issuer_name(x.get(), name);
  X509_gmtime_adj(X509_getm_notBefore(x.get()), -86400);
  X509_gmtime_adj(X509_getm_notAfter(x.get()), days_valid * 86400);
  X509_set_pubkey(x.get(), key);
  GeneralNamesPtr names(sk_GENERAL_NAME_new_null());
  auto add_dns = [&](const char* dns) {
    GENERAL_NAME* gn = GENERAL_NAME_new();
    ASN1_IA5STRING* s = ASN1_IA5STRING_new();
    ASN1_STRING_set(s, dns, -1);
    GENERAL_NAME_set0_value(gn, GEN_DNS, s);
    sk_GENERAL_NAME_push(names.get(), gn);
  };
  add_dns("www.origin.test");
  add_dns("*.cdn.origin.test");
  GENERAL_NAME* ip = GENERAL_NAME_new();
  ASN1_OCTET_STRING* os = ASN1_OCTET_STRING_new();
  unsigned char v4[4] = {198, 51, 100, 7};
  ASN1_OCTET_STRING_set(os, v4, 4);
  GENERAL_NAME_set0_value(ip, GEN_IPADD, os);
  sk_GENERAL_NAME_push(names.get(), ip);
  X509_add1_ext_i2d(x.get(), NID_subject_alt_name, names.get(), 0, X509V3_ADD_DEFAULT);
  X509_sign(x.get(), key, EVP_sha256());
  return x;
}

std::set<std::string> san_strings(X509* x) {
  std::set<std::string> out;
  GeneralNamesPtr names(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(x, NID_subject_alt_name, nullptr, nullptr)));
  if (!names) return out;
  for (int i = 0; i < sk_GENERAL_NAME_num(names.get()); ++i) {
    GENERAL_NAME* gn = sk_GENERAL_NAME_value(names.get(), i);
    if (gn->type == GEN_DNS) {
      out.insert("DNS:" + std::string(reinterpret_cast<const char*>(
                              ASN1_STRING_get0_data(gn->d.dNSName)),
                                      static_cast<std::size_t>(ASN1_STRING_length(gn->d.dNSName))));
    } else if (gn->type == GEN_IPADD) {
      char buf[64];
      inet_ntop(AF_INET, ASN1_STRING_get0_data(gn->d.iPAddress), buf, sizeof buf);
      out.insert(std::string("IP:") + buf);
    }
  }
  return out;
}

std::string cn(X509* x) {
  char buf[256] = {0};
  X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, buf, sizeof buf);
  return buf;
}

}  // namespace

TEST_CASE("forged leaf mirrors names, is signed by the CA and well formed") {
  for (auto ca_type : {LeafKeyType::ec_p256, LeafKeyType::rsa2048}) {
    for (auto origin_type : {LeafKeyType::ec_p256, LeafKeyType::rsa2048}) {
      CAPTURE(static_cast<int>(ca_type));
      CAPTURE(static_cast<int>(origin_type));
      IssuingCa ca = test_ca(ca_type);
      auto origin_key = generate_key(origin_type);
      auto origin = origin_cert(origin_key.get(), 90);
      CHECK(leaf_type_for(origin.get()) == origin_type);
      auto leaf_key = generate_key(leaf_type_for(origin.get()));
      std::string err;
      auto leaf = forge_leaf(origin.get(), ca, leaf_key.get(), &err);
      REQUIRE_MESSAGE(leaf, err);

      CHECK(cn(leaf.get()) == "www.origin.test");
      // Only the CN is copied: other subject attributes stay with the origin.
      CHECK(X509_NAME_entry_count(X509_get_subject_name(leaf.get())) == 1);
      CHECK(san_strings(leaf.get()) == san_strings(origin.get()));
      CHECK(san_strings(leaf.get()).size() == 3);
      CHECK(X509_verify(leaf.get(), X509_get0_pubkey(ca.cert.get())) == 1);
      CHECK(X509_check_issued(ca.cert.get(), leaf.get()) == X509_V_OK);
      CHECK(X509_check_ca(leaf.get()) == 0);
      CHECK((X509_get_extended_key_usage(leaf.get()) & XKU_SSL_SERVER) != 0);
      std::uint32_t ku = X509_get_key_usage(leaf.get());
      CHECK((ku & KU_DIGITAL_SIGNATURE) != 0);
      CHECK(((ku & KU_KEY_ENCIPHERMENT) != 0) == (origin_type == LeafKeyType::rsa2048));
      CHECK(X509_get0_subject_key_id(leaf.get()) != nullptr);
      CHECK(X509_get0_authority_key_id(leaf.get()) != nullptr);
      CHECK(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(leaf.get()),
                                  X509_get0_subject_key_id(ca.cert.get())) == 0);
      // Verifies as a server certificate for the origin's name under the CA.
      X509_STORE* store = X509_STORE_new();
      X509_STORE_add_cert(store, ca.cert.get());
      X509_STORE_CTX* sctx = X509_STORE_CTX_new();
      X509_STORE_CTX_init(sctx, store, leaf.get(), nullptr);
      X509_VERIFY_PARAM* p = X509_STORE_CTX_get0_param(sctx);
      X509_VERIFY_PARAM_set1_host(p, "www.origin.test", 0);
      X509_VERIFY_PARAM_set_purpose(p, X509_PURPOSE_SSL_SERVER);
      CHECK(X509_verify_cert(sctx) == 1);
      X509_STORE_CTX_free(sctx);
      X509_STORE_free(store);
    }
  }
}

TEST_CASE("validity is clipped to the origin's and the CA's") {
  IssuingCa ca = test_ca(LeafKeyType::ec_p256, 30);  // CA expires in 30 days
  auto origin_key = generate_key(LeafKeyType::ec_p256);
  auto origin = origin_cert(origin_key.get(), 365);
  std::string err;
  auto leaf = forge_leaf(origin.get(), ca, origin_key.get(), &err);
  REQUIRE(leaf);
  CHECK(ASN1_TIME_compare(X509_get0_notAfter(leaf.get()), X509_get0_notAfter(ca.cert.get())) == 0);
  // CA made one hour ago, origin one day ago: the later start wins.
  CHECK(ASN1_TIME_compare(X509_get0_notBefore(leaf.get()), X509_get0_notBefore(ca.cert.get())) == 0);

  IssuingCa long_ca = test_ca(LeafKeyType::ec_p256, 3650);
  auto short_origin = origin_cert(origin_key.get(), 10);
  leaf = forge_leaf(short_origin.get(), long_ca, origin_key.get(), &err);
  REQUIRE(leaf);
  CHECK(ASN1_TIME_compare(X509_get0_notAfter(leaf.get()), X509_get0_notAfter(short_origin.get())) == 0);
}

TEST_CASE("serials are random, positive and unique") {
  IssuingCa ca = test_ca(LeafKeyType::ec_p256);
  auto key = generate_key(LeafKeyType::ec_p256);
  auto origin = origin_cert(key.get(), 90);
  std::set<std::string> serials;
  for (int i = 0; i < 200; ++i) {
    std::string err;
    auto leaf = forge_leaf(origin.get(), ca, key.get(), &err);
    REQUIRE(leaf);
    BnPtr bn(ASN1_INTEGER_to_BN(X509_get0_serialNumber(leaf.get()), nullptr));
    CHECK(!BN_is_negative(bn.get()));
    CHECK(BN_num_bits(bn.get()) >= 64);
    char* hex = BN_bn2hex(bn.get());
    serials.insert(hex);
    OPENSSL_free(hex);
  }
  CHECK(serials.size() == 200);
}

TEST_CASE("leaf key pool rotates") {
  LeafKeyPool pool(std::chrono::milliseconds(50));
  std::string err;
  REQUIRE(pool.start(&err));
  auto first = pool.current();
  REQUIRE(first);
  CHECK(EVP_PKEY_get_base_id(first->ec.get()) == EVP_PKEY_EC);
  CHECK(EVP_PKEY_get_base_id(first->rsa.get()) == EVP_PKEY_RSA);
  CHECK(EVP_PKEY_get_bits(first->rsa.get()) == 2048);
  // Wait (bounded) for a new generation; no timing assertion beyond "eventually".
  bool rotated = false;
  for (int i = 0; i < 400 && !rotated; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
    rotated = pool.current()->generation > first->generation;
  }
  CHECK(rotated);
  CHECK(EVP_PKEY_eq(pool.current()->ec.get(), first->ec.get()) != 1);
  pool.stop();
}
