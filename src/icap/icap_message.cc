#include "icap/icap_message.h"

#include "http/syntax.h"

#include <algorithm>
#include <array>
#include <charconv>

namespace sightline::icap {
namespace {

constexpr std::string_view kCRLF = "\r\n";
// 16 hex digits already cover 2^64 - 1; more can only be padding or overflow.
constexpr std::size_t kMaxChunkDigits = 16;

using http::syntax::is_digit;
using http::syntax::is_tchar;
using http::syntax::is_token;
using http::syntax::is_ws;
// field-vchar / SP / HTAB: what may appear in a field value or reason phrase.
bool is_field_char(char c) {
  auto u = static_cast<unsigned char>(c);
  return u == '\t' || (u >= 0x20 && u != 0x7f);
}
bool is_visible(char c) {
  auto u = static_cast<unsigned char>(c);
  return u > 0x20 && u != 0x7f;
}
char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + ('a' - 'A')) : c; }
bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) { return lower(x) == lower(y); });
}
std::string_view trim_ows(std::string_view v) {
  while (!v.empty() && is_ws(v.front())) v.remove_prefix(1);
  while (!v.empty() && is_ws(v.back())) v.remove_suffix(1);
  return v;
}

// Splits a head (ending in CRLFCRLF) into its start line and field lines,
// rejecting bare CR, bare LF, NUL and obsolete line folding.
bool split_head(std::string_view raw, std::string_view& start, std::vector<std::string_view>& lines,
                std::string* error) {
  if (raw.size() < 4 || raw.substr(raw.size() - 4) != "\r\n\r\n") {
    *error = "head does not end with an empty line";
    return false;
  }
  for (std::size_t i = 0; i < raw.size(); ++i) {
    const char c = raw[i];
    if (c == '\0') {
      *error = "NUL in head";
      return false;
    }
    if (c == '\r' && (i + 1 >= raw.size() || raw[i + 1] != '\n')) {
      *error = "bare CR in head";
      return false;
    }
    if (c == '\n' && (i == 0 || raw[i - 1] != '\r')) {
      *error = "bare LF in head";
      return false;
    }
  }
  std::string_view rest = raw.substr(0, raw.size() - 2);  // drop the final empty line
  auto eol = rest.find(kCRLF);
  start = rest.substr(0, eol);
  rest.remove_prefix(eol + 2);
  while (!rest.empty()) {
    eol = rest.find(kCRLF);
    std::string_view line = rest.substr(0, eol);
    if (!line.empty() && is_ws(line.front())) {
      *error = "obsolete line folding";
      return false;
    }
    lines.push_back(line);
    rest.remove_prefix(eol + 2);
  }
  return true;
}

bool parse_fields(const std::vector<std::string_view>& lines, std::size_t max_fields,
                  exchange::Headers& out, std::string* error) {
  if (lines.size() > max_fields) {
    *error = "too many header fields";
    return false;
  }
  for (std::string_view line : lines) {
    const auto colon = line.find(':');
    if (colon == std::string_view::npos) {
      *error = "header line without a colon";
      return false;
    }
    std::string_view name = line.substr(0, colon);
    if (!is_token(name)) {
      *error = name.empty() || !is_ws(name.back()) ? "invalid header field name"
                                                   : "whitespace before the colon of a header field";
      return false;
    }
    std::string_view value = trim_ows(line.substr(colon + 1));
    if (!std::all_of(value.begin(), value.end(), is_field_char)) {
      *error = "invalid character in header field '" + std::string(name) + "'";
      return false;
    }
    out.push_back({std::string(name), std::string(value)});
  }
  return true;
}

const std::string* find_field(const exchange::Headers& h, std::string_view name) {
  for (const auto& f : h)
    if (iequals(f.name, name)) return &f.value;
  return nullptr;
}

