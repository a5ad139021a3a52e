// Where the proxy must never connect, whoever asks (access.deny_destinations
// and its own listeners: policy::AccessRules implements it). Consulted for
// every resolved address, so a name resolving to a refused address (DNS
// rebinding included) is refused too.
#pragma once

#include <sys/socket.h>

#include <optional>
#include <string>

namespace sightline::net {

class DestinationCheck {
 public:
  virtual ~DestinationCheck() = default;
  // Why `dest` is refused; nullopt: the proxy may connect to it.
  virtual std::optional<std::string> refuse_destination(const sockaddr& dest) const = 0;
};

// on_upstream_connected's status when every address was refused.
inline constexpr int kDestinationRefused = -2;
// ... and when the name did not resolve.
inline constexpr int kResolveFailed = -3;

}  // namespace sightline::net
