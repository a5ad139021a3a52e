// Pinned clients: when a client aborts its handshake right after seeing a
// forged certificate (an app that pins its server's key), the pair
// (client address, server name) is bypassed for a while, so the app works
// and the event is logged instead of failing forever. One abort is not
// enough: browsers cancel speculative connections routinely and a user can
// abort on purpose, so a pair is bypassed only after `threshold` failures
// within `window`. Shared by all workers; split into shards with their own
// locks; both tables bounded in entries (the oldest go first).
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace sightline::policy {

class AutoBypass {
 public:
  using Clock = std::chrono::steady_clock;

  static constexpr unsigned kMaxThreshold = 100;

  AutoBypass(std::chrono::milliseconds ttl, std::size_t max_entries, unsigned threshold = 3,
             std::chrono::milliseconds window = std::chrono::minutes(5))
      : ttl_(ttl),
        window_(window),
        threshold_(std::clamp(threshold, 1u, kMaxThreshold)),
        per_shard_(std::max<std::size_t>(1, max_entries / kShards)) {}

  struct Failure {
    unsigned count = 0;  // failures of this pair within the window, this one included
    bool bypassed = false;  // this failure reached the threshold: the pair is bypassed now
  };
  // Counts one failed handshake of a pair (a certificate alert or an abort
  // after the forged certificate); at the threshold-th failure within the
  // window the pair is added (and its count starts again).
  Failure record_failure(std::string_view client_ip, std::string_view server_name,
                         Clock::time_point now = Clock::now());

  // Records a pinned pair at once; returns false if it was already there.
  bool add(std::string_view client_ip, std::string_view server_name, Clock::time_point now = Clock::now());
  bool contains(std::string_view client_ip, std::string_view server_name,
                Clock::time_point now = Clock::now()) const;
  std::size_t size() const;
  // Pairs with failures counted but not (yet) bypassed.
  std::size_t suspects() const;
  std::uint64_t activations() const { return activations_.load(std::memory_order_relaxed); }
  unsigned threshold() const { return threshold_; }

 private:
  static constexpr std::size_t kShards = 16;
  struct Shard {
    mutable std::mutex mu;
    std::unordered_map<std::string, Clock::time_point> expiry;
    // Times of the failures within the window, oldest first; at most
    // threshold - 1 of them (the threshold-th one adds the pair).
    std::unordered_map<std::string, std::vector<Clock::time_point>> failures;
  };
  static std::string key(std::string_view client_ip, std::string_view server_name);
  Shard& shard(const std::string& k) const;
  bool add_locked(Shard& s, const std::string& k, Clock::time_point now);

  std::chrono::milliseconds ttl_;
  std::chrono::milliseconds window_;
  unsigned threshold_;
  std::size_t per_shard_;
  mutable std::array<Shard, kShards> shards_;
  std::atomic<std::uint64_t> activations_{0};
};

}  // namespace sightline::policy
