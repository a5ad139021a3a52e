#include "policy/access.h"

#include "policy/names.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>

#include <charconv>
#include <cstring>

namespace sightline::policy {
namespace {

bool parse_port(std::string_view s, std::uint16_t& out) {
  unsigned v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || v == 0 || v > 65535) return false;
  out = static_cast<std::uint16_t>(v);
  return true;
}

bool parse_cidrs(const std::vector<std::string>& list, const char* key,
                 std::vector<detail::Cidr>& out, std::string& why) {
  for (const auto& text : list) {
    detail::Cidr c;
    std::string reason;
    if (!detail::Cidr::parse(text, c, reason)) {
      why = std::string(key) + ": '" + text + "': " + reason;
      return false;
    }
    out.push_back(c);
  }
  return true;
}

bool parse_ports(const std::vector<std::string>& list, const char* key, std::vector<PortRange>& out,
                 std::string& why) {
  for (const auto& text : list) {
    PortRange r;
    std::string reason;
    if (!parse_port_range(text, r, reason)) {
      why = std::string(key) + ": '" + text + "': " + reason;
      return false;
    }
    out.push_back(r);
  }
  return true;
}

bool in_ranges(const std::vector<PortRange>& ranges, std::uint16_t port) {
  for (const auto& r : ranges)
    if (port >= r.lo && port <= r.hi) return true;
  return false;
}

bool matches_any(const std::vector<detail::Cidr>& nets, const IpAddress& a) {
  for (const auto& n : nets)
    if (n.contains(a)) return true;
  return false;
}

std::uint16_t port_of(const sockaddr& sa) {
  if (sa.sa_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(sa).sin_port);
  if (sa.sa_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(sa).sin6_port);
  return 0;
}

bool is_wildcard(const sockaddr_storage& ss) {
  if (ss.ss_family == AF_INET)
    return reinterpret_cast<const sockaddr_in&>(ss).sin_addr.s_addr == htonl(INADDR_ANY);
  if (ss.ss_family == AF_INET6)
    return IN6_IS_ADDR_UNSPECIFIED(&reinterpret_cast<const sockaddr_in6&>(ss).sin6_addr);
  return false;
}

sockaddr_storage with_port(const sockaddr& addr, std::uint16_t port) {
  sockaddr_storage ss{};
  if (addr.sa_family == AF_INET) {
    std::memcpy(&ss, &addr, sizeof(sockaddr_in));
    reinterpret_cast<sockaddr_in&>(ss).sin_port = htons(port);
  } else if (addr.sa_family == AF_INET6) {
    std::memcpy(&ss, &addr, sizeof(sockaddr_in6));
    reinterpret_cast<sockaddr_in6&>(ss).sin6_port = htons(port);
  }
  return ss;
}

}  // namespace

std::optional<IpAddress> ip_of(const sockaddr& sa) {
  IpAddress a;
  if (sa.sa_family == AF_INET) {
    a.family = AF_INET;
    std::memcpy(a.bytes.data(), &reinterpret_cast<const sockaddr_in&>(sa).sin_addr, 4);
    return a;
  }
  if (sa.sa_family == AF_INET6) {
    a.family = AF_INET6;
    std::memcpy(a.bytes.data(), &reinterpret_cast<const sockaddr_in6&>(sa).sin6_addr, 16);
    return detail::canonical(a);
  }
  return std::nullopt;
}

bool parse_port_range(std::string_view text, PortRange& out, std::string& why) {
  auto dash = text.find('-');
  std::string_view lo = text.substr(0, dash);
  std::string_view hi = dash == std::string_view::npos ? lo : text.substr(dash + 1);
  if (!parse_port(lo, out.lo) || !parse_port(hi, out.hi)) {
    why = "not a port (1-65535) or a range LOW-HIGH";
    return false;
  }
  if (out.lo > out.hi) {
    why = "the range's low end is above its high end";
    return false;
  }
  return true;
}

AccessRules::AccessRules() = default;
AccessRules::AccessRules(AccessRules&&) noexcept = default;
AccessRules& AccessRules::operator=(AccessRules&&) noexcept = default;
AccessRules::~AccessRules() = default;

std::optional<AccessRules> AccessRules::build(const AccessSettings& s, std::string& why) {
  AccessRules r;
  if (!parse_cidrs(s.allow_clients, "allow_clients", r.clients_, why) ||
      !parse_cidrs(s.deny_destinations, "deny_destinations", r.deny_, why) ||
      !parse_cidrs(s.allow_destinations, "allow_destinations", r.allow_, why) ||
      !parse_ports(s.connect_ports, "connect_ports", r.connect_ports_, why) ||
      !parse_ports(s.http_ports, "http_ports", r.http_ports_, why))
    return std::nullopt;
  r.deny_own_ = s.deny_own_listeners;
  return r;
}

void AccessRules::add_own_endpoints(const std::vector<sockaddr_storage>& endpoints) {
  bool need_interfaces = false;
  for (const auto& e : endpoints) {
    if (is_wildcard(e)) need_interfaces = true;
    else own_.push_back(e);
  }
  if (!need_interfaces) return;
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return;
  for (const auto& e : endpoints) {
    if (!is_wildcard(e)) continue;
    std::uint16_t port = port_of(reinterpret_cast<const sockaddr&>(e));
    for (ifaddrs* i = list; i; i = i->ifa_next) {
      if (!i->ifa_addr) continue;
      int fam = i->ifa_addr->sa_family;
      // A v6 wildcard socket also takes IPv4 (unless v6only); both families count.
      if (fam != AF_INET && fam != AF_INET6) continue;
      if (e.ss_family == AF_INET && fam != AF_INET) continue;
      own_.push_back(with_port(*i->ifa_addr, port));
    }
  }
  freeifaddrs(list);
}

bool AccessRules::client_allowed(const sockaddr& client) const {
  auto ip = ip_of(client);
  return ip && matches_any(clients_, *ip);
}

bool AccessRules::connect_port_allowed(std::uint16_t port) const {
  return in_ranges(connect_ports_, port);
}

bool AccessRules::http_port_allowed(std::uint16_t port) const { return in_ranges(http_ports_, port); }

std::optional<std::string> AccessRules::refuse_destination(const sockaddr& dest) const {
  auto ip = ip_of(dest);
  if (!ip) return "not an IP destination";
  if (deny_own_) {
    std::uint16_t port = port_of(dest);
    for (const auto& own : own_) {
      auto own_ip = ip_of(reinterpret_cast<const sockaddr&>(own));
      if (own_ip && own_ip->family == ip->family && own_ip->bytes == ip->bytes &&
          port_of(reinterpret_cast<const sockaddr&>(own)) == port)
        return ip->to_string() + " port " + std::to_string(port) + " is one of the proxy's own listeners";
    }
  }
  if (matches_any(deny_, *ip) && !matches_any(allow_, *ip))
    return ip->to_string() + " is in access.deny_destinations";
  return std::nullopt;
}

}  // namespace sightline::policy
