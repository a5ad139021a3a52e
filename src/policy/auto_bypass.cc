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

bool AutoBypass::add(std::string_view client_ip, std::string_view server_name, Clock::time_point now) {
  std::string k = key(client_ip, server_name);
  Shard& s = shard(k);
  std::lock_guard lock(s.mu);
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

}  // namespace sightline::policy
