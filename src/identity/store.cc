#include "identity/store.h"

#include "tls/ossl.h"

#include <cstring>

namespace sightline::identity {

AuthCache::Key AuthCache::key(std::string_view user, std::string_view password, std::string_view stored_hash) {
  Key k{};
  // Length-prefixed fields, so no two (user, password) pairs collide.
  tls::EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  auto field = [&ctx](std::string_view s) {
    std::uint64_t n = s.size();
    EVP_DigestUpdate(ctx.get(), &n, sizeof n);
    EVP_DigestUpdate(ctx.get(), s.data(), s.size());
  };
  if (ctx && EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) == 1) {
    field(fold_case(user));
    field(password);
    field(stored_hash);
    EVP_DigestFinal_ex(ctx.get(), k.data(), nullptr);
  }
  return k;
}

AuthCache::Key AuthCache::digest(std::string_view data) {
  Key k{};
  EVP_Digest(data.data(), data.size(), k.data(), nullptr, EVP_sha256(), nullptr);
  return k;
}

std::size_t AuthCache::KeyHash::operator()(const Key& k) const noexcept {
  std::size_t h = 0;
  std::memcpy(&h, k.data(), sizeof h);  // already a uniform hash
  return h;
}

AuthCache::Result AuthCache::find(const Key& k, Clock::time_point now) {
  std::lock_guard lock(mu_);
  auto it = entries_.find(k);
  if (it == entries_.end()) return Result::unknown;
  if (it->second.expires <= now) {
    entries_.erase(it);
    return Result::unknown;
  }
  return it->second.ok ? Result::ok : Result::invalid;
}

void AuthCache::put(const Key& k, bool ok, Clock::time_point now) {
  auto ttl = ok ? ttl_ : std::min<std::chrono::milliseconds>(ttl_, std::chrono::minutes(1));
  std::lock_guard lock(mu_);
  if (entries_.size() >= max_entries_) {
    std::erase_if(entries_, [now](const auto& e) { return e.second.expires <= now; });
    // Still full of live entries: start over rather than grow; the next
    // check of each credential pays the hash once more.
    if (entries_.size() >= max_entries_) entries_.clear();
  }
  entries_[k] = Value{now + ttl, ok};
}

std::size_t AuthCache::size() const {
  std::lock_guard lock(mu_);
  return entries_.size();
}

bool IdentityStore::reload(std::vector<std::string>& errors) {
  std::lock_guard lock(reload_mu_);
  auto prev = current();
  auto next = std::make_shared<Directory>(prev ? *prev : Directory{});
  FileError err;
  bool all = true;
  auto load = [&](const std::string& path, auto& slot, auto loader) {
    if (path.empty()) return;
    if (auto loaded = loader(path, err)) {
      slot = std::move(loaded);
    } else {
      errors.push_back(err.message);
      all = false;
    }
  };
  load(files_.credentials, next->credentials, Credentials::load);
  load(files_.user_map, next->user_map, UserMap::load);
  load(files_.groups, next->groups, Groups::load);
  current_.store(std::move(next), std::memory_order_release);
  return all;
}

}  // namespace sightline::identity
