#include "net/connect_request.h"

namespace sightline::net {
namespace {

bool is_tchar(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+':
    case '-': case '.': case '^': case '_': case '`': case '|': case '~':
      return true;
    default:
      return false;
  }
}

bool is_vchar_or_ws(char c) {
  auto u = static_cast<unsigned char>(c);
  return u == '\t' || u == ' ' || (u >= 0x21 && u != 0x7f);
}

ParseResult fail(int status, std::string reason) {
  return {ParseStatus::error, status, std::move(reason)};
}

std::string_view trim_ows(std::string_view v) {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  return v;
}

}  // namespace

ParseResult parse_proxy_request(std::string_view data, std::size_t max_head, ProxyRequest& out) {
  // Reject bytes that can never be valid before waiting for the end of the head,
  // so a hostile client cannot hold a connection open with junk.
  std::size_t scan = std::min(data.size(), max_head);
  std::size_t end = std::string_view::npos;
  for (std::size_t i = 0; i < scan; ++i) {
    char c = data[i];
    if (c == '\0') return fail(400, "NUL byte in request head");
    if (c == '\n' && (i == 0 || data[i - 1] != '\r')) return fail(400, "bare LF in request head");
    if (c == '\r' && i + 1 < scan && data[i + 1] != '\n')
      return fail(400, "bare CR in request head");
    if (c == '\n' && i >= 3 && data[i - 2] == '\n') {
      end = i + 1;
      break;
    }
  }
  if (end == std::string_view::npos) {
    if (data.size() >= max_head) return fail(431, "request head exceeds " + std::to_string(max_head) + " bytes");
    return {};
  }
  std::string_view head = data.substr(0, end - 2);  // keep the last line's CRLF

  auto eol = head.find("\r\n");
  std::string_view line = head.substr(0, eol);
  auto sp1 = line.find(' ');
  if (sp1 == std::string_view::npos || sp1 == 0) return fail(400, "malformed request line");
  auto sp2 = line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || sp2 == sp1 + 1) return fail(400, "malformed request line");
  std::string_view method = line.substr(0, sp1);
  std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string_view version = line.substr(sp2 + 1);
  for (char c : method)
    if (!is_tchar(c)) return fail(400, "invalid method token");
  for (char c : target)
    if (static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) == 0x7f)
      return fail(400, "invalid request target");
  if (version.size() != 8 || version.substr(0, 7) != "HTTP/1." ||
      (version[7] != '0' && version[7] != '1')) {
    if (version.substr(0, 5) == "HTTP/") return fail(505, "unsupported HTTP version");
    return fail(400, "malformed HTTP version");
  }

  out = ProxyRequest{};
  out.method = std::string(method);
  out.target = std::string(target);
  out.version_minor = version[7] - '0';

  std::size_t pos = eol + 2;
  while (pos < head.size()) {
    auto next = head.find("\r\n", pos);
    std::string_view field = head.substr(pos, next - pos);
    pos = next + 2;
    if (field.empty()) break;
    if (field.front() == ' ' || field.front() == '\t')
      return fail(400, "obsolete line folding in header");
    auto colon = field.find(':');
    if (colon == std::string_view::npos || colon == 0) return fail(400, "malformed header field");
    std::string_view name = field.substr(0, colon);
    for (char c : name)
      if (!is_tchar(c)) return fail(400, "invalid header field name");
    std::string_view value = field.substr(colon + 1);
    for (char c : value)
      if (!is_vchar_or_ws(c)) return fail(400, "invalid byte in header value");
    out.headers.emplace_back(std::string(name), std::string(trim_ows(value)));
  }
  out.head_bytes = end;

  if (method != "CONNECT") return fail(405, "method " + out.method + " not supported; use CONNECT");
  auto hp = parse_host_port(target);
  if (!hp) return fail(400, "CONNECT target is not host:port");
  out.authority = *hp;
  return {ParseStatus::done, 0, {}};
}

}  // namespace sightline::net
