// Who a client is without a password: the user map (client address → user,
// for transparent and static listeners, and explicit ones without a
// credentials file) and the groups file (user → groups). Formats in
// docs/identity.md.
#pragma once

#include "identity/credentials.h"
#include "policy/names.h"

#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace sightline::identity {

// Lines "CIDR user" (or a bare address, a host prefix); the most specific
// prefix containing the client wins.
class UserMap {
 public:
  static std::shared_ptr<const UserMap> load(const std::string& path, FileError& err);
  static std::shared_ptr<const UserMap> parse(std::string_view text, const std::string& name, FileError& err);

  // Empty when no entry contains `client`.
  std::string_view lookup(const policy::IpAddress& client) const;
  std::size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    policy::detail::Cidr net;
    std::string user;
  };
  std::vector<Entry> entries_;  // longest prefix first: the first match is the most specific
};

// Lines "group: user1, user2, ..."; a group may take several lines.
class Groups {
 public:
  static std::shared_ptr<const Groups> load(const std::string& path, FileError& err);
  static std::shared_ptr<const Groups> parse(std::string_view text, const std::string& name, FileError& err);

  // The groups `user` belongs to (any case of the name), sorted.
  std::vector<std::string> of(std::string_view user) const;
  std::size_t group_count() const { return group_count_; }

 private:
  std::unordered_map<std::string, std::vector<std::string>> by_user_;  // by fold_case(user)
  std::size_t group_count_ = 0;
};

}  // namespace sightline::identity
