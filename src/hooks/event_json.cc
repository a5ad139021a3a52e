#include "hooks/event_json.h"

#include "core/log.h"

#include <charconv>
#include <cstdio>
#include <ctime>

namespace sightline::hooks {
namespace {

// Appends members of one JSON object; keys are literals from this file.
class Obj {
 public:
  explicit Obj(std::string& out) : out_(out) { out_ += '{'; }
  void end() { out_ += '}'; }

  Obj& key(std::string_view k) {
    if (!first_) out_ += ',';
    first_ = false;
    out_ += '"';
    out_ += k;
    out_ += "\":";
    return *this;
  }
  Obj& str(std::string_view k, std::string_view v) {
    key(k);
    out_ += '"';
    log::append_json_escaped(out_, v);
    out_ += '"';
    return *this;
  }
  Obj& num(std::string_view k, std::uint64_t v) {
    key(k);
    char buf[24];
    auto r = std::to_chars(buf, buf + sizeof buf, v);
    out_.append(buf, r.ptr);
    return *this;
  }
  // Durations: three decimals, null when unknown (negative).
  Obj& fixed3(std::string_view k, double v) {
    key(k);
    char buf[64];
    auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed, 3);
    if (v < 0 || r.ec != std::errc{}) out_ += "null";
    else out_.append(buf, r.ptr);
    return *this;
  }
  Obj& strs(std::string_view k, const std::vector<std::string>& v) {
    key(k);
    out_ += '[';
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (i) out_ += ',';
      out_ += '"';
      log::append_json_escaped(out_, v[i]);
      out_ += '"';
    }
    out_ += ']';
    return *this;
  }
  Obj& boolean(std::string_view k, bool v) {
    key(k);
    out_ += v ? "true" : "false";
    return *this;
  }
  Obj& time(std::string_view k, WallClock::time_point t) {
    key(k);
    out_ += '"';
    append_rfc3339(out_, t);
    out_ += '"';
    return *this;
  }
  std::string& out() { return out_; }

 private:
  std::string& out_;
  bool first_ = true;
};

std::string tls_text(const TlsDetails& t) {
  if (t.version.empty()) return {};
  return t.cipher.empty() ? t.version : t.version + " " + t.cipher;
}

void headers(Obj& o, const exchange::Headers& hs) {
  std::string& out = o.key("headers").out();
  out += '[';
  bool first = true;
  for (const auto& h : hs) {
    if (!first) out += ',';
    first = false;
    out += "[\"";
    log::append_json_escaped(out, h.name);
    out += "\",\"";
    log::append_json_escaped(out, h.value);
    out += "\"]";
  }
  out += ']';
}

void body(Obj& o, const std::string& captured, std::uint64_t total, std::size_t cap) {
  std::string_view b(captured);
  if (b.size() > cap) b = b.substr(0, cap);
  o.key("body").out() += '"';
  append_base64(o.out(), b);
  o.out() += '"';
  o.boolean("body_truncated", b.size() < total);
}

}  // namespace

void append_base64(std::string& out, std::string_view data) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  out.reserve(out.size() + (data.size() + 2) / 3 * 4);
  std::size_t i = 0;
  auto byte = [&](std::size_t k) { return static_cast<std::uint32_t>(static_cast<unsigned char>(data[k])); };
  for (; i + 3 <= data.size(); i += 3) {
    std::uint32_t v = byte(i) << 16 | byte(i + 1) << 8 | byte(i + 2);
    out += kAlphabet[v >> 18 & 63];
    out += kAlphabet[v >> 12 & 63];
    out += kAlphabet[v >> 6 & 63];
    out += kAlphabet[v & 63];
  }
  if (std::size_t rest = data.size() - i; rest > 0) {
    std::uint32_t v = byte(i) << 16 | (rest == 2 ? byte(i + 1) << 8 : 0);
    out += kAlphabet[v >> 18 & 63];
    out += kAlphabet[v >> 12 & 63];
    out += rest == 2 ? kAlphabet[v >> 6 & 63] : '=';
    out += '=';
  }
}

void append_rfc3339(std::string& out, WallClock::time_point t) {
  // Calendar arithmetic instead of gmtime_r, which takes glibc's time zone
  // lock: the archive writer, the event feed and the workers all format
  // times, several per exchange. floor() keeps times before 1970 right.
  using namespace std::chrono;
  const auto us = floor<microseconds>(t);
  const auto day = floor<days>(us);
  const year_month_day ymd{day};
  const hh_mm_ss hms{us - day};
  const int year = static_cast<int>(ymd.year());
  if (year < 0 || year > 9999) {
    char buf[96];  // sized for any int values, keeps -Wformat-truncation quiet
    int n = std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02d:%02d:%02d.%06ldZ", year,
                          static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()),
                          static_cast<int>(hms.hours().count()), static_cast<int>(hms.minutes().count()),
                          static_cast<int>(hms.seconds().count()), static_cast<long>(hms.subseconds().count()));
    if (n > 0) out.append(buf, static_cast<std::size_t>(n));
    return;
  }
  // Digits by hand: snprintf was most of the cost, and this runs several
  // times per exchange on the writer and event-feed threads.
  char buf[27];  // YYYY-MM-DDTHH:MM:SS.uuuuuuZ
  auto put = [&buf](std::size_t at, long value, std::size_t width) {
    for (std::size_t i = width; i-- > 0; value /= 10) buf[at + i] = static_cast<char>('0' + value % 10);
  };
  put(0, year, 4);
  buf[4] = '-';
  put(5, static_cast<unsigned>(ymd.month()), 2);
  buf[7] = '-';
  put(8, static_cast<unsigned>(ymd.day()), 2);
  buf[10] = 'T';
  put(11, hms.hours().count(), 2);
  buf[13] = ':';
  put(14, hms.minutes().count(), 2);
  buf[16] = ':';
  put(17, hms.seconds().count(), 2);
  buf[19] = '.';
  put(20, hms.subseconds().count(), 6);
  buf[26] = 'Z';
  out.append(buf, sizeof buf);
}

