#include "http/h1_parser.h"

#include "http/syntax.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <utility>

namespace sightline::http {
namespace {

constexpr std::string_view kCRLF = "\r\n";

// Content-Length values are kept to what a signed 64-bit length can hold, so
// no downstream component can read a different number from the same digits.
constexpr std::uint64_t kMaxContentLength =
    static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
// 16 hex digits already cover 2^64 - 1; more can only be padding or overflow.
constexpr std::size_t kMaxChunkSizeDigits = 16;

using syntax::is_digit;
using syntax::is_tchar;
using syntax::is_token;
using syntax::is_ws;

// field-vchar / SP / HTAB: what may appear in a field value or reason phrase.
bool is_field_char(char c) {
  auto u = static_cast<unsigned char>(c);
  return u == '\t' || (u >= 0x20 && u != 0x7f);
}

char ascii_lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + ('a' - 'A')) : c; }

std::string_view trim_ows(std::string_view v) {
  while (!v.empty() && is_ws(v.front())) v.remove_prefix(1);
  while (!v.empty() && is_ws(v.back())) v.remove_suffix(1);
  return v;
}

// Calls f(element) for each element of a comma-separated list, OWS trimmed.
// Empty elements are passed on: the callers reject them, because "chunked,"
// and ", 5" are read differently by different implementations.
template <typename F>
void for_each_element(std::string_view list, F&& f) {
  for (;;) {
    auto comma = list.find(',');
    f(trim_ows(list.substr(0, comma)));
    if (comma == std::string_view::npos) return;
    list.remove_prefix(comma + 1);
  }
}

// Result of looking for the end of a line or of a field section in the bytes
// already buffered (known to hold no terminator) followed by new input.
struct Scan {
  enum Result { more, found, bare_lf, too_long, empty_first } result = more;
  std::size_t used = 0;  // bytes of the new input up to and including the terminator
};

// `section` looks for the empty line ending a header/trailer section, else
// for the end of one line. Every LF on the way is checked to follow a CR, so a
// bare LF is reported where it occurs instead of letting the section run on to
// the size limit. Only the first `max - buf.size()` new bytes are searched.
Scan scan(std::string_view buf, const char* p, const char* end, std::size_t max, bool section,
          bool allow_empty_first) {
  const std::size_t n = buf.size();
  const auto avail = static_cast<std::size_t>(end - p);
  const char* lim = p + std::min(avail, max > n ? max - n : 0);
  auto at = [&](std::size_t k) { return k < n ? buf[k] : p[k - n]; };
  for (const char* q = p; q < lim;) {
    const auto* lf = static_cast<const char*>(std::memchr(q, '\n', static_cast<std::size_t>(lim - q)));
    if (lf == nullptr) break;
    const std::size_t k = n + static_cast<std::size_t>(lf - p);
    const std::size_t used = static_cast<std::size_t>(lf - p) + 1;
    if (k == 0 || at(k - 1) != '\r') return {Scan::bare_lf, 0};
    if (!section) return {Scan::found, used};
    if (k == 1) return {allow_empty_first ? Scan::found : Scan::empty_first, used};
    if (at(k - 2) == '\n') return {Scan::found, used};
    q = lf + 1;
  }
  // A terminator past the limit would make the section longer than allowed.
  if (n + avail >= max) return {Scan::too_long, 0};
  return {Scan::more, 0};
}

// LFs were checked by scan(); what is left to reject byte-wise is NUL and CR
// not followed by LF, both of which some parsers treat as line breaks.
const char* check_section_bytes(std::string_view raw) {
  if (std::memchr(raw.data(), '\0', raw.size()) != nullptr) return "NUL byte in header section";
  for (auto i = raw.find('\r'); i != std::string_view::npos; i = raw.find('\r', i + 1))
    if (i + 1 >= raw.size() || raw[i + 1] != '\n') return "bare CR in header section";
  return nullptr;
}