bool parse_size(std::string_view s, std::size_t& out) {
  if (s.empty() || s.size() > 12 || !std::all_of(s.begin(), s.end(), is_digit)) return false;
  auto r = std::from_chars(s.data(), s.data() + s.size(), out);
  return r.ec == std::errc{} && r.ptr == s.data() + s.size();
}

bool safe_field(const exchange::Header& f) {
  auto bad = [](char c) { return c == '\r' || c == '\n' || c == '\0'; };
  return !f.name.empty() && std::none_of(f.name.begin(), f.name.end(), bad) &&
         std::none_of(f.value.begin(), f.value.end(), bad);
}

std::string hex(std::size_t n) {
  std::array<char, 20> b{};
  auto r = std::to_chars(b.data(), b.data() + b.size(), n, 16);
  return std::string(b.data(), r.ptr);
}

}  // namespace

const char* method_name(Method m) {
  switch (m) {
    case Method::options: return "OPTIONS";
    case Method::reqmod: return "REQMOD";
    case Method::respmod: return "RESPMOD";
  }
  return "?";
}

const char* section_name(Section s) {
  switch (s) {
    case Section::req_hdr: return "req-hdr";
    case Section::res_hdr: return "res-hdr";
    case Section::req_body: return "req-body";
    case Section::res_body: return "res-body";
    case Section::opt_body: return "opt-body";
    case Section::null_body: return "null-body";
  }
  return "?";
}

std::optional<std::vector<EncapsulatedPart>> parse_encapsulated(std::string_view value,
                                                                std::string* error) {
  std::vector<EncapsulatedPart> parts;
  auto bad = [&](std::string why) -> std::optional<std::vector<EncapsulatedPart>> {
    *error = "Encapsulated: " + why;
    return std::nullopt;
  };
  if (trim_ows(value).empty()) return bad("empty");
  for (;;) {
    const auto comma = value.find(',');
    std::string_view item = trim_ows(value.substr(0, comma));
    const auto eq = item.find('=');
    if (eq == std::string_view::npos) return bad("entry without '='");
    std::string_view name = item.substr(0, eq);
    EncapsulatedPart p;
    if (name == "req-hdr") p.section = Section::req_hdr;
    else if (name == "res-hdr") p.section = Section::res_hdr;
    else if (name == "req-body") p.section = Section::req_body;
    else if (name == "res-body") p.section = Section::res_body;
    else if (name == "opt-body") p.section = Section::opt_body;
    else if (name == "null-body") p.section = Section::null_body;
    else return bad("unknown entry '" + std::string(name) + "'");
    if (!parse_size(item.substr(eq + 1), p.offset)) return bad("invalid offset for " + std::string(name));
    if (parts.size() >= 3) return bad("too many entries");
    parts.push_back(p);
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
  // Order: [req-hdr] [res-hdr] body; exactly one body marker, last.
  const Section last = parts.back().section;
  if (last == Section::req_hdr || last == Section::res_hdr) return bad("no body entry last");
  for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
    const Section s = parts[i].section;
    if (s != Section::req_hdr && s != Section::res_hdr) return bad("body entry before the end");
    if (parts[i + 1].section == Section::req_hdr) return bad("req-hdr out of order");
    if (s == Section::res_hdr && parts[i + 1].section == Section::res_hdr) return bad("res-hdr twice");
    if (parts[i + 1].offset <= parts[i].offset) return bad("offsets not increasing");
  }
  if (parts.front().offset != 0) return bad("first offset is not 0");
  if (last == Section::req_body && parts.size() > 1 && parts[parts.size() - 2].section == Section::res_hdr)
    return bad("req-body after res-hdr");
  if (last == Section::opt_body && parts.size() > 1) return bad("opt-body with HTTP heads");
  return parts;
}

