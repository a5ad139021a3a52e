// Forged-certificate cache shared by all workers: an LRU split into shards,
// each with its own small lock, so workers rarely meet on the same lock, and
// single-flight creation, so many concurrent connections to a new site cost
// one forge. Keyed by SHA-256 of the origin certificate plus the SNI and the
// issuing CA (trusted or untrusted).
#pragma once

#include "tls/client_tickets.h"
#include "tls/ossl.h"

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace sightline::tls {

struct ForgedCert {
  X509Ptr cert;
  EvpPkeyPtr key;
  std::uint64_t key_generation = 0;
  TicketBinding ticket_binding{};  // certificate_binding(cert), set once forged
};
using ForgedPtr = std::shared_ptr<const ForgedCert>;

class CertCache {
 public:
  // Called with the result (null on failure) on the publishing thread; it must
  // only hand the result over to the waiter's own loop.
  using Waiter = std::function<void(ForgedPtr)>;

  enum class Lookup {
    hit,      // *out holds the certificate
    create,   // caller must forge and then publish() (or publish(nullptr))
    pending,  // another caller is forging; `waiter` will be called
  };

  explicit CertCache(std::size_t capacity);

  static std::string make_key(X509* origin, const std::string& sni, bool untrusted);

  // Entries made with an older key generation count as misses, so rotated
  // keys stop being served.
  Lookup acquire(const std::string& key, std::uint64_t key_generation, ForgedPtr* out,
                 Waiter waiter);
  void publish(const std::string& key, ForgedPtr value);

  std::size_t size() const;
  std::uint64_t hits() const { return hits_.load(std::memory_order_relaxed); }
  std::uint64_t misses() const { return misses_.load(std::memory_order_relaxed); }

 private:
  static constexpr std::size_t kShards = 16;
  struct Entry {
    ForgedPtr value;  // null while pending
    std::vector<Waiter> waiters;
    std::list<std::string>::iterator lru_pos;
  };
  struct Shard {
    mutable std::mutex mu;
    std::unordered_map<std::string, Entry> map;
    std::list<std::string> lru;  // front = most recent; ready entries only
  };
  Shard& shard_for(const std::string& key);

  std::size_t per_shard_capacity_;
  std::array<Shard, kShards> shards_;
  std::atomic<std::uint64_t> hits_{0};
  std::atomic<std::uint64_t> misses_{0};
};

}  // namespace sightline::tls