// Parses field lines, each ending in CRLF (the final empty line excluded).
// Fills `out` from its first element on, reusing the strings already
// there: a connection's messages carry much the same fields, so after its
// first message a head is parsed without allocating.
const char* parse_fields(std::string_view lines, HeaderList& out) {
  std::size_t n = 0;
  while (!lines.empty()) {
    const auto eol = lines.find(kCRLF);
    const std::string_view line = lines.substr(0, eol);
    lines.remove_prefix(eol + 2);
    if (line.empty()) return "empty header line";
    if (is_ws(line.front())) return "obsolete line folding in header";
    const auto colon = line.find(':');
    if (colon == std::string_view::npos) return "header line without colon";
    if (colon == 0) return "empty header name";
    const std::string_view name = line.substr(0, colon);
    // Some servers strip this whitespace and some keep it in the name: a
    // classic way to hide a Transfer-Encoding from one side.
    if (is_ws(name.back())) return "whitespace between header name and colon";
    if (!is_token(name)) return "invalid header name";
    const std::string_view value = line.substr(colon + 1);
    if (!std::all_of(value.begin(), value.end(), is_field_char)) return "invalid byte in header value";
    if (n < out.size()) {
      out[n].name.assign(name);
      out[n].value.assign(trim_ows(value));
    } else {
      out.push_back({std::string(name), std::string(trim_ows(value))});
    }
    ++n;
  }
  out.resize(n);
  return nullptr;
}

enum class Version { malformed, unsupported, ok };

Version parse_version(std::string_view v, int& minor) {
  if (v.size() != 8 || v.substr(0, 5) != "HTTP/" || !is_digit(v[5]) || v[6] != '.' || !is_digit(v[7]))
    return Version::malformed;
  if (v[5] != '1' || (v[7] != '0' && v[7] != '1')) return Version::unsupported;
  minor = v[7] - '0';
  return Version::ok;
}

struct ContentLength {
  bool present = false;
  bool invalid = false;
  bool overflow = false;
  bool conflict = false;
  std::uint64_t value = 0;
};

// Accepts repeated fields and lists only when every element is the same
// number (RFC 9110 §8.6); anything else means the two sides may disagree.
void add_content_length(std::string_view field, ContentLength& cl) {
  for_each_element(field, [&](std::string_view e) {
    if (e.empty() || !std::all_of(e.begin(), e.end(), is_digit)) {
      cl.invalid = true;
      return;
    }
    std::uint64_t v = 0;
    for (char c : e) {
      const auto d = static_cast<std::uint64_t>(c - '0');
      if (v > (kMaxContentLength - d) / 10) {
        cl.overflow = true;
        return;
      }
      v = v * 10 + d;
    }
    if (cl.present && v != cl.value) cl.conflict = true;
    cl.present = true;
    cl.value = v;
  });
}

struct TransferEncoding {
  bool present = false;
  bool invalid = false;       // not a list of transfer-codings
  int chunked = 0;            // how many times chunked appears
  bool last_chunked = false;  // the final coding is chunked
  bool last_known = true;     // the final coding is one we can name
};

bool is_known_coding(std::string_view name) {
  for (std::string_view k : {"gzip", "x-gzip", "deflate", "compress", "x-compress"})
    if (iequals(name, k)) return true;
  return false;
}

// Codings of all Transfer-Encoding fields form one list, in order.
void add_transfer_encoding(std::string_view field, TransferEncoding& te) {
  te.present = true;
  for_each_element(field, [&](std::string_view e) {
    const auto semi = e.find(';');
    const std::string_view name = trim_ows(e.substr(0, semi));
    if (!is_token(name)) {
      te.invalid = true;
      return;
    }
    const bool chunked = iequals(name, "chunked");
    if (chunked && semi != std::string_view::npos) te.invalid = true;  // chunked takes no parameters
    te.chunked += chunked ? 1 : 0;
    te.last_chunked = chunked;
    te.last_known = chunked || is_known_coding(name);
  });
}

}  // namespace

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
  return true;
}

const std::string* MessageHead::find(std::string_view name) const {
  for (const auto& h : headers)
    if (iequals(h.name, name)) return &h.value;
  return nullptr;
}

H1Parser::H1Parser(Kind kind, Handler& handler, H1Limits limits)
    : kind_(kind), handler_(handler), limits_(limits) {}

