#include "tls/enterprise_ca.h"

#include "core/private_file.h"

#include "tls/forge.h"
#include "tls/leaf_keys.h"

#include <openssl/pem.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

namespace sightline::tls {
namespace {

struct FileCloser {
  void operator()(FILE* f) const noexcept { std::fclose(f); }
};
using FilePtr = std::unique_ptr<FILE, FileCloser>;

std::string one_line(X509_NAME* name) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253);
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(n));
}

}  // namespace

std::optional<IssuingCa> load_issuing_ca(const std::string& cert_file,
                                         const std::string& key_file, std::string* error) {
  auto fail = [&](std::string why) -> std::optional<IssuingCa> {
    if (error) *error = std::move(why);
    ERR_clear_error();
    return std::nullopt;
  };
  if (std::string why; !core::check_private_file(key_file, "CA key", why)) return fail(std::move(why));

  FilePtr cf(std::fopen(cert_file.c_str(), "re"));
  if (!cf) return fail("CA certificate " + cert_file + ": " + std::strerror(errno));
  IssuingCa ca;
  ca.chain.reset(sk_X509_new_null());
  while (X509* x = PEM_read_X509(cf.get(), nullptr, nullptr, nullptr)) {
    if (!ca.cert) {
      ca.cert.reset(x);
      sk_X509_push(ca.chain.get(), up_ref(x).release());
    } else if (X509_check_issued(x, x) == X509_V_OK) {
      X509_free(x);  // a self-signed root is the client's trust anchor: never sent
    } else {
      sk_X509_push(ca.chain.get(), x);
    }
  }
  ERR_clear_error();  // PEM_read ends with a "no start line" error at EOF
  if (!ca.cert) return fail("CA certificate " + cert_file + ": no PEM certificate found");
  if (X509_check_ca(ca.cert.get()) == 0)
    return fail("CA certificate " + cert_file + " is not a CA (basicConstraints CA:TRUE missing)");
  if ((X509_get_extension_flags(ca.cert.get()) & EXFLAG_KUSAGE) &&
      !(X509_get_key_usage(ca.cert.get()) & KU_KEY_CERT_SIGN))
    return fail("CA certificate " + cert_file + " lacks keyUsage keyCertSign");

  FilePtr kf(std::fopen(key_file.c_str(), "re"));
  if (!kf) return fail("CA key " + key_file + ": " + std::strerror(errno));
  ca.key.reset(PEM_read_PrivateKey(kf.get(), nullptr, nullptr, nullptr));
  if (!ca.key) return fail("CA key " + key_file + ": " + drain_errors());
  if (X509_check_private_key(ca.cert.get(), ca.key.get()) != 1)
    return fail("CA key " + key_file + " does not match certificate " + cert_file);
  int id = EVP_PKEY_get_base_id(ca.key.get());
  if (id != EVP_PKEY_EC && id != EVP_PKEY_RSA)
    return fail("CA key " + key_file + ": only ECDSA and RSA CA keys are supported");
  ca.subject = one_line(X509_get_subject_name(ca.cert.get()));
  return ca;
}

std::optional<IssuingCa> make_untrusted_ca(std::string* error) {
  IssuingCa ca;
  ca.key = generate_key(LeafKeyType::ec_p256);
  if (!ca.key) {
    if (error) *error = "untrusted CA key: " + drain_errors();
    return std::nullopt;
  }
  ca.cert = make_self_signed_ca(ca.key.get(), "sightline untrusted CA (origin certificate invalid)");
  if (!ca.cert) {
    if (error) *error = "untrusted CA certificate: " + drain_errors();
    return std::nullopt;
  }
  ca.chain.reset(sk_X509_new_null());
  sk_X509_push(ca.chain.get(), up_ref(ca.cert.get()).release());
  ca.subject = one_line(X509_get_subject_name(ca.cert.get()));
  return ca;
}

}  // namespace sightline::tls