bool parse_http_head(std::string_view raw, bool request, exchange::Head& out, std::string* error) {
  std::string_view start;
  std::vector<std::string_view> lines;
  std::string why;
  auto bad = [&](std::string w) {
    *error = std::string(request ? "encapsulated request head: " : "encapsulated response head: ") + w;
    return false;
  };
  if (!split_head(raw, start, lines, &why)) return bad(why);
  out = exchange::Head{};
  auto version_ok = [](std::string_view v) { return v == "HTTP/1.1" || v == "HTTP/1.0"; };
  if (request) {
    const auto sp1 = start.find(' ');
    const auto sp2 = sp1 == std::string_view::npos ? sp1 : start.find(' ', sp1 + 1);
    if (sp2 == std::string_view::npos) return bad("malformed request line");
    std::string_view method = start.substr(0, sp1);
    std::string_view target = start.substr(sp1 + 1, sp2 - sp1 - 1);
    std::string_view version = start.substr(sp2 + 1);
    if (!is_token(method)) return bad("invalid method");
    if (target.empty() || !std::all_of(target.begin(), target.end(), is_visible)) return bad("invalid target");
    if (!version_ok(version)) return bad("unsupported HTTP version");
    out.method = method;
    out.version = version;
    if (const auto sep = target.find("://"); target.front() != '/' && sep != std::string_view::npos) {
      std::string_view scheme = target.substr(0, sep);
      if (!is_token(scheme)) return bad("invalid scheme in target");
      std::string_view rest = target.substr(sep + 3);
      const auto path = rest.find_first_of("/?");
      out.scheme.assign(scheme.begin(), scheme.end());
      std::transform(out.scheme.begin(), out.scheme.end(), out.scheme.begin(), lower);
      out.authority = rest.substr(0, path);
      if (out.authority.empty()) return bad("absolute target without authority");
      out.target = path == std::string_view::npos ? std::string("/") : std::string(rest.substr(path));
      if (out.target.front() == '?') out.target.insert(0, "/");
    } else {
      out.target = target;
    }
  } else {
    if (start.size() < 12 || !version_ok(start.substr(0, 8)) || start[8] != ' ' ||
        !is_digit(start[9]) || !is_digit(start[10]) || !is_digit(start[11]) ||
        (start.size() > 12 && start[12] != ' '))
      return bad("malformed status line");
    std::string_view reason = start.size() > 12 ? start.substr(13) : std::string_view{};
    if (!std::all_of(reason.begin(), reason.end(), is_field_char)) return bad("invalid reason phrase");
    out.version = start.substr(0, 8);
    out.status = (start[9] - '0') * 100 + (start[10] - '0') * 10 + (start[11] - '0');
    if (out.status < 100) return bad("invalid status code");
    out.reason = reason;
  }
  if (!parse_fields(lines, 1000, out.headers, &why)) return bad(why);
  if (request && out.authority.empty())
    if (const auto* host = find_field(out.headers, "host")) out.authority = *host;
  return true;
}

std::string serialize_http_head(const exchange::Head& h, bool request) {
  std::string out;
  const std::string version = (h.version == "HTTP/1.0" || h.version == "HTTP/1.1") ? h.version : "HTTP/1.1";
  if (request) {
    out += h.method;
    out += ' ';
    if (!h.target.empty() && h.target.front() == '/' && !h.scheme.empty() && !h.authority.empty())
      out += h.scheme + "://" + h.authority;
    out += h.target.empty() ? std::string("/") : h.target;
    out += ' ';
    out += version;
    out += kCRLF;
    if (!find_field(h.headers, "host") && !h.authority.empty()) out += "Host: " + h.authority + "\r\n";
  } else {
    out += version;
    out += ' ';
    const int s = std::clamp(h.status, 100, 999);
    out += std::to_string(s);
    out += ' ';
    out += h.reason;
    out += kCRLF;
  }
  for (const auto& f : h.headers) {
    if (!safe_field(f)) continue;  // never let a value split the message
    out += f.name;
    out += ": ";
    out += f.value;
    out += kCRLF;
  }
  out += kCRLF;
  return out;
}

const std::string* Response::find(std::string_view name) const { return find_field(headers, name); }

