#include "policy/policy.h"

#include "core/text_file.h"
#include "policy/access.h"
#include "policy/names.h"

#include <toml++/toml.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <system_error>
#include <unordered_map>
#include <utility>

namespace sightline::policy {

using detail::Cidr;
using detail::Pattern;

namespace {

constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();
constexpr std::size_t kMaxName = 253;

// One rule's interest in a name-table key: which pattern kinds it has for
// that base name (a detail::PatternKind bit set).
struct NameEntry {
  std::uint32_t rule = 0;
  std::uint8_t kinds = 0;
};

std::uint64_t fmix64(std::uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdULL;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ULL;
  k ^= k >> 33;
  return k;
}

// A fast hash of a short string, eight bytes at a time. The keys come from
// the administrator's files, so flooding is not a concern; queries only
// probe.
std::uint64_t hash_name(std::string_view s) {
  std::uint64_t h = 0x9e3779b97f4a7c15ULL ^ s.size();
  const char* p = s.data();
  std::size_t n = s.size();
  for (; n >= 8; p += 8, n -= 8) {
    std::uint64_t v;
    std::memcpy(&v, p, 8);
    h = (h ^ v) * 0x9fb21c651e98df25ULL;
    h ^= h >> 29;
  }
  std::uint64_t v = 0;
  std::memcpy(&v, p, n);
  return fmix64(h ^ v);
}

// The compiled names: an open-addressing hash table (linear probing, at
// most half full) from a normalized base name to the rules that have a
// pattern on it. Keys live in one arena. Most keys belong to one rule, so
// the first entry is stored in the slot; the others (ascending rule order)
// in an overflow list. Immutable once built, so lookups need no locking.
class NameTable {
 public:
  struct Slot {
    std::uint64_t hash = 0;
    std::uint32_t key_off = 0;
    std::uint32_t key_len = 0;  // 0: empty slot (keys are never empty)
    NameEntry first;
    std::uint32_t more = kNone;  // index into overflow_, or kNone
  };

  bool empty() const { return used_ == 0; }
  std::size_t size() const { return used_; }

  void reserve(std::size_t keys) {
    std::size_t cap = 16;
    while (cap < keys * 2) cap *= 2;
    if (cap > slots_.size()) rehash(cap);
  }

  void add(std::string_view key, std::uint32_t rule, std::uint8_t kind) {
    if ((used_ + 1) * 2 > slots_.size()) rehash(std::max<std::size_t>(16, slots_.size() * 2));
    std::uint64_t h = hash_name(key);
    std::size_t mask = slots_.size() - 1;
    for (std::size_t i = h & mask;; i = (i + 1) & mask) {
      Slot& s = slots_[i];
      if (s.key_len == 0) {
        s.hash = h;
        s.key_off = static_cast<std::uint32_t>(arena_.size());
        s.key_len = static_cast<std::uint32_t>(key.size());
        s.first = NameEntry{rule, kind};
        arena_.append(key);
        ++used_;
        return;
      }
      if (s.hash != h || key_of(s) != key) continue;
      NameEntry& last = s.more == kNone ? s.first : overflow_[s.more].back();
      if (last.rule == rule) {
        last.kinds = static_cast<std::uint8_t>(last.kinds | kind);
        return;
      }
      if (s.more == kNone) {
        s.more = static_cast<std::uint32_t>(overflow_.size());
        overflow_.emplace_back();
      }
      overflow_[s.more].push_back(NameEntry{rule, kind});
      return;
    }
  }

  // Starts loading the slot where a key with hash `h` would be, so that
  // several lookups' cache misses overlap.
  void prefetch(std::uint64_t h) const {
    if (!slots_.empty()) __builtin_prefetch(slots_.data() + (h & (slots_.size() - 1)));
  }

  // `h` is hash_name(key).
  const Slot* find(std::string_view key, std::uint64_t h) const {
    if (used_ == 0) return nullptr;
    std::size_t mask = slots_.size() - 1;
    for (std::size_t i = h & mask;; i = (i + 1) & mask) {
      const Slot& s = slots_[i];
      if (s.key_len == 0) return nullptr;
      if (s.hash == h && key_of(s) == key) return &s;
    }
  }

  const std::vector<NameEntry>& more(const Slot& s) const { return overflow_[s.more]; }

 private:
  std::string_view key_of(const Slot& s) const {
    return std::string_view(arena_.data() + s.key_off, s.key_len);
  }