void H1Parser::expect_response_to(std::string_view method) { request_methods_.emplace_back(method); }

bool H1Parser::fail(int status, std::string reason) {
  // A bad response is answered to the client as a gateway error whatever the
  // fault was; the reason keeps the detail for the log.
  error_.status = kind_ == Kind::response ? 502 : status;
  error_.reason = std::move(reason);
  state_ = State::failed;
  head_buf_.clear();
  head_buf_.shrink_to_fit();
  return false;
}

void H1Parser::end_message() {
  // A 1xx is followed by the final response to the same request.
  if (kind_ == Kind::response && !informational_ && !request_methods_.empty())
    request_methods_.pop_front();
  informational_ = false;
  state_ = State::head;
  remaining_ = 0;
  handler_.on_message_end();
}

bool H1Parser::parse_head(std::string_view raw) {
  const bool request = kind_ == Kind::request;
  if (const char* err = check_section_bytes(raw)) return fail(400, err);

  // raw = start-line CRLF *(field-line CRLF) CRLF
  const auto eol = raw.find(kCRLF);
  const std::string_view line = raw.substr(0, eol);
  // Reused from message to message (its strings keep their capacity);
  // handlers see it only during on_head.
  MessageHead& head = head_;
  head.version_minor = 1;
  head.status = 0;
  if (request) {
    const auto sp1 = line.find(' ');
    const auto sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
    if (sp2 == std::string_view::npos) return fail(400, "malformed request line");
    const std::string_view method = line.substr(0, sp1);
    const std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    if (!is_token(method)) return fail(400, "invalid method");
    if (target.empty() || !std::all_of(target.begin(), target.end(), [](char c) {
          auto u = static_cast<unsigned char>(c);
          return u > 0x20 && u != 0x7f;
        }))
      return fail(400, "invalid request target");
    switch (parse_version(line.substr(sp2 + 1), head.version_minor)) {
      case Version::malformed: return fail(400, "malformed HTTP version");
      case Version::unsupported: return fail(505, "unsupported HTTP version");
      case Version::ok: break;
    }
    head.method.assign(method);
    head.target.assign(target);
  } else {
    // "HTTP/1.1 200 OK"; the SP before an empty reason is often left out.
    if (line.size() < 12 || line[8] != ' ') return fail(502, "malformed status line");
    switch (parse_version(line.substr(0, 8), head.version_minor)) {
      case Version::malformed: return fail(502, "malformed status line");
      case Version::unsupported: return fail(502, "unsupported HTTP version");
      case Version::ok: break;
    }
    const std::string_view code = line.substr(9, 3);
    if (!std::all_of(code.begin(), code.end(), is_digit) || code[0] == '0')
      return fail(502, "invalid status code");
    if (line.size() > 12 && line[12] != ' ') return fail(502, "malformed status line");
    const std::string_view reason = line.size() > 12 ? line.substr(13) : std::string_view();
    if (!std::all_of(reason.begin(), reason.end(), is_field_char))
      return fail(502, "invalid byte in reason phrase");
    head.status = (code[0] - '0') * 100 + (code[1] - '0') * 10 + (code[2] - '0');
    head.reason.assign(reason);
  }

  const std::string_view fields = raw.substr(eol + 2, raw.size() - eol - 4);
  // One allocation for the list instead of one per doubling.
  head.headers.reserve(static_cast<std::size_t>(std::count(fields.begin(), fields.end(), '\n')) + 1);
  if (const char* err = parse_fields(fields, head.headers)) return fail(400, err);

  ContentLength cl;
  TransferEncoding te;
  int hosts = 0;
  for (const auto& f : head.headers) {
    if (iequals(f.name, "content-length"))
      add_content_length(f.value, cl);
    else if (iequals(f.name, "transfer-encoding"))
      add_transfer_encoding(f.value, te);
    else if (iequals(f.name, "host"))
      ++hosts;
  }
  if (cl.overflow) return fail(413, "Content-Length too large");
  if (cl.invalid) return fail(400, "invalid Content-Length");
  if (cl.conflict) return fail(400, "conflicting Content-Length values");
  // RFC 9112 §6.3 lets Transfer-Encoding win, but a recipient that picks the
  // other one is exactly how request smuggling works: refuse both.
  if (te.present && cl.present) return fail(400, "both Transfer-Encoding and Content-Length");
  if (te.invalid) return fail(400, "malformed Transfer-Encoding");

  Framing framing = Framing::none;
  const std::uint64_t length = cl.present ? cl.value : 0;
  informational_ = false;
  if (request) {
    // Two Host fields may route the request differently on each side.
    if (hosts > 1) return fail(400, "multiple Host headers");
    if (hosts == 0 && head.version_minor == 1) return fail(400, "missing Host header");
    if (te.present) {
      if (head.version_minor == 0) return fail(400, "Transfer-Encoding in an HTTP/1.0 request");
      if (te.chunked == 1 && te.last_chunked)
        framing = Framing::chunked;
      else if (te.chunked == 0 && !te.last_known)
        return fail(501, "unsupported transfer coding");
      else
        return fail(400, "chunked is not the final transfer coding, exactly once");
    } else if (cl.present) {
      framing = Framing::content_length;
    }
    // What follows a CONNECT head is the tunnel, never a body.
    if (head.method == "CONNECT" && (framing == Framing::chunked || length > 0))
      return fail(400, "CONNECT request with content");
  } else {
    if (te.chunked > 1) return fail(502, "chunked applied more than once");
    const std::string_view method =
        request_methods_.empty() ? std::string_view("GET") : std::string_view(request_methods_.front());
    if (head.status < 200) {
      if (head.status == 101)
        framing = Framing::tunnel;
      else
        informational_ = true;
    } else if (method == "HEAD" || head.status == 204 || head.status == 304) {
      framing = Framing::none;
    } else if (method == "CONNECT" && head.status < 300) {
      framing = Framing::tunnel;
    } else if (te.present) {
      // RFC 9112 §6.3: without chunked last (or in HTTP/1.0, where
      // Transfer-Encoding is not defined) only the close delimits the body.
      framing = te.last_chunked && head.version_minor == 1 ? Framing::chunked : Framing::until_close;
    } else if (cl.present) {
      framing = Framing::content_length;
    } else {
      framing = Framing::until_close;
    }
  }

  switch (framing) {
    case Framing::none: state_ = State::head; break;
    case Framing::content_length: state_ = length > 0 ? State::body_length : State::head; break;
    case Framing::chunked: state_ = State::chunk_size; break;
    case Framing::until_close: state_ = State::body_close; break;
    case Framing::tunnel: state_ = State::tunnel; break;
  }
  remaining_ = framing == Framing::content_length ? length : 0;
  handler_.on_head(head, framing, length, raw);
  handler_.on_forward(raw);
  if (framing == Framing::none || (framing == Framing::content_length && length == 0)) end_message();
  return true;
}