void format_exchange(std::string& out, const ExchangeRecord& rec, std::size_t body_cap, bool with_headers,
                     std::string_view extra_fields) {
  const exchange::ConnectionInfo& c = *rec.connection;
  Obj o(out);
  o.str("type", "exchange").time("ts", rec.end).num("id", rec.id).num("conn", c.id);
  o.str("client", c.client).str("server", c.server).str("target", c.target).str("sni", c.sni);
  o.str("user", c.user).strs("groups", c.groups);
  o.str("rule", c.rule).str("client_tls", c.client_tls).str("upstream_tls", c.upstream_tls).str("alpn", c.alpn);
  o.str("protocol", rec.protocol).num("stream", rec.stream);
  o.time("start", rec.start).time("end", rec.end);
  o.fixed3("duration_ms",
           static_cast<double>(std::chrono::duration_cast<std::chrono::microseconds>(rec.end - rec.start).count()) /
               1e3);
  o.fixed3("request_held_us", rec.request_held_us).fixed3("response_held_us", rec.response_held_us);
  const bool bodies = body_cap > 0 && rec.bodies_captured;
  {
    Obj r(o.key("request").out());
    r.str("method", rec.request.method).str("scheme", rec.request.scheme);
    r.str("authority", rec.request.authority).str("target", rec.request.target);
    r.str("version", rec.request.version);
    if (with_headers) headers(r, rec.request.headers);
    r.num("body_bytes", rec.request_body_bytes);
    if (bodies) body(r, rec.request_body, rec.request_body_bytes, body_cap);
    r.end();
  }
  if (rec.has_response) {
    Obj r(o.key("response").out());
    r.num("status", static_cast<std::uint64_t>(rec.response.status < 0 ? 0 : rec.response.status));
    r.str("reason", rec.response.reason).str("version", rec.response.version);
    if (with_headers) headers(r, rec.response.headers);
    r.num("body_bytes", rec.response_body_bytes);
    if (bodies) body(r, rec.response_body, rec.response_body_bytes, body_cap);
    r.end();
  } else {
    o.key("response").out() += "null";
  }
  o.str("outcome", rec.complete ? "complete" : "aborted").str("reason", rec.abort_reason);
  if (!rec.icap_reqmod.empty() || !rec.icap_respmod.empty()) {
    Obj i(o.key("icap").out());
    if (!rec.icap_reqmod.empty()) i.str("reqmod", rec.icap_reqmod).fixed3("reqmod_ms", rec.icap_reqmod_ms);
    if (!rec.icap_respmod.empty()) i.str("respmod", rec.icap_respmod).fixed3("respmod_ms", rec.icap_respmod_ms);
    i.end();
  }
  if (!extra_fields.empty()) {
    out += ',';  // after "type", the object's first member
    out += extra_fields;
  }
  o.end();
  out += '\n';
}

void format_connection(std::string& out, const ConnectionRecord& rec) {
  Obj o(out);
  o.str("type", "connection").str("event", "close").time("ts", rec.ts).num("id", rec.id);
  o.str("client", rec.client).str("server", rec.server).str("target", rec.target).str("sni", rec.sni);
  o.str("action", rec.action).str("rule", rec.rule).str("policy", rec.policy);
  o.str("user", rec.user).strs("groups", rec.groups);
  o.str("client_tls", tls_text(rec.client_tls)).str("upstream_tls", tls_text(rec.upstream_tls));
  o.str("alpn", rec.client_tls.alpn.empty() ? rec.upstream_tls.alpn : rec.client_tls.alpn);
  o.str("codec", rec.codec).str("upstream_verdict", rec.upstream_verdict).str("upstream_reason", rec.upstream_reason);
  o.num("status", static_cast<std::uint64_t>(rec.status < 0 ? 0 : rec.status));
  o.num("bytes_client_to_server", rec.bytes_client_to_server);
  o.num("bytes_server_to_client", rec.bytes_server_to_client);
  o.fixed3("upstream_connect_ms", rec.upstream_connect_ms);
  o.fixed3("upstream_handshake_ms", rec.upstream_handshake_ms);
  o.fixed3("forge_ms", rec.forge_ms);
  o.fixed3("client_handshake_ms", rec.client_handshake_ms);
  o.fixed3("duration_ms", rec.total_ms);
  o.str("close_reason", rec.close_reason).boolean("auto_bypass", rec.auto_bypass);
  o.end();
  out += '\n';
}

}  // namespace sightline::hooks
