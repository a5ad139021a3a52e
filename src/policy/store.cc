#include "policy/store.h"

namespace sightline::policy {

bool PolicyStore::reload(PolicyError& err) {
  std::lock_guard lock(reload_mu_);
  auto next = Policy::load(files_, err);
  if (!next || (validate_ && !validate_(*next, err))) return false;
  current_.store(std::move(next), std::memory_order_release);
  generation_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

}  // namespace sightline::policy