  void rehash(std::size_t cap) {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(cap, Slot{});
    std::size_t mask = cap - 1;
    for (const Slot& s : old) {
      if (s.key_len == 0) continue;
      std::size_t i = s.hash & mask;
      while (slots_[i].key_len != 0) i = (i + 1) & mask;
      slots_[i] = s;
    }
  }

  std::vector<Slot> slots_;
  std::string arena_;
  std::vector<std::vector<NameEntry>> overflow_;
  std::size_t used_ = 0;
};

bool ascii_iequal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

// The conditions of one rule other than its names (those are in the name
// table). Empty vectors mean "not specified".
struct Conditions {
  bool has_names = false;
  std::vector<PortRange> ports;
  std::vector<Cidr> dst;
  std::vector<Cidr> clients;
  std::vector<std::string> users;
  std::vector<std::string> groups;

  bool matches_rest(const Query& q, const IpAddress* dst_ip, const IpAddress* client_ip) const {
    if (!ports.empty()) {
      if (q.dst_port == 0) return false;
      bool any = false;
      for (const auto& r : ports) any = any || (q.dst_port >= r.lo && q.dst_port <= r.hi);
      if (!any) return false;
    }
    if (!dst.empty()) {
      if (!dst_ip) return false;
      if (std::none_of(dst.begin(), dst.end(), [&](const Cidr& c) { return c.contains(*dst_ip); }))
        return false;
    }
    if (!clients.empty()) {
      if (!client_ip) return false;
      if (std::none_of(clients.begin(), clients.end(),
                       [&](const Cidr& c) { return c.contains(*client_ip); }))
        return false;
    }
    if (!users.empty()) {
      if (q.user.empty()) return false;
      if (std::none_of(users.begin(), users.end(),
                       [&](const std::string& u) { return ascii_iequal(u, q.user); }))
        return false;
    }
    if (!groups.empty()) {
      bool any = false;
      for (const auto& g : q.groups)
        for (const auto& want : groups) any = any || ascii_iequal(g, want);
      if (!any) return false;
    }
    return true;
  }
};

bool query_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

// The queried name in matching form, without allocating when it is already
// lower-case ASCII (the usual SNI). Empty: no name, or not a valid one (so
// it matches no name condition). `buf` holds a lower-cased copy; `slow` an
// IDNA conversion.
std::string_view query_name(std::string_view raw, char (&buf)[kMaxName + 1], std::string& slow) {
  std::string_view n = raw;
  if (!n.empty() && n.back() == '.') n.remove_suffix(1);
  if (n.empty()) return {};
  bool upper = false;
  std::size_t label = 0;
  for (char c : n) {
    if (static_cast<unsigned char>(c) >= 0x80) {
      // Rare (clients send A-labels): IDNA conversion, which allocates.
      try {
        std::string why;
        if (!detail::normalize_name_into(raw, slow, why)) return {};
      } catch (const std::exception&) {
        return {};
      }
      return slow;
    }
    if (c == '.') {
      if (label == 0) return {};
      label = 0;
      continue;
    }
    if (c >= 'A' && c <= 'Z') {
      upper = true;
    } else if (!query_name_char(c)) {
      return {};
    }
    if (++label > 63) return {};
  }
  if (label == 0 || n.size() > kMaxName) return {};
  if (!upper) return n;
  for (std::size_t i = 0; i < n.size(); ++i) {
    char c = n[i];
    buf[i] = c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
  }
  return std::string_view(buf, n.size());
}

}  // namespace

struct Policy::Impl {
  Action default_action = Action::inspect;
  bool auto_bypass = true;
  std::vector<Rule> rules;
  std::vector<Conditions> conds;     // parallel to rules
  std::vector<std::uint32_t> unnamed;  // rules without a name condition, ascending
  std::vector<SourceFile> sources;
  std::size_t name_count = 0;
  NameTable names;
};

namespace {

std::string join(const std::string& prefix, std::string_view key) {
  return prefix.empty() ? std::string(key) : prefix + "." + std::string(key);
}

// Builds an Impl from one or more TOML documents.
class Builder {
 public:
  explicit Builder(PolicyError& err) : err_(err), impl_(std::make_unique<Policy::Impl>()) {}

