#include "net/conn_limits.h"

#include <netinet/in.h>

#include <cstring>

namespace sightline::net {
namespace {

std::string address_key(const sockaddr& sa) {
  if (sa.sa_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(sa);
    return std::string(reinterpret_cast<const char*>(&in.sin_addr), 4);
  }
  if (sa.sa_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(sa);
    if (IN6_IS_ADDR_V4MAPPED(&in6.sin6_addr))
      return std::string(reinterpret_cast<const char*>(&in6.sin6_addr) + 12, 4);
    return std::string(reinterpret_cast<const char*>(&in6.sin6_addr), 16);
  }
  return {};
}

}  // namespace

ConnectionLimits::Slot& ConnectionLimits::Slot::operator=(Slot&& o) noexcept {
  if (this != &o) {
    reset();
    limits_ = o.limits_;
    key_ = std::move(o.key_);
    o.limits_ = nullptr;
  }
  return *this;
}

void ConnectionLimits::Slot::reset() {
  if (!limits_) return;
  limits_->release(key_);
  limits_ = nullptr;
  key_.clear();
}

ConnectionLimits::Verdict ConnectionLimits::acquire(const sockaddr& client, Slot& slot) {
  slot.reset();
  // Optimistic increment: concurrent acceptors never both slip past the cap.
  std::size_t before = total_.fetch_add(1, std::memory_order_relaxed);
  if (max_total_ != 0 && before >= max_total_) {
    total_.fetch_sub(1, std::memory_order_relaxed);
    return Verdict::total;
  }
  std::string key = max_per_client_ != 0 ? address_key(client) : std::string();
  if (!key.empty()) {
    std::lock_guard lock(mu_);
    std::size_t& n = per_client_[key];
    if (n >= max_per_client_) {
      total_.fetch_sub(1, std::memory_order_relaxed);
      return Verdict::per_client;
    }
    ++n;
  }
  slot.limits_ = this;
  slot.key_ = std::move(key);
  return Verdict::ok;
}

void ConnectionLimits::release(const std::string& key) {
  if (!key.empty()) {
    std::lock_guard lock(mu_);
    auto it = per_client_.find(key);
    if (it != per_client_.end() && --it->second == 0) per_client_.erase(it);
  }
  total_.fetch_sub(1, std::memory_order_relaxed);
}

}  // namespace sightline::net
