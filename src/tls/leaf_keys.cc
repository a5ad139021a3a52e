#include "tls/leaf_keys.h"

#include "core/log.h"

#include <openssl/ec.h>
#include <openssl/rsa.h>

namespace sightline::tls {

EvpPkeyPtr generate_key(LeafKeyType type) {
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_id(type == LeafKeyType::rsa2048 ? EVP_PKEY_RSA : EVP_PKEY_EC,
                                        nullptr));
  if (!ctx || EVP_PKEY_keygen_init(ctx.get()) <= 0) return {};
  if (type == LeafKeyType::rsa2048) {
    if (EVP_PKEY_CTX_set_rsa_keygen_bits(ctx.get(), 2048) <= 0) return {};
  } else {
    if (EVP_PKEY_CTX_set_ec_paramgen_curve_nid(ctx.get(), NID_X9_62_prime256v1) <= 0) return {};
    if (EVP_PKEY_CTX_set_ec_param_enc(ctx.get(), OPENSSL_EC_NAMED_CURVE) <= 0) return {};
  }
  EVP_PKEY* key = nullptr;
  if (EVP_PKEY_keygen(ctx.get(), &key) <= 0) return {};
  return EvpPkeyPtr(key);
}

LeafKeyType leaf_type_for(X509* origin_cert) {
  EVP_PKEY* pub = X509_get0_pubkey(origin_cert);
  if (pub && EVP_PKEY_get_base_id(pub) == EVP_PKEY_RSA) return LeafKeyType::rsa2048;
  return LeafKeyType::ec_p256;
}

std::shared_ptr<const LeafKeySet> LeafKeyPool::make_set(std::uint64_t generation) {
  auto set = std::make_shared<LeafKeySet>();
  set->ec = generate_key(LeafKeyType::ec_p256);
  set->rsa = generate_key(LeafKeyType::rsa2048);
  set->generation = generation;
  if (!set->ec || !set->rsa) return nullptr;
  return set;
}

bool LeafKeyPool::start(std::string* error) {
  auto first = make_set(1);
  if (!first) {
    if (error) *error = "leaf key generation failed: " + drain_errors();
    return false;
  }
  current_.store(std::move(first), std::memory_order_release);
  thread_ = std::thread([this] { rotate_loop(); });
  return true;
}

void LeafKeyPool::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void LeafKeyPool::rotate_loop() {
  std::unique_lock lock(mu_);
  while (!cv_.wait_for(lock, lifetime_, [this] { return stopping_; })) {
    lock.unlock();
    auto gen = current()->generation + 1;
    if (auto next = make_set(gen)) {
      current_.store(std::move(next), std::memory_order_release);
      log::emit(log::Level::info, {{"event", "leaf_keys_rotated"}, {"generation", gen}});
    } else {
      // Keep the old keys rather than fail connections; retry next period.
      log::emit(log::Level::error, {{"event", "leaf_key_rotation_failed"}, {"msg", drain_errors()}});
    }
    lock.lock();
  }
}

}  // namespace sightline::tls
