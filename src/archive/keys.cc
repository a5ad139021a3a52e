#include "archive/keys.h"

#include "archive/warc.h"
#include "core/private_file.h"

#include <openssl/pem.h>
#include <fcntl.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

namespace sightline::archive {

namespace {

// PEM text of a key, private (PKCS#8) or public (SubjectPublicKeyInfo).
std::optional<std::string> key_pem(EVP_PKEY* key, bool private_part) {
  tls::BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio) return std::nullopt;
  int ok = private_part ? PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr)
                        : PEM_write_bio_PUBKEY(bio.get(), key);
  if (ok != 1) return std::nullopt;
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(len));
}

bool write_new_file(const std::string& path, const std::string& text, mode_t mode, std::string* error) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) {
    *error = path + ": " + std::strerror(errno);
    return false;
  }
  std::size_t off = 0;
  while (off < text.size()) {
    ssize_t n = ::write(fd, text.data() + off, text.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      *error = path + ": " + std::strerror(n < 0 ? errno : ENOSPC);
      ::close(fd);
      ::unlink(path.c_str());
      return false;
    }
    off += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    *error = path + ": " + std::strerror(errno);
    ::unlink(path.c_str());
    return false;
  }
  return true;
}

tls::BioPtr open_pem(const std::string& path, std::string* error) {
  tls::BioPtr bio(BIO_new_file(path.c_str(), "r"));
  if (!bio) *error = path + ": " + tls::drain_errors();
  return bio;
}

bool is_ed25519(EVP_PKEY* key, const std::string& path, std::string* error) {
  if (EVP_PKEY_get_id(key) == EVP_PKEY_ED25519) return true;
  *error = path + ": not an Ed25519 key";
  return false;
}

}  // namespace

bool keygen(const std::string& path, std::string* error) {
  tls::EvpPkeyPtr key(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
  if (!key) {
    *error = "Ed25519 key generation: " + tls::drain_errors();
    return false;
  }
  auto priv = key_pem(key.get(), true);
  auto pub = key_pem(key.get(), false);
  if (!priv || !pub) {
    *error = "PEM encoding: " + tls::drain_errors();
    return false;
  }
  if (!write_new_file(path, *priv, 0600, error)) return false;
  if (!write_new_file(path + ".pub", *pub, 0644, error)) {
    ::unlink(path.c_str());  // half a key pair is worse than none
    return false;
  }
  return true;
}

tls::EvpPkeyPtr load_signing_key(const std::string& path, std::string* error) {
  if (std::string why; !core::check_private_file(path, "archive signing key", why)) {
    *error = std::move(why);
    return nullptr;
  }
  auto bio = open_pem(path, error);
  if (!bio) return nullptr;
  tls::EvpPkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (!key) {
    *error = path + ": no private key: " + tls::drain_errors();
    return nullptr;
  }
  return is_ed25519(key.get(), path, error) ? std::move(key) : nullptr;
}

tls::EvpPkeyPtr load_verify_key(const std::string& path, std::string* error) {
  auto bio = open_pem(path, error);
  if (!bio) return nullptr;
  tls::EvpPkeyPtr key(PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
  if (!key) {
    // Not a public key: perhaps the private one, whose public half serves.
    ERR_clear_error();
    bio = open_pem(path, error);
    if (!bio) return nullptr;
    key.reset(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  }
  if (!key) {
    *error = path + ": no Ed25519 public or private key PEM: " + tls::drain_errors();
    return nullptr;
  }
  return is_ed25519(key.get(), path, error) ? std::move(key) : nullptr;
}

std::string key_fingerprint(EVP_PKEY* key) {
  int len = i2d_PUBKEY(key, nullptr);
  if (len <= 0) return {};
  std::string der(static_cast<std::size_t>(len), '\0');
  auto* p = reinterpret_cast<unsigned char*>(der.data());
  i2d_PUBKEY(key, &p);
  return to_hex(sha256(der));
}

std::optional<std::string> sign_base64(EVP_PKEY* key, std::string_view data, std::string* error) {
  tls::EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  unsigned char sig[64];
  std::size_t sig_len = sizeof sig;
  // Ed25519 is one-shot: no digest, the whole message at once.
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, key) != 1 ||
      EVP_DigestSign(ctx.get(), sig, &sig_len, reinterpret_cast<const unsigned char*>(data.data()),
                     data.size()) != 1) {
    *error = "Ed25519 signing: " + tls::drain_errors();
    return std::nullopt;
  }
  std::string out(4 * ((sig_len + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), sig, static_cast<int>(sig_len));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

bool verify_base64(EVP_PKEY* key, std::string_view data, std::string_view signature_b64) {
  while (!signature_b64.empty() && std::isspace(static_cast<unsigned char>(signature_b64.back())))
    signature_b64.remove_suffix(1);
  if (signature_b64.size() != 88) return false;  // 64 bytes in base64
  unsigned char raw[66];
  int n = EVP_DecodeBlock(raw, reinterpret_cast<const unsigned char*>(signature_b64.data()), 88);
  if (n != 66) return false;  // 64 bytes plus two of padding
  tls::EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  bool ok = ctx && EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key) == 1 &&
            EVP_DigestVerify(ctx.get(), raw, 64, reinterpret_cast<const unsigned char*>(data.data()),
                             data.size()) == 1;
  ERR_clear_error();  // a bad signature is a finding, not an error to carry on
  return ok;
}

}  // namespace sightline::archive
