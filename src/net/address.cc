#include "net/address.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <charconv>
#include <cstring>

namespace sightline::net {
namespace {

bool valid_name(std::string_view name) {
  if (name.empty() || name.size() > 253) return false;
  std::size_t label = 0;
  for (std::size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
      continue;
    }
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_';
    if (!ok || ++label > 63) return false;
  }
  if (label == 0) return false;
  // A last label of digits (or hex, "0x7f") is an address in a form the
  // resolver would accept ("127.1"), never a host name: refusing it keeps
  // address-based rules from being sidestepped.
  std::string_view last = name.substr(name.rfind('.') == std::string_view::npos ? 0 : name.rfind('.') + 1);
  bool numeric = true;
  for (char c : last) numeric = numeric && ((c >= '0' && c <= '9') || c == 'x' || c == 'X' ||
                                            (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'));
  bool hex_or_digits = numeric && (last.find_first_not_of("0123456789") == std::string_view::npos ||
                                   (last.size() > 2 && (last[1] == 'x' || last[1] == 'X') && last[0] == '0'));
  return !hex_or_digits;
}

std::optional<std::uint16_t> parse_port(std::string_view s) {
  if (s.empty() || s.size() > 5) return std::nullopt;
  unsigned v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || v == 0 || v > 65535) return std::nullopt;
  return static_cast<std::uint16_t>(v);
}

}  // namespace

std::string HostPort::to_string() const {
  if (kind == HostKind::ipv6) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

std::optional<HostPort> parse_host_port(std::string_view text) {
  HostPort hp;
  std::string_view host, port;
  if (!text.empty() && text.front() == '[') {
    auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':')
      return std::nullopt;
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
    in6_addr a6;
    std::string h(host);
    if (inet_pton(AF_INET6, h.c_str(), &a6) != 1) return std::nullopt;
    char buf[INET6_ADDRSTRLEN];
    inet_ntop(AF_INET6, &a6, buf, sizeof buf);
    hp.host = buf;
    hp.kind = HostKind::ipv6;
  } else {
    auto colon = text.rfind(':');
    if (colon == std::string_view::npos) return std::nullopt;
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    std::string h(host);
    // Drop the root dot first, so "127.0.0.1." is still an address.
    if (!h.empty() && h.back() == '.') h.pop_back();
    in_addr a4;
    if (inet_pton(AF_INET, h.c_str(), &a4) == 1) {
      hp.host = h;
      hp.kind = HostKind::ipv4;
    } else {
      if (!valid_name(h)) return std::nullopt;
      for (auto& c : h) c = static_cast<char>((c >= 'A' && c <= 'Z') ? c - 'A' + 'a' : c);
      hp.host = std::move(h);
      hp.kind = HostKind::name;
    }
  }
  auto p = parse_port(port);
  if (!p) return std::nullopt;
  hp.port = *p;
  return hp;
}

std::optional<sockaddr_storage> parse_listen_address(std::string_view text) {
  sockaddr_storage ss{};
  std::string t(text);
  if (t.rfind("*:", 0) == 0) t = "0.0.0.0" + t.substr(1);
  auto hp = parse_host_port(t);
  if (!hp || hp->kind == HostKind::name) return std::nullopt;
  if (hp->kind == HostKind::ipv4) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(hp->port);
    inet_pton(AF_INET, hp->host.c_str(), &sin->sin_addr);
  } else {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(hp->port);
    inet_pton(AF_INET6, hp->host.c_str(), &sin6->sin6_addr);
  }
  return ss;
}

std::string sockaddr_to_string(const sockaddr* sa) {
  char buf[INET6_ADDRSTRLEN] = {0};
  if (sa->sa_family == AF_INET) {
    auto* sin = reinterpret_cast<const sockaddr_in*>(sa);
    inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof buf);
    return std::string(buf) + ":" + std::to_string(ntohs(sin->sin_port));
  }
  if (sa->sa_family == AF_INET6) {
    auto* sin6 = reinterpret_cast<const sockaddr_in6*>(sa);
    inet_ntop(AF_INET6, &sin6->sin6_addr, buf, sizeof buf);
    return "[" + std::string(buf) + "]:" + std::to_string(ntohs(sin6->sin6_port));
  }
  return "unknown";
}

}  // namespace sightline::net