  bool add(std::string_view text, const std::string& file) {
    toml::table root;
    try {
      root = toml::parse(text, std::string_view(file));
    } catch (const toml::parse_error& e) {
      std::ostringstream os;
      os << file << ":" << e.source().begin.line << ":" << e.source().begin.column << ": "
         << e.description();
      err_.message = os.str();
      return false;
    }
    file_ = file;
    auto parent = std::filesystem::path(file_).parent_path();
    base_dir_ = parent.empty() ? std::filesystem::path(".") : parent;
    source_ = impl_->sources.size();
    impl_->sources.push_back(SourceFile{file, detail::sha256_hex(text), 0});
    return document(root);
  }

  std::unique_ptr<Policy::Impl> finish() {
    for (std::size_t i = 0; i < impl_->conds.size(); ++i)
      if (!impl_->conds[i].has_names) impl_->unnamed.push_back(static_cast<std::uint32_t>(i));
    return std::move(impl_);
  }

 private:
  bool fail(const toml::source_region& where, const std::string& key, const std::string& why) {
    std::ostringstream os;
    os << file_ << ":" << where.begin.line << ":" << where.begin.column << ": key '" << key
       << "': " << why;
    err_.message = os.str();
    return false;
  }

  bool check_keys(const toml::table& t, const std::string& prefix,
                  std::initializer_list<std::string_view> known) {
    for (auto&& [k, v] : t) {
      bool ok = false;
      for (auto n : known) ok = ok || k.str() == n;
      if (!ok) return fail(k.source(), join(prefix, k.str()), "unknown key");
    }
    return true;
  }

  bool get_bool(const toml::table& t, const std::string& prefix, std::string_view key,
                std::optional<bool>& out) {
    const toml::node* n = t.get(key);
    if (!n) return true;
    auto v = n->value<bool>();
    if (!n->is_boolean() || !v) return fail(n->source(), join(prefix, key), "expected true or false");
    out = *v;
    return true;
  }

  bool get_choice(const toml::table& t, const std::string& prefix, std::string_view key,
                  std::initializer_list<std::string_view> choices, std::string& out) {
    const toml::node* n = t.get(key);
    if (!n) return true;
    auto s = n->value<std::string>();
    std::string list;
    for (auto c : choices) list += (list.empty() ? "\"" : ", \"") + std::string(c) + "\"";
    if (n->is_string() && s)
      for (auto c : choices)
        if (*s == c) {
          out = *s;
          return true;
        }
    return fail(n->source(), join(prefix, key), "expected one of " + list);
  }

  // A non-empty array (unless `allow_empty`) of non-empty strings; each
  // element is passed to `each` with its node, which may fail.
  template <typename F>
  bool for_each_string(const toml::node& n, const std::string& key, bool allow_empty, F&& each) {
    const toml::array* arr = n.as_array();
    if (!arr || (!allow_empty && arr->empty()))
      return fail(n.source(), key,
                  allow_empty ? "expected an array of strings" : "expected a non-empty array of strings");
    for (auto& e : *arr) {
      auto s = e.value<std::string>();
      if (!e.is_string() || !s || s->empty())
        return fail(e.source(), key, "expected non-empty strings");
      if (!each(e, *s)) return false;
    }
    return true;
  }

  bool document(const toml::table& root) {
    if (!check_keys(root, "", {"policy", "rule"})) return false;
    if (const toml::node* n = root.get("policy")) {
      const toml::table* t = n->as_table();
      if (!t) return fail(n->source(), "policy", "expected a table");
      if (!policy_at_.empty())
        return fail(n->source(), "policy", "[policy] is already set in " + policy_at_);
      policy_at_ = file_ + ":" + std::to_string(n->source().begin.line);
      std::string def(to_string(impl_->default_action));
      std::optional<bool> ab;
      if (!check_keys(*t, "policy", {"default", "auto_bypass"}) ||
          !get_choice(*t, "policy", "default", {"inspect", "bypass", "block"}, def) ||
          !get_bool(*t, "policy", "auto_bypass", ab))
        return false;
      impl_->default_action = action_of(def);
      impl_->auto_bypass = ab.value_or(true);
    }
    if (const toml::node* n = root.get("rule")) {
      const toml::array* arr = n->as_array();
      if (!arr || (!arr->empty() && !arr->is_array_of_tables()))
        return fail(n->source(), "rule", "expected [[rule]] tables");
      for (auto& e : *arr)
        if (!rule(*e.as_table())) return false;
    }
    return true;
  }

