// The identity files in force, shared by all workers, and the cache of
// verified passwords. Like the policy (policy/store.h): reloads (SIGHUP)
// build new tables off the data path and swap them in atomically; a file
// that fails to load keeps its previous version in force.
#pragma once

#include "identity/credentials.h"
#include "identity/directory.h"

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace sightline::identity {

struct IdentityFiles {
  std::string credentials;  // empty: explicit listeners do not ask for a password
  std::string user_map;     // empty: no address-based identity
  std::string groups;       // empty: nobody is in a group
};

// One consistent view of the files; any part may be null (not configured).
struct Directory {
  std::shared_ptr<const Credentials> credentials;
  std::shared_ptr<const UserMap> user_map;
  std::shared_ptr<const Groups> groups;

  std::vector<std::string> groups_of(std::string_view user) const {
    return groups && !user.empty() ? groups->of(user) : std::vector<std::string>{};
  }
};

// Outcomes of password checks, keyed by SHA-256 of user, password and the
// stored hash text (so a changed credentials line invalidates its entries
// and the cache never holds a password). Thread-safe; bounded.
class AuthCache {
 public:
  using Key = std::array<unsigned char, 32>;
  enum class Result { unknown, ok, invalid };
  using Clock = std::chrono::steady_clock;

  AuthCache(std::chrono::milliseconds ttl, std::size_t max_entries) : ttl_(ttl), max_entries_(max_entries) {}

  static Key key(std::string_view user, std::string_view password, std::string_view stored_hash);
  static Key digest(std::string_view data);  // SHA-256
  Result find(const Key& k, Clock::time_point now = Clock::now());
  // A failure is remembered for at most a minute: long enough to spare the
  // hash from a client retrying a wrong password, short enough not to matter.
  void put(const Key& k, bool ok, Clock::time_point now = Clock::now());
  std::size_t size() const;

 private:
  struct KeyHash {
    std::size_t operator()(const Key& k) const noexcept;
  };
  struct Value {
    Clock::time_point expires;
    bool ok;
  };
  std::chrono::milliseconds ttl_;
  std::size_t max_entries_;
  mutable std::mutex mu_;  // held for a hash-map lookup only
  std::unordered_map<Key, Value, KeyHash> entries_;
};

class IdentityStore {
 public:
  IdentityStore(IdentityFiles files, std::string realm, std::chrono::milliseconds cache_ttl)
      : files_(std::move(files)), realm_(std::move(realm)), cache_(cache_ttl, 100'000) {}

  // Loads every configured file; a file that fails keeps its previous
  // version (none at the first load) and adds its error to `errors`.
  // True when all loaded.
  bool reload(std::vector<std::string>& errors);

  std::shared_ptr<const Directory> current() const { return current_.load(std::memory_order_acquire); }
  const IdentityFiles& files() const { return files_; }
  bool requires_password() const { return !files_.credentials.empty(); }
  const std::string& realm() const { return realm_; }
  AuthCache& cache() { return cache_; }

 private:
  IdentityFiles files_;
  std::string realm_;
  AuthCache cache_;
  std::mutex reload_mu_;  // one reload at a time; never taken on the data path
  std::atomic<std::shared_ptr<const Directory>> current_;
};

}  // namespace sightline::identity
