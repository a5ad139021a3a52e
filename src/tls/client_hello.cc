#include "tls/client_hello.h"

#include <arpa/inet.h>

#include <algorithm>
#include <string_view>

namespace sightline::tls {
namespace {

constexpr std::uint8_t kHandshake = 22;
constexpr std::uint8_t kClientHello = 1;
constexpr std::size_t kRecordHeader = 5;
constexpr std::size_t kMaxRecordPayload = 16384 + 256;

// Bounds-checked big-endian reader over one message.
class Reader {
 public:
  explicit Reader(std::span<const std::uint8_t> d) : d_(d) {}
  bool u8(std::uint8_t& v) {
    if (left() < 1) return false;
    v = d_[pos_++];
    return true;
  }
  bool u16(std::uint16_t& v) {
    if (left() < 2) return false;
    v = static_cast<std::uint16_t>((d_[pos_] << 8) | d_[pos_ + 1]);
    pos_ += 2;
    return true;
  }
  bool bytes(std::size_t n, std::span<const std::uint8_t>& out) {
    if (left() < n) return false;
    out = d_.subspan(pos_, n);
    pos_ += n;
    return true;
  }
  bool skip(std::size_t n) {
    std::span<const std::uint8_t> ignored;
    return bytes(n, ignored);
  }
  std::size_t left() const { return d_.size() - pos_; }