bool Response::keep_alive() const {
  const auto* c = find("connection");
  return !(c && iequals(trim_ows(*c), "close"));
}

// ---------------------------------------------------------------------------

ResponseParser::ResponseParser(Limits limits) : limits_(limits) {}

void ResponseParser::reset() {
  state_ = State::icap_head;
  buf_.clear();
  heads_len_ = 0;
  chunk_left_ = 0;
  last_chunk_ = false;
  started_ = false;
  resp_ = Response{};
  error_.clear();
}

Response ResponseParser::take() {
  Response r = std::move(resp_);
  resp_ = Response{};
  return r;
}

ResponseParser::Status ResponseParser::status() const {
  if (state_ == State::done) return Status::complete;
  if (state_ == State::failed) return Status::failed;
  return Status::incomplete;
}

ResponseParser::Status ResponseParser::fail(std::string reason) {
  state_ = State::failed;
  error_ = std::move(reason);
  buf_.clear();
  return Status::failed;
}

bool ResponseParser::parse_icap_head(std::string_view raw) {
  std::string_view start;
  std::vector<std::string_view> lines;
  std::string why;
  if (!split_head(raw, start, lines, &why)) return reject("ICAP head: " + why);
  // "ICAP/1.0 200 OK": the reason may be empty, the space before it may not
  // be missing only when nothing follows.
  if (start.size() < 12 || start.substr(0, 9) != "ICAP/1.0 " || !is_digit(start[9]) ||
      !is_digit(start[10]) || !is_digit(start[11]) || (start.size() > 12 && start[12] != ' '))
    return reject("malformed ICAP status line");
  std::string_view reason = start.size() > 12 ? start.substr(13) : std::string_view{};
  if (!std::all_of(reason.begin(), reason.end(), is_field_char)) return reject("invalid ICAP reason phrase");
  resp_.status = (start[9] - '0') * 100 + (start[10] - '0') * 10 + (start[11] - '0');
  resp_.reason = reason;
  if (resp_.status < 100) return reject("invalid ICAP status code");
  if (resp_.status >= 100 && resp_.status < 200 && resp_.status != 100)
    return reject("unexpected ICAP status " + std::to_string(resp_.status));
  if (!parse_fields(lines, limits_.max_fields, resp_.headers, &why)) return reject("ICAP head: " + why);

  const std::string* enc = nullptr;
  for (const auto& f : resp_.headers) {
    if (!iequals(f.name, "encapsulated")) continue;
    if (enc) return reject("more than one Encapsulated header");
    enc = &f.value;
  }
  if (resp_.status == 100) {  // a continuation carries nothing
    state_ = State::done;
    return true;
  }
  if (!enc) {
    if (resp_.status == 200) return reject("200 response without Encapsulated header");
    state_ = State::done;  // 204 and errors: nothing encapsulated
    return true;
  }
  auto parts = parse_encapsulated(*enc, &why);
  if (!parts) return reject(why);
  resp_.encapsulated = std::move(*parts);
  const EncapsulatedPart& body = resp_.encapsulated.back();
  if (body.section != Section::null_body) resp_.body_section = body.section;
  heads_len_ = body.offset;
  if (heads_len_ > limits_.max_http_heads) return reject("encapsulated HTTP heads exceed the limit");
  if (heads_len_ > 0) state_ = State::http_heads;
  else state_ = resp_.body_section ? State::chunk_line : State::done;
  return true;
}

bool ResponseParser::parse_http_heads(std::string_view raw) {
  const auto& parts = resp_.encapsulated;
  for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
    std::string_view one = raw.substr(parts[i].offset, parts[i + 1].offset - parts[i].offset);
    const bool request = parts[i].section == Section::req_hdr;
    exchange::Head head;
    std::string why;
    // The head must fill its section exactly: its blank line is the section's end.
    if (one.size() < 4 || one.substr(one.size() - 4) != "\r\n\r\n" || one.find("\r\n\r\n") != one.size() - 4)
      return reject(std::string(section_name(parts[i].section)) + " does not match its Encapsulated offsets");
    if (!parse_http_head(one, request, head, &why)) return reject(why);
    if (request) {
      resp_.http_request = std::move(head);
      resp_.raw_http_request = one;
    } else {
      resp_.http_response = std::move(head);
      resp_.raw_http_response = one;
    }
  }
  state_ = resp_.body_section ? State::chunk_line : State::done;
  return true;
}