  static Action action_of(std::string_view s) {
    return s == "bypass" ? Action::bypass : s == "block" ? Action::block : Action::inspect;
  }

  bool rule(const toml::table& t) {
    if (!check_keys(t, "rule", {"name", "action", "domains", "domains_file", "domains_files",
                                "ports", "dst", "clients", "users", "groups", "archive", "hooks", "icap",
                                "on_invalid", "auto_bypass"}))
      return false;
    const auto index = static_cast<std::uint32_t>(impl_->rules.size());
    Rule r;
    r.index = index;
    r.file = file_;
    r.line = static_cast<int>(t.source().begin.line);
    r.name = "rule " + std::to_string(index + 1);
    if (const toml::node* n = t.get("name")) {
      auto s = n->value<std::string>();
      if (!n->is_string() || !s || s->empty())
        return fail(n->source(), "rule.name", "expected a non-empty string");
      r.name = *s;
    }
    if (!t.get("action")) return fail(t.source(), "rule.action", "missing");
    std::string action;
    if (!get_choice(t, "rule", "action", {"inspect", "bypass", "block"}, action)) return false;
    r.action = action_of(action);

    Conditions c;
    if (!names(t, index, c) || !ports(t, c) || !cidrs(t, "dst", c.dst) ||
        !cidrs(t, "clients", c.clients) || !strings(t, "users", c.users) ||
        !strings(t, "groups", c.groups) || !options(t, r.options))
      return false;
    impl_->rules.push_back(std::move(r));
    impl_->conds.push_back(std::move(c));
    return true;
  }

  bool names(const toml::table& t, std::uint32_t index, Conditions& c) {
    if (const toml::node* n = t.get("domains")) {
      c.has_names = true;
      bool ok = for_each_string(*n, "rule.domains", false, [&](const toml::node& e, const std::string& s) {
        Pattern p;
        std::string why;
        if (!detail::parse_pattern(s, p, why))
          return fail(e.source(), "rule.domains", "invalid domain pattern \"" + s + "\": " + why);
        impl_->names.add(p.base, index, p.kind);
        ++impl_->name_count;
        ++impl_->sources[source_].names;
        return true;
      });
      if (!ok) return false;
    }
    auto list = [&](const toml::node& e, const std::string& key, const std::string& s) {
      std::filesystem::path p(s);
      std::string path = p.is_absolute() ? s : (base_dir_ / p).lexically_normal().string();
      const std::vector<Pattern>* pats = nullptr;
      if (!load_list(e, key, path, pats)) return false;
      impl_->names.reserve(impl_->names.size() + pats->size());
      for (const auto& pat : *pats) impl_->names.add(pat.base, index, pat.kind);
      impl_->name_count += pats->size();
      return true;
    };
    if (const toml::node* n = t.get("domains_file")) {
      c.has_names = true;
      auto s = n->value<std::string>();
      if (!n->is_string() || !s || s->empty())
        return fail(n->source(), "rule.domains_file", "expected a non-empty string");
      if (!list(*n, "rule.domains_file", *s)) return false;
    }
    if (const toml::node* n = t.get("domains_files")) {
      c.has_names = true;
      if (!for_each_string(*n, "rule.domains_files", false,
                           [&](const toml::node& e, const std::string& s) {
                             return list(e, "rule.domains_files", s);
                           }))
        return false;
    }
    return true;
  }

  // Reads a domain-list file once per load; `out` points at its patterns.
  bool load_list(const toml::node& at, const std::string& key, const std::string& path,
                 const std::vector<Pattern>*& out) {
    if (auto it = lists_.find(path); it != lists_.end()) {
      out = &it->second;
      return true;
    }
    std::string data, why;
    if (!core::read_whole_file(path, data, why))
      return fail(at.source(), key, "cannot read " + path + ": " + why);
    std::vector<Pattern> pats;
    bool ok = core::for_each_line(data, [&](std::size_t lineno, std::string_view line) {
      Pattern p;
      if (!detail::parse_pattern(line, p, why)) {
        err_.message = path + ":" + std::to_string(lineno) + ": invalid domain pattern \"" +
                       std::string(line) + "\": " + why;
        return false;
      }
      pats.push_back(std::move(p));
      return true;
    });
    if (!ok) return false;
    impl_->sources.push_back(SourceFile{path, detail::sha256_hex(data), pats.size()});
    out = &lists_.emplace(path, std::move(pats)).first->second;
    return true;
  }

