// Internal to the policy module: domain-name patterns and address prefixes,
// the two kinds of values a rule matches on.
#pragma once

#include "policy/policy.h"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace sightline::policy::detail {

// Normalizes `name` into `out` (lower case, no trailing dot, A-labels);
// false with a short reason in `why` if it is not a valid host name.
bool normalize_name_into(std::string_view name, std::string& out, std::string& why);

// How a pattern relates its base name to the queried name. Bit values, so
// one rule's several patterns with the same base can share an entry.
enum PatternKind : std::uint8_t {
  kExact = 1,     // "example.com": that name only
  kWildcard = 2,  // "*.example.com": exactly one label under it
  kSuffix = 4,    // ".example.com": the name itself and everything under it
};

struct Pattern {
  std::string base;  // normalized name without "*." or "."
  PatternKind kind = kExact;
};

// Parses one domain pattern; false with a reason in `why`.
bool parse_pattern(std::string_view text, Pattern& out, std::string& why);

// Returns `a` as IPv4 if it is an IPv4-mapped IPv6 address, else `a`.
IpAddress canonical(const IpAddress& a);

// An address prefix: "192.0.2.0/24", "2001:db8::/32", or one address.
struct Cidr {
  int family = 0;
  std::array<std::uint8_t, 16> bytes{};
  unsigned prefix = 0;  // bits

  // false with a reason in `why`. Bits set after the prefix are an error
  // (they usually mean a typo in the prefix length).
  static bool parse(std::string_view text, Cidr& out, std::string& why);
  // `a` must already be canonical().
  bool contains(const IpAddress& a) const;
};

// Lower-case hex SHA-256 of `data`.
std::string sha256_hex(std::string_view data);

}  // namespace sightline::policy::detail
