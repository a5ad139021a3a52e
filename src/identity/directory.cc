#include "identity/directory.h"

#include "core/text_file.h"

#include <algorithm>

namespace sightline::identity {
namespace {

// The shared part of the loaders: read the file, then parse it.
template <typename T>
std::shared_ptr<const T> load_file(const std::string& path, FileError& err) {
  std::string text, why;
  if (!core::read_whole_file(path, text, why)) {
    err.message = path + ": " + why;
    return nullptr;
  }
  return T::parse(text, path, err);
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

}  // namespace

std::shared_ptr<const UserMap> UserMap::load(const std::string& path, FileError& err) {
  return load_file<UserMap>(path, err);
}

std::shared_ptr<const UserMap> UserMap::parse(std::string_view text, const std::string& name, FileError& err) {
  auto map = std::make_shared<UserMap>();
  bool ok = core::for_each_line(text, [&](std::size_t lineno, std::string_view line) {
    auto where = name + ":" + std::to_string(lineno) + ": ";
    auto sp = line.find_first_of(" \t");
    std::string_view net = line.substr(0, sp);
    std::string_view user = sp == std::string_view::npos ? std::string_view() : trim(line.substr(sp));
    if (!valid_user_name(user)) {
      err.message = where + "expected \"CIDR user\" (one user name, no spaces)";
      return false;
    }
    Entry e;
    std::string why;
    if (!policy::detail::Cidr::parse(net, e.net, why)) {
      err.message = where + "\"" + std::string(net) + "\": " + why;
      return false;
    }
    for (const auto& other : map->entries_)
      if (other.net.family == e.net.family && other.net.prefix == e.net.prefix && other.net.bytes == e.net.bytes) {
        err.message = where + "\"" + std::string(net) + "\" is mapped twice";
        return false;
      }
    e.user = std::string(user);
    map->entries_.push_back(std::move(e));
    return true;
  });
  if (!ok) return nullptr;
  std::stable_sort(map->entries_.begin(), map->entries_.end(),
                   [](const Entry& a, const Entry& b) { return a.net.prefix > b.net.prefix; });
  return map;
}

std::string_view UserMap::lookup(const policy::IpAddress& client) const {
  for (const auto& e : entries_)
    if (e.net.contains(client)) return e.user;
  return {};
}

std::shared_ptr<const Groups> Groups::load(const std::string& path, FileError& err) {
  return load_file<Groups>(path, err);
}

std::shared_ptr<const Groups> Groups::parse(std::string_view text, const std::string& name, FileError& err) {
  auto groups = std::make_shared<Groups>();
  std::vector<std::string> seen;
  bool ok = core::for_each_line(text, [&](std::size_t lineno, std::string_view line) {
    auto where = name + ":" + std::to_string(lineno) + ": ";
    auto colon = line.find(':');
    std::string_view group = trim(line.substr(0, colon));
    if (colon == std::string_view::npos || !valid_user_name(group)) {
      err.message = where + "expected \"group: user1, user2\"";
      return false;
    }
    if (std::find(seen.begin(), seen.end(), group) == seen.end()) seen.emplace_back(group);
    std::string_view members = line.substr(colon + 1);
    while (!members.empty()) {
      auto comma = members.find(',');
      std::string_view user = trim(members.substr(0, comma));
      members = comma == std::string_view::npos ? std::string_view() : members.substr(comma + 1);
      if (user.empty()) continue;  // "a, , b" or a trailing comma
      if (!valid_user_name(user)) {
        err.message = where + "invalid user name \"" + std::string(user) + "\" in group " + std::string(group);
        return false;
      }
      auto& list = groups->by_user_[fold_case(user)];
      if (std::find(list.begin(), list.end(), group) == list.end()) list.emplace_back(group);
    }
    return true;
  });
  if (!ok) return nullptr;
  for (auto& [user, list] : groups->by_user_) std::sort(list.begin(), list.end());
  groups->group_count_ = seen.size();
  return groups;
}

std::vector<std::string> Groups::of(std::string_view user) const {
  auto it = by_user_.find(fold_case(user));
  return it == by_user_.end() ? std::vector<std::string>{} : it->second;
}

}  // namespace sightline::identity