bool H1Parser::parse_chunk_line(std::string_view line) {
  // line = chunk-size [ chunk-ext ], CRLF removed
  std::size_t digits = 0;
  std::uint64_t size = 0;
  while (digits < line.size()) {
    const char c = ascii_lower(line[digits]);
    unsigned d;
    if (is_digit(c))
      d = static_cast<unsigned>(c - '0');
    else if (c >= 'a' && c <= 'f')
      d = static_cast<unsigned>(c - 'a' + 10);
    else
      break;
    if (++digits > kMaxChunkSizeDigits) return fail(400, "chunk size too large");
    size = (size << 4) | d;
  }
  if (digits == 0) return fail(400, "invalid chunk size");
  std::string_view ext = line.substr(digits);
  if (!ext.empty()) {
    const auto semi = ext.find_first_not_of(" \t");
    if (semi == std::string_view::npos || ext[semi] != ';') return fail(400, "invalid chunk size");
    // Extensions are ignored, but they travel on the wire, so nothing that a
    // line-oriented parser could read as a line break is let through.
    if (!std::all_of(ext.begin(), ext.end(), is_field_char)) return fail(400, "invalid chunk extension");
  }
  remaining_ = size;
  state_ = size > 0 ? State::chunk_data : State::trailers;
  return true;
}

