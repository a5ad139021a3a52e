// The policy in force, shared by all workers: an atomically swapped pointer
// to an immutable Policy. Reloads (SIGHUP, file changes) build a new Policy
// off the data path and publish it only if it loads cleanly; a connection
// keeps the snapshot it took when it decided.
#pragma once

#include "policy/policy.h"

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace sightline::policy {

class PolicyStore {
 public:
  // Checks a loaded policy against the rest of the configuration (names of
  // ICAP services, ...); false with `err` set rejects it like a parse error.
  using Validator = std::function<bool(const Policy&, PolicyError& err)>;

  explicit PolicyStore(std::vector<std::string> files, Validator validate = {})
      : files_(std::move(files)), validate_(std::move(validate)) {}

  // Loads the files; false (with the error) leaves the previous policy in force.
  bool reload(PolicyError& err);

  std::shared_ptr<const Policy> current() const { return current_.load(std::memory_order_acquire); }
  const std::vector<std::string>& files() const { return files_; }
  std::uint64_t generation() const { return generation_.load(std::memory_order_relaxed); }

 private:
  std::vector<std::string> files_;
  Validator validate_;
  std::mutex reload_mu_;  // one reload at a time; never taken on the data path
  std::atomic<std::shared_ptr<const Policy>> current_;
  std::atomic<std::uint64_t> generation_{0};
};

}  // namespace sightline::policy
