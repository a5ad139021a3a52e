// TLS sessions toward origins, kept per worker so a new connection to a
// server seen recently resumes instead of repeating the full handshake and
// chain verification (what browsers do too). Only sessions whose origin
// certificate verified are stored; the key binds the verified name, the
// address connected to and the ALPN offer. Bounded LRU; one loop thread
// only, so no lock.
#pragma once

#include "tls/ossl.h"

#include <list>
#include <memory>
#include <string>
#include <unordered_map>

namespace sightline::tls {

struct SessionDeleter {
  void operator()(SSL_SESSION* s) const noexcept { SSL_SESSION_free(s); }
};
using SslSessionPtr = std::unique_ptr<SSL_SESSION, SessionDeleter>;

class UpstreamSessionCache {
 public:
  explicit UpstreamSessionCache(std::size_t capacity) : capacity_(capacity) {}

  // A resumable session for `key`, or null. Owned by the cache; SSL_set_session
  // takes its own reference.
  SSL_SESSION* get(const std::string& key);
  void put(const std::string& key, SslSessionPtr session);
  void erase(const std::string& key);
  std::size_t size() const { return map_.size(); }

 private:
  struct Entry {
    SslSessionPtr session;
    std::list<std::string>::iterator pos;
  };
  std::size_t capacity_;
  std::unordered_map<std::string, Entry> map_;
  std::list<std::string> lru_;  // front = most recent
};

}  // namespace sightline::tls