bool H1Parser::parse_trailers(std::string_view raw) {
  if (const char* err = check_section_bytes(raw)) return fail(400, err);
  HeaderList trailers;
  if (const char* err = parse_fields(raw.substr(0, raw.size() - 2), trailers)) return fail(400, err);
  handler_.on_trailers(trailers);
  return true;
}

bool H1Parser::feed(std::span<const char> data) {
  if (state_ == State::failed) return false;
  const char* p = data.data();
  const char* const end = p + data.size();
  // Validated input not yet passed to on_forward: [fwd, p). Forwarding is
  // coalesced per feed; it is flushed before a message ends or a head starts,
  // so every byte of a message is forwarded before its on_message_end.
  const char* fwd = p;
  auto flush = [&] {
    if (p > fwd) handler_.on_forward({fwd, static_cast<std::size_t>(p - fwd)});
    fwd = p;
  };
  // Keeps the unfinished rest of the input for the next feed (never forwarded
  // until it has been completed and validated).
  auto keep_rest = [&] {
    flush();
    head_buf_.append(p, end);
    p = fwd = end;
  };

  while (p < end && state_ != State::failed) {
    switch (state_) {
      case State::head: {
        const Scan s = scan(head_buf_, p, end, limits_.max_head, true, false);
        if (s.result == Scan::more) {
          keep_rest();
          break;
        }
        flush();
        if (s.result == Scan::bare_lf) return fail(400, "bare LF in message head");
        if (s.result == Scan::empty_first) return fail(400, "empty line before start line");
        if (s.result == Scan::too_long)
          return fail(431, "message head exceeds " + std::to_string(limits_.max_head) + " bytes");
        // The head is parsed in place when it arrived in one piece. A split
        // one is moved out of head_buf_ so that handlers see idle() == true
        // at the message end that parse_head may report.
        std::string split_head;
        std::string_view raw(p, s.used);
        if (!head_buf_.empty()) {
          head_buf_.append(p, s.used);
          split_head.swap(head_buf_);
          raw = split_head;
        }
        p = fwd = p + s.used;  // parse_head forwards the head itself
        if (!parse_head(raw)) return false;
        if (!split_head.empty()) {
          split_head.clear();
          head_buf_.swap(split_head);  // keep the allocation for the next one
        }
        break;
      }
      case State::body_length:
      case State::chunk_data: {
        const auto n = static_cast<std::size_t>(
            std::min<std::uint64_t>(remaining_, static_cast<std::uint64_t>(end - p)));
        handler_.on_body({p, n});
        p += n;
        remaining_ -= n;
        if (remaining_ == 0) {
          if (state_ == State::chunk_data) {
            state_ = State::chunk_crlf;
            remaining_ = 2;
          } else {
            flush();
            end_message();
          }
        }
        break;
      }
      case State::chunk_crlf:
        // remaining_ counts down the two bytes of the CRLF after chunk data.
        while (p < end && remaining_ > 0) {
          if (*p != (remaining_ == 2 ? '\r' : '\n')) {
            flush();
            return fail(400, "invalid chunk terminator");
          }
          ++p;
          --remaining_;
        }
        if (remaining_ == 0) state_ = State::chunk_size;
        break;
      case State::chunk_size: {
        const Scan s = scan(head_buf_, p, end, limits_.max_chunk_line, false, false);
        if (s.result == Scan::more) {
          keep_rest();
          break;
        }
        if (s.result != Scan::found) {
          flush();
          return fail(400, s.result == Scan::bare_lf ? "bare LF in chunk-size line" : "chunk-size line too long");
        }
        std::string_view line(p, s.used);
        if (!head_buf_.empty()) {
          head_buf_.append(p, s.used);
          line = head_buf_;
        }
        if (!parse_chunk_line(line.substr(0, line.size() - 2))) {
          flush();
          return false;
        }
        if (!head_buf_.empty()) {
          // Only happens at the start of a feed, so nothing is pending.
          handler_.on_forward(head_buf_);
          head_buf_.clear();
          fwd = p + s.used;
        }
        p += s.used;
        break;
      }
      case State::trailers: {
        const Scan s = scan(head_buf_, p, end, limits_.max_trailers, true, true);
        if (s.result == Scan::more) {
          keep_rest();
          break;
        }
        if (s.result != Scan::found) {
          flush();
          if (s.result == Scan::bare_lf) return fail(400, "bare LF in trailer section");
          return fail(431, "trailer section exceeds " + std::to_string(limits_.max_trailers) + " bytes");
        }
        std::string_view raw(p, s.used);
        if (!head_buf_.empty()) {
          head_buf_.append(p, s.used);
          raw = head_buf_;
        }
        if (!parse_trailers(raw)) {
          flush();
          return false;
        }
        if (!head_buf_.empty()) {
          handler_.on_forward(head_buf_);
          head_buf_.clear();
          fwd = p + s.used;
        }
        p += s.used;
        flush();
        end_message();
        break;
      }
      case State::body_close:
      case State::tunnel:
        handler_.on_body({p, static_cast<std::size_t>(end - p)});
        p = end;
        break;
      case State::failed:
        break;
    }
  }
  flush();
  return state_ != State::failed;
}

