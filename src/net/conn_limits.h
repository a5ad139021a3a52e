// Connection limits shared by every worker (issue 11): a global cap and a
// cap per client address, so one client (or a flood) cannot take every
// descriptor. A connection holds a Slot from the moment its client is known
// until it closes.
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <cstddef>
#include <mutex>
#include <string>
#include <unordered_map>

namespace sightline::net {

class ConnectionLimits {
 public:
  // 0: no limit.
  ConnectionLimits(std::size_t max_total, std::size_t max_per_client)
      : max_total_(max_total), max_per_client_(max_per_client) {}
  ConnectionLimits(const ConnectionLimits&) = delete;
  ConnectionLimits& operator=(const ConnectionLimits&) = delete;

  enum class Verdict { ok, total, per_client };

  // Released when destroyed (or reset); movable, one owner.
  class Slot {
   public:
    Slot() = default;
    Slot(Slot&& o) noexcept : limits_(o.limits_), key_(std::move(o.key_)) { o.limits_ = nullptr; }
    Slot& operator=(Slot&& o) noexcept;
    ~Slot() { reset(); }
    void reset();
    explicit operator bool() const { return limits_ != nullptr; }

   private:
    friend class ConnectionLimits;
    ConnectionLimits* limits_ = nullptr;
    std::string key_;  // the client address's bytes; empty: not counted per client
  };

  // Takes a slot for a connection from `client` (IPv4-mapped IPv6 counts as
  // IPv4); on a refusal `slot` stays empty.
  Verdict acquire(const sockaddr& client, Slot& slot);

  std::size_t total() const { return total_.load(std::memory_order_relaxed); }
  std::size_t max_total() const { return max_total_; }
  std::size_t max_per_client() const { return max_per_client_; }

 private:
  void release(const std::string& key);

  const std::size_t max_total_, max_per_client_;
  std::atomic<std::size_t> total_{0};
  std::mutex mu_;
  std::unordered_map<std::string, std::size_t> per_client_;  // guarded by mu_
};

}  // namespace sightline::net
