#include "policy/names.h"

#include <arpa/inet.h>
#include <idn2.h>
#include <openssl/evp.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>

namespace sightline::policy {
namespace detail {
namespace {

constexpr std::size_t kMaxName = 253;
constexpr std::size_t kMaxLabel = 63;

char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

bool name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

std::string show_char(char c) {
  auto u = static_cast<unsigned char>(c);
  if (u > ' ' && u < 127) return std::string("'") + c + "'";
  static const char hex[] = "0123456789abcdef";
  return std::string("'\\x") + hex[u >> 4] + hex[u & 15] + "'";
}

// Checks an already lower-cased ASCII name.
bool validate(std::string_view n, std::string& why) {
  if (n.empty()) {
    why = "empty name";
    return false;
  }
  if (n.size() > kMaxName) {
    why = "name longer than 253 characters";
    return false;
  }
  std::size_t label = 0;
  for (char c : n) {
    if (c == '.') {
      if (label == 0) {
        why = "empty label";
        return false;
      }
      label = 0;
      continue;
    }
    if (!name_char(c)) {
      why = "invalid character " + show_char(c);
      return false;
    }
    if (++label > kMaxLabel) {
      why = "label longer than 63 characters";
      return false;
    }
  }
  if (label == 0) {
    why = "empty label";
    return false;
  }
  return true;
}

// True if some label starts with "xn--" (any case): an A-label that libidn2
// should check.
bool has_a_label(std::string_view n) {
  for (std::size_t i = 0; i + 4 <= n.size(); ++i) {
    if ((i == 0 || n[i - 1] == '.') && lower(n[i]) == 'x' && lower(n[i + 1]) == 'n' &&
        n[i + 2] == '-' && n[i + 3] == '-')
      return true;
  }
  return false;
}

}  // namespace

bool normalize_name_into(std::string_view name, std::string& out, std::string& why) {
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  if (name.empty()) {
    why = "empty name";
    return false;
  }
  // A UTF-8 name longer than this cannot fit in 253 octets once encoded.
  if (name.size() > 4 * kMaxName) {
    why = "name longer than 253 characters";
    return false;
  }
  bool ascii = std::all_of(name.begin(), name.end(),
                           [](char c) { return static_cast<unsigned char>(c) < 0x80; });
  if (ascii && !has_a_label(name)) {
    out.resize(name.size());
    std::transform(name.begin(), name.end(), out.begin(), lower);
    return validate(out, why);
  }
  if (name.find('\0') != std::string_view::npos) {
    why = "invalid character '\\x00'";
    return false;
  }
  std::string in(name);  // NUL-terminated for libidn2
  char* res = nullptr;
  int rc = idn2_lookup_u8(reinterpret_cast<const std::uint8_t*>(in.c_str()),
                          reinterpret_cast<std::uint8_t**>(&res),
                          IDN2_NONTRANSITIONAL | IDN2_NFC_INPUT);
  if (rc != IDN2_OK) {
    if (res) idn2_free(res);
    why = std::string("not a valid internationalized name (") + idn2_strerror(rc) + ")";
    return false;
  }
  out.assign(res);
  idn2_free(res);
  // UTS #46 maps the ideographic full stops to '.', so one may trail.
  if (!out.empty() && out.back() == '.') out.pop_back();
  for (char& c : out) c = lower(c);
  return validate(out, why);
}

bool parse_pattern(std::string_view text, Pattern& out, std::string& why) {
  std::string_view rest = text;
  out.kind = kExact;
  if (rest.starts_with("*.")) {
    out.kind = kWildcard;
    rest.remove_prefix(2);
  } else if (rest.starts_with('.')) {
    out.kind = kSuffix;
    rest.remove_prefix(1);
  }
  if (rest.find('*') != std::string_view::npos) {
    why = "'*' is allowed only as the whole first label, as in \"*.example.com\"";
    return false;
  }
  if (out.kind != kExact && (rest.empty() || rest == ".")) {
    why = out.kind == kWildcard ? "no domain after \"*.\"" : "no domain after \".\"";
    return false;
  }
  if (!normalize_name_into(rest, out.base, why)) return false;
  // The proxy never presents an IP literal as a server name, so such a
  // pattern could never match: say so instead of accepting it silently.
  if (out.kind == kExact && IpAddress::parse(out.base)) {
    why = "an IP address is not a name; use dst = [\"" + out.base + "\"] for destination addresses";
    return false;
  }
  return true;
}

IpAddress canonical(const IpAddress& a) {
  if (a.family != AF_INET6) return a;
  for (int i = 0; i < 10; ++i)
    if (a.bytes[static_cast<std::size_t>(i)] != 0) return a;
  if (a.bytes[10] != 0xff || a.bytes[11] != 0xff) return a;
  IpAddress v4;
  v4.family = AF_INET;
  std::copy(a.bytes.begin() + 12, a.bytes.end(), v4.bytes.begin());
  return v4;
}

bool Cidr::parse(std::string_view text, Cidr& out, std::string& why) {
  auto slash = text.find('/');
  std::string_view addr_text = text.substr(0, slash);
  auto addr = IpAddress::parse(addr_text);
  if (!addr) {
    why = "expected an IP address or CIDR such as \"192.0.2.0/24\" or \"2001:db8::/32\"";
    return false;
  }
  bool v6_syntax = addr_text.find(':') != std::string_view::npos;
  unsigned prefix = v6_syntax ? 128 : 32;
  if (slash != std::string_view::npos) {
    std::string_view p = text.substr(slash + 1);
    if (p.empty() || p.size() > 3 ||
        !std::all_of(p.begin(), p.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      why = "expected a prefix length after '/'";
      return false;
    }
    prefix = 0;
    for (char c : p) prefix = prefix * 10 + static_cast<unsigned>(c - '0');
    if (prefix > (v6_syntax ? 128u : 32u)) {
      why = "prefix length larger than " + std::to_string(v6_syntax ? 128 : 32);
      return false;
    }
  }
  if (v6_syntax && addr->family == AF_INET) {
    // ::ffff:a.b.c.d/len: IPv4-mapped, compared as IPv4.
    if (prefix < 96) {
      why = "an IPv4-mapped prefix needs a length of at least 96";
      return false;
    }
    prefix -= 96;
  }
  out.family = addr->family;
  out.bytes = addr->bytes;
  out.prefix = prefix;
  // Bits after the prefix must be zero.
  IpAddress masked = *addr;
  for (unsigned bit = prefix; bit < (out.family == AF_INET ? 32u : 128u); ++bit)
    masked.bytes[bit / 8] = static_cast<std::uint8_t>(masked.bytes[bit / 8] & ~(0x80u >> (bit % 8)));
  if (masked.bytes != addr->bytes) {
    // Suggest the network in the notation the author used.
    std::string net = masked.to_string();
    unsigned written = prefix;
    if (v6_syntax && addr->family == AF_INET) {
      net = "::ffff:" + net;
      written += 96;
    }
    why = "address has bits set after the /" + std::to_string(written) + " prefix (did you mean \"" +
          net + "/" + std::to_string(written) + "\"?)";
    return false;
  }
  return true;
}

bool Cidr::contains(const IpAddress& a) const {
  if (a.family != family) return false;
  std::size_t full = prefix / 8;
  if (std::memcmp(a.bytes.data(), bytes.data(), full) != 0) return false;
  unsigned rest = prefix % 8;
  if (rest == 0) return true;
  auto mask = static_cast<std::uint8_t>(0xffu << (8 - rest));
  return (a.bytes[full] & mask) == (bytes[full] & mask);
}

std::string sha256_hex(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) != 1) return {};
  static const char hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(len * 2);
  for (unsigned int i = 0; i < len; ++i) {
    out += hex[md[i] >> 4];
    out += hex[md[i] & 15];
  }
  return out;
}

}  // namespace detail

std::optional<IpAddress> IpAddress::parse(std::string_view text) {
  if (text.size() >= 2 && text.front() == '[' && text.back() == ']')
    text = text.substr(1, text.size() - 2);
  char buf[INET6_ADDRSTRLEN + 1];
  if (text.empty() || text.size() >= sizeof buf) return std::nullopt;
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = '\0';
  IpAddress a;
  if (text.find(':') != std::string_view::npos) {
    if (inet_pton(AF_INET6, buf, a.bytes.data()) != 1) return std::nullopt;
    a.family = AF_INET6;
    return detail::canonical(a);
  }
  if (inet_pton(AF_INET, buf, a.bytes.data()) != 1) return std::nullopt;
  a.family = AF_INET;
  return a;
}

std::string IpAddress::to_string() const {
  char buf[INET6_ADDRSTRLEN];
  if (family != AF_INET && family != AF_INET6) return {};
  if (!inet_ntop(family, bytes.data(), buf, sizeof buf)) return {};
  return buf;
}

std::optional<std::string> normalize_name(std::string_view name) {
  std::string out, why;
  if (!detail::normalize_name_into(name, out, why)) return std::nullopt;
  return out;
}

}  // namespace sightline::policy