bool H1Parser::finish() {
  switch (state_) {
    case State::failed:
      return false;
    case State::head:
      if (head_buf_.empty()) return true;
      break;
    case State::body_close:
      end_message();
      return true;
    case State::tunnel:
      return true;
    default:
      break;
  }
  return fail(400, "connection closed mid-message");
}

namespace {
// Calls fn(token) for each non-empty element of a comma-separated list.
template <typename Fn>
void for_each_list_token(std::string_view v, Fn&& fn) {
  while (!v.empty()) {
    auto comma = v.find(',');
    std::string_view tok = v.substr(0, comma);
    while (!tok.empty() && (tok.front() == ' ' || tok.front() == '\t')) tok.remove_prefix(1);
    while (!tok.empty() && (tok.back() == ' ' || tok.back() == '\t')) tok.remove_suffix(1);
    if (!tok.empty()) fn(tok);
    if (comma == std::string_view::npos) break;
    v.remove_prefix(comma + 1);
  }
}

// Calls fn(token) for each option of the Connection headers.
template <typename Fn>
void for_each_connection_option(const MessageHead& head, Fn&& fn) {
  for (const auto& h : head.headers)
    if (iequals(h.name, "connection") || iequals(h.name, "proxy-connection")) for_each_list_token(h.value, fn);
}
}  // namespace

bool list_has(std::string_view value, std::string_view token) {
  bool found = false;
  for_each_list_token(value, [&](std::string_view tok) { found = found || iequals(tok, token); });
  return found;
}

std::string list_without(std::string_view value, std::string_view token) {
  std::string kept;
  for_each_list_token(value, [&](std::string_view tok) {
    if (iequals(tok, token)) return;
    if (!kept.empty()) kept.append(", ");
    kept.append(tok);
  });
  return kept;
}

std::vector<std::string> connection_options(const MessageHead& head, bool* close, bool* keep_alive) {
  std::vector<std::string> out;
  for_each_connection_option(head, [&](std::string_view tok) {
    if (iequals(tok, "close")) *close = true;
    if (iequals(tok, "keep-alive")) *keep_alive = true;
    out.emplace_back(tok);
  });
  return out;
}

// NTLM and Negotiate authenticate the connection, not the request (RFC
// 4559): an origin connection that carried them belongs to this client.
bool connection_bound_auth(const MessageHead& h, bool request) {
  for (const auto& f : h.headers) {
    std::string_view scheme;
    if (iequals(f.name, request ? "authorization" : "www-authenticate")) {
      scheme = std::string_view(f.value).substr(0, f.value.find(' '));
    } else if (!request && iequals(f.name, "proxy-support")) {
      scheme = "Negotiate";  // "Session-Based-Authentication" (MS-N2HT): the same binding
    } else {
      continue;
    }
    if (iequals(scheme, "NTLM") || iequals(scheme, "Negotiate")) return true;
  }
  return false;
}

bool connection_close(const MessageHead& head) {
  for (const auto& h : head.headers)
    if ((iequals(h.name, "connection") || iequals(h.name, "proxy-connection")) && list_has(h.value, "close"))
      return true;
  return false;
}

}  // namespace sightline::http