bool ResponseParser::parse_chunk_line(std::string_view line) {
  std::string_view size_part = line;
  std::string_view ext;
  if (const auto semi = line.find(';'); semi != std::string_view::npos) {
    size_part = line.substr(0, semi);
    ext = trim_ows(line.substr(semi + 1));
  }
  size_part = trim_ows(size_part);
  if (size_part.empty() || size_part.size() > kMaxChunkDigits) return reject("invalid chunk size");
  std::uint64_t size = 0;
  auto r = std::from_chars(size_part.data(), size_part.data() + size_part.size(), size, 16);
  if (r.ec != std::errc{} || r.ptr != size_part.data() + size_part.size()) return reject("invalid chunk size");
  if (!ext.empty() || line.find(';') != std::string_view::npos) {
    if (ext != "ieof") return reject("unsupported chunk extension");
    if (size != 0) return reject("ieof on a non-final chunk");
    resp_.ieof = true;
  }
  if (size == 0) {
    state_ = State::last_crlf;
    return true;
  }
  if (size > limits_.max_body - resp_.body.size()) return reject("encapsulated body exceeds the limit");
  chunk_left_ = size;
  state_ = State::chunk_data;
  return true;
}

ResponseParser::Status ResponseParser::feed(std::span<const char> data, std::size_t* consumed) {
  std::size_t pos = 0;
  auto done = [&](Status s) {
    if (consumed) *consumed = pos;
    return s;
  };
  if (state_ == State::failed) return done(Status::failed);
  if (!data.empty()) started_ = true;
  while (pos < data.size() && state_ != State::done && state_ != State::failed) {
    std::string_view in(data.data() + pos, data.size() - pos);
    switch (state_) {
      case State::icap_head:
      case State::chunk_line: {
        // Look for CRLFCRLF (head) or CRLF (chunk line), starting where a
        // terminator could begin that straddles the previous feed.
        const bool head = state_ == State::icap_head;
        const std::string_view term = head ? "\r\n\r\n" : kCRLF;
        const std::size_t cap = head ? limits_.max_icap_head : limits_.max_chunk_line;
        const std::size_t old = buf_.size();
        // The limit counts the terminator, so where the input is cut never
        // changes the outcome.
        const std::size_t take = std::min(in.size(), cap - old);
        buf_.append(in.substr(0, take));
        const std::size_t from = old >= term.size() - 1 ? old - (term.size() - 1) : 0;
        const auto end = buf_.find(term, from);
        if (head) {  // fail fast on something that is not ICAP at all
          const std::size_t k = std::min<std::size_t>(buf_.size(), 5);
          if (std::string_view(buf_).substr(0, k) != std::string_view("ICAP/").substr(0, k))
            return done(fail("not an ICAP response"));
        }
        if (end == std::string::npos) {
          if (buf_.size() >= cap) return done(fail(head ? "ICAP head exceeds the limit" : "chunk-size line too long"));
          pos += take;
          break;
        }
        const std::size_t used = end + term.size() - old;
        pos += used;
        std::string text = std::move(buf_);
        buf_.clear();
        text.resize(end + term.size());
        if (head) {
          if (!parse_icap_head(text)) return done(Status::failed);
        } else {
          std::string_view line(text.data(), end);
          if (line.find_first_of(std::string_view("\r\n\0", 3)) != std::string_view::npos)
            return done(fail("bare CR, LF or NUL in a chunk-size line"));
          if (!parse_chunk_line(line)) return done(Status::failed);
        }
        break;
      }
      case State::http_heads: {
        const std::size_t take = std::min(in.size(), heads_len_ - buf_.size());
        buf_.append(in.substr(0, take));
        pos += take;
        if (buf_.size() == heads_len_) {
          std::string text = std::move(buf_);
          buf_.clear();
          if (!parse_http_heads(text)) return done(Status::failed);
        }
        break;
      }
      case State::chunk_data: {
        const std::size_t take =
            static_cast<std::size_t>(std::min<std::uint64_t>(in.size(), chunk_left_));
        resp_.body.append(in.substr(0, take));
        chunk_left_ -= take;
        pos += take;
        if (chunk_left_ == 0) state_ = State::chunk_crlf;
        break;
      }
      case State::chunk_crlf:
      case State::last_crlf: {
        // Exactly CRLF; a trailer field here is refused (ICAP has no use for one).
        buf_.push_back(in.front());
        ++pos;
        if (buf_.size() == 1 && buf_[0] != '\r')
          return done(fail(state_ == State::chunk_crlf ? "chunk data not followed by CRLF"
                                                       : "trailers after the last chunk"));
        if (buf_.size() == 2) {
          if (buf_[1] != '\n') return done(fail("bare CR after a chunk"));
          buf_.clear();
          state_ = state_ == State::chunk_crlf ? State::chunk_line : State::done;
        }
        break;
      }
      case State::done:
      case State::failed:
        break;
    }
  }
  return done(status());
}