  bool ports(const toml::table& t, Conditions& c) {
    const toml::node* n = t.get("ports");
    if (!n) return true;
    const toml::array* arr = n->as_array();
    if (!arr || arr->empty())
      return fail(n->source(), "rule.ports", "expected a non-empty array of ports");
    for (auto& e : *arr) {
      PortRange r;
      if (!parse_port(e, r))
        return fail(e.source(), "rule.ports",
                    "expected a port from 1 to 65535 or a range such as \"8000-8100\"");
      c.ports.push_back(r);
    }
    return true;
  }

  static bool parse_port(const toml::node& e, PortRange& r) {
    if (e.is_integer()) {
      auto v = e.value<std::int64_t>();
      if (!v || *v < 1 || *v > 65535) return false;
      r.lo = r.hi = static_cast<std::uint16_t>(*v);
      return true;
    }
    auto s = e.value<std::string>();
    std::string why;
    return e.is_string() && s && parse_port_range(*s, r, why);
  }

  bool cidrs(const toml::table& t, std::string_view key, std::vector<Cidr>& out) {
    const toml::node* n = t.get(key);
    if (!n) return true;
    std::string k = join("rule", key);
    return for_each_string(*n, k, false, [&](const toml::node& e, const std::string& s) {
      Cidr c;
      std::string why;
      if (!Cidr::parse(s, c, why)) return fail(e.source(), k, "\"" + s + "\": " + why);
      out.push_back(c);
      return true;
    });
  }

  bool strings(const toml::table& t, std::string_view key, std::vector<std::string>& out) {
    const toml::node* n = t.get(key);
    if (!n) return true;
    return for_each_string(*n, join("rule", key), false,
                           [&](const toml::node&, const std::string& s) {
                             out.push_back(s);
                             return true;
                           });
  }

  bool options(const toml::table& t, RuleOptions& o) {
    if (!get_bool(t, "rule", "archive", o.archive) ||
        !get_bool(t, "rule", "auto_bypass", o.auto_bypass))
      return false;
    if (t.get("on_invalid")) {
      std::string v;
      if (!get_choice(t, "rule", "on_invalid", {"block", "forward-untrusted"}, v)) return false;
      o.on_invalid = v == "block" ? tls::OnInvalid::block : tls::OnInvalid::forward_untrusted;
    }
    if (!get_name_list(t, "hooks", "hook", o.hooks) || !get_name_list(t, "icap", "ICAP service", o.icap))
      return false;
    return true;
  }

  // A list of lower-case names (hook consumers, ICAP services), each once.
  bool get_name_list(const toml::table& t, const char* key, const char* what,
                     std::optional<std::vector<std::string>>& out) {
    const toml::node* n = t.get(key);
    if (!n) return true;
    std::string where = std::string("rule.") + key;
    std::vector<std::string> names;
    bool ok = for_each_string(*n, where.c_str(), true, [&](const toml::node& e, const std::string& s) {
      bool name_ok = std::all_of(s.begin(), s.end(), [](char ch) {
        return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_';
      });
      if (!name_ok)
        return fail(e.source(), where,
                    "\"" + s + "\": " + what + " names are lower-case letters, digits, '-' and '_'");
      if (std::find(names.begin(), names.end(), s) != names.end())
        return fail(e.source(), where, "\"" + s + "\" is listed twice");
      names.push_back(s);
      return true;
    });
    if (!ok) return false;
    out = std::move(names);
    return true;
  }

