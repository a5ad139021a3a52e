// Key pairs for forged leaves. Keys live only in memory, are shared by all
// workers (a leaf key is as sensitive as the leaf it signs for, no more), and
// are replaced every `lifetime` by a background thread, so no single key
// serves the whole life of the process and RSA generation never runs on an
// event loop.
#pragma once

#include "tls/ossl.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace sightline::tls {

enum class LeafKeyType { ec_p256, rsa2048 };

EvpPkeyPtr generate_key(LeafKeyType type);

// ECDSA origin → ECDSA P-256 leaf; RSA origin → RSA-2048 leaf; anything else
// (Ed25519, ...) → ECDSA P-256, which every client accepts.
LeafKeyType leaf_type_for(X509* origin_cert);

struct LeafKeySet {
  EvpPkeyPtr ec;
  EvpPkeyPtr rsa;
  std::uint64_t generation = 0;

  EVP_PKEY* get(LeafKeyType t) const { return t == LeafKeyType::rsa2048 ? rsa.get() : ec.get(); }
};

class LeafKeyPool {
 public:
  explicit LeafKeyPool(std::chrono::milliseconds lifetime) : lifetime_(lifetime) {}
  ~LeafKeyPool() { stop(); }
  LeafKeyPool(const LeafKeyPool&) = delete;
  LeafKeyPool& operator=(const LeafKeyPool&) = delete;

  // Generates the first set synchronously, then starts the rotation thread.
  bool start(std::string* error);
  void stop();

  std::shared_ptr<const LeafKeySet> current() const {
    return current_.load(std::memory_order_acquire);
  }

 private:
  std::shared_ptr<const LeafKeySet> make_set(std::uint64_t generation);
  void rotate_loop();

  std::chrono::milliseconds lifetime_;
  std::atomic<std::shared_ptr<const LeafKeySet>> current_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace sightline::tls