 private:
  std::span<const std::uint8_t> d_;
  std::size_t pos_ = 0;
};

HelloResult malformed(std::string reason) { return {HelloStatus::malformed, std::move(reason)}; }

// RFC 6066 forbids IP literals in server_name, yet some clients (openssl
// s_client -connect IP) send them: they carry no name, so they count as absent.
bool is_ip_literal(std::span<const std::uint8_t> name) {
  std::string s(reinterpret_cast<const char*>(name.data()), name.size());
  unsigned char buf[16];
  return inet_pton(AF_INET, s.c_str(), buf) == 1 || inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

bool parse_sni(std::span<const std::uint8_t> ext, std::string& sni, bool& sni_is_ip,
               std::string& why) {
  Reader r(ext);
  std::uint16_t list_len;
  if (!r.u16(list_len) || list_len != r.left() || list_len == 0) {
    why = "bad server_name list length";
    return false;
  }
  while (r.left() > 0) {
    std::uint8_t type;
    std::uint16_t len;
    std::span<const std::uint8_t> name;
    if (!r.u8(type) || !r.u16(len) || !r.bytes(len, name)) {
      why = "truncated server_name entry";
      return false;
    }
    if (type != 0) continue;  // only host_name is defined
    if (!sni.empty()) {
      why = "more than one host_name in server_name";
      return false;
    }
    if (len == 0 || len > 255) {
      why = "server_name length out of range";
      return false;
    }
    if (is_ip_literal(name)) {
      sni_is_ip = true;
      continue;
    }
    std::string host;
    host.reserve(len);
    for (auto b : name) {
      char c = static_cast<char>(b);
      bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
                c == '_';
      if (c >= 'A' && c <= 'Z') {
        c = static_cast<char>(c - 'A' + 'a');
        ok = true;
      }
      if (!ok) {
        why = "server_name has a byte outside letters, digits, '-', '_' and '.'";
        return false;
      }
      host.push_back(c);
    }
    // ".." is checked before dropping the root dot, so "a.." cannot become "a.".
    const bool empty_label = host.front() == '.' || host.find("..") != std::string::npos;
    if (host.back() == '.') host.pop_back();
    if (empty_label || host.empty()) {
      why = "server_name has an empty label";
      return false;
    }
    sni = std::move(host);
  }
  return true;
}

bool parse_alpn(std::span<const std::uint8_t> ext, std::vector<std::string>& alpn,
                std::string& why) {
  Reader r(ext);
  std::uint16_t list_len;
  if (!r.u16(list_len) || list_len != r.left() || list_len < 2) {
    why = "bad ALPN list length";
    return false;
  }
  while (r.left() > 0) {
    std::uint8_t len;
    std::span<const std::uint8_t> proto;
    if (!r.u8(len) || len == 0 || !r.bytes(len, proto)) {
      why = "bad ALPN protocol entry";
      return false;
    }
    alpn.emplace_back(reinterpret_cast<const char*>(proto.data()), proto.size());
  }
  return true;
}

bool parse_versions(std::span<const std::uint8_t> ext, std::vector<std::uint16_t>& versions,
                    std::string& why) {
  Reader r(ext);
  std::uint8_t len;
  if (!r.u8(len) || len != r.left() || len < 2 || len % 2 != 0) {
    why = "bad supported_versions length";
    return false;
  }
  while (r.left() > 0) {
    std::uint16_t v = 0;
    r.u16(v);
    versions.push_back(v);
  }
  return true;
}

HelloResult parse_body(std::span<const std::uint8_t> body, ClientHelloInfo& out) {
  Reader r(body);
  std::uint8_t sid_len, comp_len;
  std::uint16_t cs_len;
  if (!r.u16(out.legacy_version) || !r.skip(32)) return malformed("truncated ClientHello");
  if (!r.u8(sid_len) || sid_len > 32 || !r.skip(sid_len)) return malformed("bad session id");
  if (!r.u16(cs_len) || cs_len < 2 || cs_len % 2 != 0 || !r.skip(cs_len))
    return malformed("bad cipher suites");
  if (!r.u8(comp_len) || comp_len < 1 || !r.skip(comp_len))
    return malformed("bad compression methods");
  if (r.left() == 0) return {HelloStatus::done, {}};  // no extensions (pre-TLS 1.2 style)
  std::uint16_t ext_total;
  if (!r.u16(ext_total) || ext_total != r.left()) return malformed("bad extensions length");
  std::vector<std::uint16_t> seen;
  while (r.left() > 0) {
    std::uint16_t type, len;
    std::span<const std::uint8_t> data;
    if (!r.u16(type) || !r.u16(len) || !r.bytes(len, data)) return malformed("truncated extension");
    if (std::find(seen.begin(), seen.end(), type) != seen.end())
      return malformed("duplicate extension " + std::to_string(type));
    seen.push_back(type);
    std::string why;
    bool ok = true;
    switch (type) {
      case 0: ok = parse_sni(data, out.sni, out.sni_is_ip, why); break;
      case 16: ok = parse_alpn(data, out.alpn, why); break;
      case 43: ok = parse_versions(data, out.supported_versions, why); break;
      default: break;
    }
    if (!ok) return malformed(why);
  }
  return {HelloStatus::done, {}};
}

}  // namespace

HelloResult parse_client_hello(std::span<const std::uint8_t> wire, ClientHelloInfo& out,
                               std::size_t max_hello) {
  out = ClientHelloInfo{};
  if (wire.empty()) return {};
  if (wire[0] != kHandshake) return {HelloStatus::not_tls, "first byte is not a TLS handshake record"};
  if (wire.size() >= 2 && wire[1] != 3) return {HelloStatus::not_tls, "not a TLS record version"};

  // Reassemble the handshake message from as many records as it spans.
  std::vector<std::uint8_t> msg;
  std::size_t pos = 0;
  std::size_t need = 0;  // full message size once the header is known
  while (true) {
    if (wire.size() - pos < kRecordHeader) return {};
    const std::uint8_t* h = wire.data() + pos;
    if (h[0] != kHandshake) return malformed("ClientHello interleaved with a non-handshake record");
    if (h[1] != 3) return malformed("bad record version");
    std::size_t rec_len = static_cast<std::size_t>((h[3] << 8) | h[4]);
    if (rec_len == 0 || rec_len > kMaxRecordPayload) return malformed("bad record length");
    if (wire.size() - pos - kRecordHeader < rec_len) {
      // Incomplete record: can still reject early if the header already says too big.
      if (need == 0 && msg.size() + (wire.size() - pos - kRecordHeader) >= 4) {
        std::vector<std::uint8_t> peek(msg);
        peek.insert(peek.end(), wire.begin() + static_cast<std::ptrdiff_t>(pos + kRecordHeader),
                    wire.end());
        if (peek[0] != kClientHello) return malformed("first handshake message is not ClientHello");
        std::size_t body = (std::size_t{peek[1]} << 16) | (std::size_t{peek[2]} << 8) | peek[3];
        if (body + 4 > max_hello) return malformed("ClientHello larger than " + std::to_string(max_hello) + " bytes");
      }
      return {};
    }
    msg.insert(msg.end(), h + kRecordHeader, h + kRecordHeader + rec_len);
    pos += kRecordHeader + rec_len;
    if (need == 0 && msg.size() >= 4) {
      if (msg[0] != kClientHello) return malformed("first handshake message is not ClientHello");
      std::size_t body = (std::size_t{msg[1]} << 16) | (std::size_t{msg[2]} << 8) | msg[3];
      if (body + 4 > max_hello) return malformed("ClientHello larger than " + std::to_string(max_hello) + " bytes");
      if (body < 38) return malformed("ClientHello too short");
      need = body + 4;
    }
    if (need != 0 && msg.size() >= need) {
      // A ClientHello must end on a record boundary of its own (RFC 8446 5.1).
      if (msg.size() != need) return malformed("data after ClientHello in the same record");
      break;
    }
  }
  out.message_bytes = need;
  out.record_bytes = pos;
  return parse_body(std::span<const std::uint8_t>(msg).subspan(4, need - 4), out);
}

bool offers_tls13(const ClientHelloInfo& info) {
  return std::find(info.supported_versions.begin(), info.supported_versions.end(), 0x0304) !=
         info.supported_versions.end();
}

}  // namespace sightline::tls
