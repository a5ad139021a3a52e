// Who may use the proxy and where it may connect (issue 11,
// docs/access.md): client address allow-list, CONNECT ports, and the
// destination addresses refused whatever the policy says (SSRF: loopback,
// link-local and cloud metadata, the proxy's own listeners).
#pragma once

#include "net/address.h"
#include "net/destination_check.h"
#include "policy/policy.h"

#include <sys/socket.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sightline::policy {

namespace detail {
struct Cidr;
}

// The [access] section as written; the defaults are the documented ones.
struct AccessSettings {
  std::vector<std::string> allow_clients = {"127.0.0.0/8", "::1",          "10.0.0.0/8",
                                            "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"};
  std::vector<std::string> connect_ports = {"443", "8443"};
  // Absolute-form (plain HTTP) requests through the explicit proxy.
  std::vector<std::string> http_ports = {"80", "1024-65535"};
  std::vector<std::string> deny_destinations = {
      "127.0.0.0/8",    "::1",         "0.0.0.0/8",   "::",           "169.254.0.0/16",
      "fe80::/10",      "fd00:ec2::254", "224.0.0.0/4", "ff00::/8",     "255.255.255.255",
      "100.100.100.200"};
  // Exceptions to deny_destinations (an internal service reached on loopback, say).
  std::vector<std::string> allow_destinations;
  // The proxy's own listeners and admin port are refused as destinations
  // unless this is false (a test chaining two proxies, say).
  bool deny_own_listeners = true;
};

struct PortRange {
  std::uint16_t lo = 0, hi = 0;
};
// "443" or "1024-65535"; false with a reason in `why`.
bool parse_port_range(std::string_view text, PortRange& out, std::string& why);

class AccessRules final : public net::DestinationCheck {
 public:
  AccessRules();
  AccessRules(AccessRules&&) noexcept;
  AccessRules& operator=(AccessRules&&) noexcept;
  ~AccessRules() override;

  // Parses and checks every list; nullopt with the offending entry in `why`.
  static std::optional<AccessRules> build(const AccessSettings& s, std::string& why);

  // The proxy's own listening endpoints. A wildcard address stands for every
  // address of this host's interfaces (read now, at startup).
  void add_own_endpoints(const std::vector<sockaddr_storage>& endpoints);

  bool client_allowed(const sockaddr& client) const;
  bool connect_port_allowed(std::uint16_t port) const;
  bool http_port_allowed(std::uint16_t port) const;
  // Why `dest` (a resolved or original destination) is refused; nullopt: allowed.
  std::optional<std::string> refuse_destination(const sockaddr& dest) const override;

 private:
  std::vector<detail::Cidr> clients_, deny_, allow_;
  std::vector<PortRange> connect_ports_, http_ports_;
  std::vector<sockaddr_storage> own_;
  bool deny_own_ = true;
};

// `sa` as a canonical IpAddress (IPv4-mapped IPv6 becomes IPv4); nullopt
// for other families.
std::optional<IpAddress> ip_of(const sockaddr& sa);

}  // namespace sightline::policy