  PolicyError& err_;
  std::unique_ptr<Policy::Impl> impl_;
  std::string file_;
  std::filesystem::path base_dir_;
  std::size_t source_ = 0;
  std::string policy_at_;  // "file:line" of the [policy] table seen
  std::unordered_map<std::string, std::vector<Pattern>> lists_;
};

}  // namespace

std::string_view to_string(Action a) {
  switch (a) {
    case Action::inspect: return "inspect";
    case Action::bypass: return "bypass";
    case Action::block: return "block";
  }
  return "inspect";
}

Policy::Policy(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Policy::~Policy() = default;

// Loads are run from event-loop callbacks (reloads), so nothing may escape
// them as an exception: out of memory becomes an error like any other.
std::shared_ptr<const Policy> Policy::load(const std::vector<std::string>& files, PolicyError& err) {
  std::string current;
  try {
    Builder b(err);
    for (const auto& f : files) {
      current = f;
      std::string text, why;
      if (!core::read_whole_file(f, text, why)) {
        err.message = f + ": cannot read policy file: " + why;
        return nullptr;
      }
      if (!b.add(text, f)) return nullptr;
    }
    return std::shared_ptr<const Policy>(new Policy(b.finish()));
  } catch (const std::exception& e) {
    err.message = current + ": cannot load policy: " + e.what();
    return nullptr;
  }
}

std::shared_ptr<const Policy> Policy::parse(std::string_view toml, const std::string& name,
                                            PolicyError& err) {
  try {
    Builder b(err);
    if (!b.add(toml, name)) return nullptr;
    return std::shared_ptr<const Policy>(new Policy(b.finish()));
  } catch (const std::exception& e) {
    err.message = name + ": cannot load policy: " + e.what();
    return nullptr;
  }
}

Decision Policy::decide(const Query& q) const {
  const Impl& m = *impl_;
  std::optional<IpAddress> dst, client;
  if (q.dst_ip) dst = detail::canonical(*q.dst_ip);
  if (q.client_ip) client = detail::canonical(*q.client_ip);
  const IpAddress* dst_p = dst ? &*dst : nullptr;
  const IpAddress* client_p = client ? &*client : nullptr;

  // The lowest-numbered rule found so far whose conditions all match.
  std::uint32_t best = kNone;
  auto consider = [&](const NameEntry& e, std::uint8_t mask) {
    if ((e.kinds & mask) != 0 && m.conds[e.rule].matches_rest(q, dst_p, client_p)) best = e.rule;
  };
  auto probe = [&](std::string_view key, std::uint64_t hash, std::uint8_t mask) {
    const NameTable::Slot* s = m.names.find(key, hash);
    if (!s || s->first.rule >= best) return;
    consider(s->first, mask);
    if (s->more == kNone) return;
    for (const NameEntry& e : m.names.more(*s)) {
      if (e.rule >= best) break;
      consider(e, mask);
    }
  };

  if (!m.names.empty() && !q.server_name.empty()) {
    char buf[kMaxName + 1];
    std::string slow;
    std::string_view name = query_name(q.server_name, buf, slow);
    if (!name.empty()) {
      // Every suffix that starts at a label is a key to look up. Hash them
      // all and prefetch their slots first: the table is large and mostly
      // not in cache, and this way the misses overlap.
      std::uint8_t starts[kMaxName / 2 + 1];  // a valid name has at most 127 labels
      std::uint64_t hashes[kMaxName / 2 + 1];
      std::size_t labels = 0;
      starts[labels++] = 0;
      for (std::size_t i = 0; i < name.size(); ++i)
        if (name[i] == '.') starts[labels++] = static_cast<std::uint8_t>(i + 1);
      for (std::size_t k = 0; k < labels; ++k) {
        hashes[k] = hash_name(name.substr(starts[k]));
        m.names.prefetch(hashes[k]);
      }
      // The name itself: exact and suffix patterns; one label up: wildcard
      // and suffix; further up: suffix only.
      for (std::size_t k = 0; k < labels; ++k)
        probe(name.substr(starts[k]), hashes[k],
              k == 0   ? detail::kExact | detail::kSuffix
              : k == 1 ? detail::kWildcard | detail::kSuffix
                       : detail::kSuffix);
    }
  }
  for (std::uint32_t r : m.unnamed) {
    if (r >= best) break;
    if (m.conds[r].matches_rest(q, dst_p, client_p)) {
      best = r;
      break;
    }
  }
  if (best == kNone) return Decision{m.default_action, nullptr};
  return Decision{m.rules[best].action, &m.rules[best]};
}

Action Policy::default_action() const { return impl_->default_action; }
bool Policy::auto_bypass_enabled() const { return impl_->auto_bypass; }
bool Policy::uses_destination_address() const {
  return std::any_of(impl_->conds.begin(), impl_->conds.end(),
                     [](const Conditions& c) { return !c.dst.empty(); });
}
const std::vector<Rule>& Policy::rules() const { return impl_->rules; }
const std::vector<SourceFile>& Policy::sources() const { return impl_->sources; }
std::size_t Policy::name_count() const { return impl_->name_count; }

}  // namespace sightline::policy
