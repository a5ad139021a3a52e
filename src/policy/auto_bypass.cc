#include "policy/auto_bypass.h"

#include <algorithm>
#include <functional>

namespace sightline::policy {

std::string AutoBypass::key(std::string_view client_ip, std::string_view server_name) {
  std::string k;
  k.reserve(client_ip.size() + server_name.size() + 1);
  k.append(client_ip).push_back('|');
  k.append(server_name);
  return k;
}

AutoBypass::Shard& AutoBypass::shard(const std::string& k) const {
  return shards_[std::hash<std::string>{}(k) % kShards];
}

bool AutoBypass::add_locked(Shard& s, const std::string& k, Clock::time_point now) {
  auto it = s.expiry.find(k);
  if (it != s.expiry.end() && it->second > now) return false;
  if (it == s.expiry.end() && s.expiry.size() >= per_shard_) {
    // Drop what has expired; if still full, the entry closest to expiry.
    std::erase_if(s.expiry, [&](const auto& e) { return e.second <= now; });
    if (s.expiry.size() >= per_shard_) {
      auto oldest = std::min_element(s.expiry.begin(), s.expiry.end(),
                                     [](const auto& a, const auto& b) { return a.second < b.second; });
      s.expiry.erase(oldest);
    }
  }
  s.expiry[k] = now + ttl_;
  activations_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

bool AutoBypass::add(std::string_view client_ip, std::string_view server_name, Clock::time_point now) {
  std::string k = key(client_ip, server_name);
  Shard& s = shard(k);
  std::lock_guard lock(s.mu);
  s.failures.erase(k);
  return add_locked(s, k, now);
}

AutoBypass::Failure AutoBypass::record_failure(std::string_view client_ip, std::string_view server_name,
                                               Clock::time_point now) {
  std::string k = key(client_ip, server_name);
  Shard& s = shard(k);
  std::lock_guard lock(s.mu);
  const Clock::time_point horizon = now - window_;
  auto it = s.failures.find(k);
  if (it == s.failures.end()) {
    if (threshold_ > 1 && s.failures.size() >= per_shard_) {
      // Full: forget pairs whose last failure left the window; if none did,
      // the pair that failed longest ago (a flood of distinct pairs must not
      // grow the table, and an old suspect matters least).
      std::erase_if(s.failures, [&](const auto& e) { return e.second.back() <= horizon; });
      if (s.failures.size() >= per_shard_) {
        auto stalest = std::min_element(s.failures.begin(), s.failures.end(), [](const auto& a, const auto& b) {
          return a.second.back() < b.second.back();
        });
        s.failures.erase(stalest);
      }
    }
  } else {
    // Sliding window: only failures newer than `window` count.
    auto& times = it->second;
    times.erase(times.begin(), std::find_if(times.begin(), times.end(),
                                            [&](Clock::time_point t) { return t > horizon; }));
  }
  std::size_t before = it == s.failures.end() ? 0 : it->second.size();
  Failure f;
  f.count = static_cast<unsigned>(before + 1);
  if (f.count >= threshold_) {
    if (it != s.failures.end()) s.failures.erase(it);
    f.bypassed = add_locked(s, k, now);
    return f;
  }
  if (it == s.failures.end()) {
    auto& times = s.failures[k];
    times.reserve(threshold_ - 1);
    times.push_back(now);
  } else {
    it->second.push_back(now);
  }
  return f;
}

bool AutoBypass::contains(std::string_view client_ip, std::string_view server_name,
                          Clock::time_point now) const {
  std::string k = key(client_ip, server_name);
  Shard& s = shard(k);
  std::lock_guard lock(s.mu);
  auto it = s.expiry.find(k);
  return it != s.expiry.end() && it->second > now;
}

std::size_t AutoBypass::size() const {
  std::size_t n = 0;
  for (auto& s : shards_) {
    std::lock_guard lock(s.mu);
    n += s.expiry.size();
  }
  return n;
}

std::size_t AutoBypass::suspects() const {
  std::size_t n = 0;
  for (auto& s : shards_) {
    std::lock_guard lock(s.mu);
    n += s.failures.size();
  }
  return n;
}

}  // namespace sightline::policy