// ---------------------------------------------------------------------------

void append_chunk(std::string& out, std::string_view data) {
  if (data.empty()) return;  // a zero-size chunk would end the body
  out += hex(data.size());
  out += kCRLF;
  out += data;
  out += kCRLF;
}

void append_last_chunk(std::string& out, bool ieof) { out += ieof ? "0; ieof\r\n\r\n" : "0\r\n\r\n"; }

WireRequest serialize(const Request& r) {
  WireRequest w;
  std::string heads;
  std::string enc;
  if (r.method != Method::options) {
    if (r.http_request) {
      enc += "req-hdr=0";
      heads += serialize_http_head(*r.http_request, true);
    }
    if (r.method == Method::respmod && r.http_response) {
      if (!enc.empty()) enc += ", ";
      enc += "res-hdr=" + std::to_string(heads.size());
      heads += serialize_http_head(*r.http_response, false);
    }
    if (!enc.empty()) enc += ", ";
    const char* body_name = r.method == Method::reqmod ? "req-body=" : "res-body=";
    enc += (r.body.empty() ? std::string("null-body=") : std::string(body_name)) + std::to_string(heads.size());
  } else {
    enc = "null-body=0";
  }

  std::string& out = w.first;
  out += method_name(r.method);
  out += ' ';
  out += r.uri;
  out += " ICAP/1.0\r\nHost: ";
  out += r.host;
  out += kCRLF;
  if (r.method != Method::options && r.allow_204) out += "Allow: 204\r\n";
  const bool preview = r.method != Method::options && r.preview && !r.body.empty();
  std::size_t n = 0;
  if (preview) {
    n = std::min(*r.preview, r.body.size());
    out += "Preview: " + std::to_string(n) + "\r\n";
  }
  for (const auto& f : r.headers)
    if (safe_field(f)) out += f.name + ": " + f.value + "\r\n";
  out += "Encapsulated: " + enc + "\r\n\r\n";
  out += heads;
  if (r.body.empty() || r.method == Method::options) return w;
  if (!preview) {
    append_chunk(out, r.body);
    append_last_chunk(out, false);
    return w;
  }
  append_chunk(out, r.body.substr(0, n));
  if (n == r.body.size()) {
    append_last_chunk(out, true);  // the body ended inside the preview
    return w;
  }
  append_last_chunk(out, false);
  append_chunk(w.rest, r.body.substr(n));
  append_last_chunk(w.rest, false);
  w.previewing = true;
  return w;
}

}  // namespace sightline::icap
