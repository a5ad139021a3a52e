// Per-domain policy: ordered rules (first match wins) and a default action,
// loaded from TOML files under policies/, compiled so that a lookup costs
// the same with 10 names or 1,000,000 (a hash of name patterns probed once
// per label of the queried name, then the few candidate rules checked in
// order). A loaded Policy is immutable; reloads build a new one and swap it
// in atomically, and connections keep the snapshot they started with.
#pragma once

#include "tls/upstream_verify.h"

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace sightline::policy {

enum class Action { inspect, bypass, block };
std::string_view to_string(Action a);

// An IPv4 or IPv6 address (IPv4-mapped IPv6 addresses are stored as IPv4).
struct IpAddress {
  int family = 0;  // AF_INET or AF_INET6; 0 = none
  std::array<std::uint8_t, 16> bytes{};
  static std::optional<IpAddress> parse(std::string_view text);
  std::string to_string() const;
};

// Options a rule carries for later stages; unset means "use the global
// setting".
struct RuleOptions {
  std::optional<bool> archive;
  std::optional<std::vector<std::string>> hooks;
  // ICAP services (by name) for this rule's exchanges; absent: every
  // configured service. They run in configuration order either way.
  std::optional<std::vector<std::string>> icap;
  std::optional<tls::OnInvalid> on_invalid;
  std::optional<bool> auto_bypass;
};

struct Rule {
  std::string name;  // from the file, or "rule N"
  std::string file;
  int line = 0;
  Action action = Action::inspect;
  RuleOptions options;
  std::size_t index = 0;  // position in evaluation order
};

struct Query {
  std::string_view server_name;  // SNI or CONNECT host (any case, trailing dot ok); empty: none
  std::optional<IpAddress> dst_ip;
  std::uint16_t dst_port = 0;    // 0: unknown
  std::optional<IpAddress> client_ip;
  std::string_view user;         // empty: unknown
  std::span<const std::string> groups;
};

struct Decision {
  Action action = Action::inspect;
  const Rule* rule = nullptr;  // null: the default action applied
};

struct PolicyError {
  std::string message;  // "file:line: reason"
};

struct SourceFile {
  std::string path;
  std::string sha256;  // of the file's bytes, hex
  std::size_t names = 0;  // domain patterns contributed (lists included)
};

class Policy {
 public:
  ~Policy();
  Policy(const Policy&) = delete;
  Policy& operator=(const Policy&) = delete;

  // Loads and compiles the files in order (rules are evaluated in file
  // order, then in their order within each file). Domain-list files are
  // resolved relative to the file that names them. nullptr with `err` set
  // on any error.
  static std::shared_ptr<const Policy> load(const std::vector<std::string>& files,
                                            PolicyError& err);
  // From text, for tests: `name` stands for the file in errors.
  static std::shared_ptr<const Policy> parse(std::string_view toml, const std::string& name,
                                             PolicyError& err);

  Decision decide(const Query& q) const;

  Action default_action() const;
  bool auto_bypass_enabled() const;  // [policy] auto_bypass (default true)
  // Some rule matches on the destination address (`dst`): deciding for a
  // named target needs the address actually connected to.
  bool uses_destination_address() const;
  const std::vector<Rule>& rules() const;
  const std::vector<SourceFile>& sources() const;
  std::size_t name_count() const;  // total domain patterns compiled

  struct Impl;

 private:
  explicit Policy(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Normalizes a host name for matching: lower case, no trailing dot,
// U-labels converted to A-labels (IDNA2008, UTS #46). nullopt if invalid.
std::optional<std::string> normalize_name(std::string_view name);

}  // namespace sightline::policy
