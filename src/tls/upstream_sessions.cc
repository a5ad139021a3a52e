#include "tls/upstream_sessions.h"

namespace sightline::tls {

SSL_SESSION* UpstreamSessionCache::get(const std::string& key) {
  auto it = map_.find(key);
  if (it == map_.end()) return nullptr;
  if (!SSL_SESSION_is_resumable(it->second.session.get())) {
    erase(key);
    return nullptr;
  }
  lru_.splice(lru_.begin(), lru_, it->second.pos);
  return it->second.session.get();
}

void UpstreamSessionCache::put(const std::string& key, SslSessionPtr session) {
  if (!session || capacity_ == 0) return;
  auto it = map_.find(key);
  if (it != map_.end()) {
    it->second.session = std::move(session);
    lru_.splice(lru_.begin(), lru_, it->second.pos);
    return;
  }
  lru_.push_front(key);
  map_.emplace(key, Entry{std::move(session), lru_.begin()});
  while (map_.size() > capacity_) {
    map_.erase(lru_.back());
    lru_.pop_back();
  }
}

void UpstreamSessionCache::erase(const std::string& key) {
  auto it = map_.find(key);
  if (it == map_.end()) return;
  lru_.erase(it->second.pos);
  map_.erase(it);
}

}  // namespace sightline::tls
