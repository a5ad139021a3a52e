#include "tls/cert_cache.h"

namespace sightline::tls {

CertCache::CertCache(std::size_t capacity)
    : per_shard_capacity_(std::max<std::size_t>(1, (capacity + kShards - 1) / kShards)) {}

std::string CertCache::make_key(X509* origin, const std::string& sni, bool untrusted) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  X509_digest(origin, EVP_sha256(), md, &len);
  std::string key(reinterpret_cast<const char*>(md), len);
  key.push_back(untrusted ? 'u' : 't');
  key += sni;
  return key;
}

CertCache::Shard& CertCache::shard_for(const std::string& key) {
  // The key starts with a SHA-256: its first byte is already uniform.
  return shards_[static_cast<unsigned char>(key[0]) % kShards];
}

CertCache::Lookup CertCache::acquire(const std::string& key, std::uint64_t key_generation,
                                     ForgedPtr* out, Waiter waiter) {
  Shard& s = shard_for(key);
  std::lock_guard lock(s.mu);
  auto it = s.map.find(key);
  if (it != s.map.end()) {
    Entry& e = it->second;
    if (!e.value) {
      e.waiters.push_back(std::move(waiter));
      return Lookup::pending;
    }
    if (e.value->key_generation == key_generation) {
      s.lru.splice(s.lru.begin(), s.lru, e.lru_pos);
      *out = e.value;
      hits_.fetch_add(1, std::memory_order_relaxed);
      return Lookup::hit;
    }
    // Stale key generation: becomes pending again and is re-forged.
    s.lru.erase(e.lru_pos);
    e.value.reset();
    misses_.fetch_add(1, std::memory_order_relaxed);
    return Lookup::create;
  }
  s.map.emplace(key, Entry{});
  misses_.fetch_add(1, std::memory_order_relaxed);
  return Lookup::create;
}

void CertCache::publish(const std::string& key, ForgedPtr value) {
  std::vector<Waiter> waiters;
  {
    Shard& s = shard_for(key);
    std::lock_guard lock(s.mu);
    auto it = s.map.find(key);
    if (it == s.map.end()) return;
    waiters.swap(it->second.waiters);
    if (!value) {
      s.map.erase(it);  // failures are not cached: the next connection retries
    } else {
      it->second.value = value;
      s.lru.push_front(key);
      it->second.lru_pos = s.lru.begin();
      while (s.lru.size() > per_shard_capacity_) {
        s.map.erase(s.lru.back());
        s.lru.pop_back();
      }
    }
  }
  for (auto& w : waiters) w(value);  // outside the lock: waiters post to other loops
}

std::size_t CertCache::size() const {
  std::size_t n = 0;
  for (const auto& s : shards_) {
    std::lock_guard lock(s.mu);
    n += s.lru.size();
  }
  return n;
}

}  // namespace sightline::tls
