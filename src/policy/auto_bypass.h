// Pinned clients: when a client aborts its handshake right after seeing a
// forged certificate (an app that pins its server's key), the pair
// (client address, server name) is bypassed for a while, so the app works
// and the event is logged instead of failing forever. Shared by all workers;
// split into shards with their own locks; bounded in entries (oldest
// expiries evicted first).
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

namespace sightline::policy {

class AutoBypass {
 public:
  using Clock = std::chrono::steady_clock;

  AutoBypass(std::chrono::milliseconds ttl, std::size_t max_entries)
      : ttl_(ttl), per_shard_(std::max<std::size_t>(1, max_entries / kShards)) {}

  // Records a pinned pair; returns false if it was already there.
  bool add(std::string_view client_ip, std::string_view server_name, Clock::time_point now = Clock::now());
  bool contains(std::string_view client_ip, std::string_view server_name,
                Clock::time_point now = Clock::now()) const;
  std::size_t size() const;
  std::uint64_t activations() const { return activations_.load(std::memory_order_relaxed); }

 private:
  static constexpr std::size_t kShards = 16;
  struct Shard {
    mutable std::mutex mu;
    std::unordered_map<std::string, Clock::time_point> expiry;
  };
  static std::string key(std::string_view client_ip, std::string_view server_name);
  Shard& shard(const std::string& k) const;

  std::chrono::milliseconds ttl_;
  std::size_t per_shard_;
  mutable std::array<Shard, kShards> shards_;
  std::atomic<std::uint64_t> activations_{0};
};

}  // namespace sightline::policy
