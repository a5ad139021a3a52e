#include "proxy/plain_http.h"

#include "net/address.h"

#include <algorithm>

namespace sightline::proxy {

using exchange::Clock;
using http::Framing;
using http::iequals;
using http::connection_bound_auth;
using http::connection_options;
using http::MessageHead;
using http::Side;

namespace {

// Hop-by-hop fields (RFC 9110 §7.6.1) plus the proxy's own; the origin and
// the client each get the connection-level fields of their own hop only.
bool is_hop_by_hop(std::string_view name, const std::vector<std::string>& listed) {
  static constexpr std::string_view kFixed[] = {"connection", "proxy-connection", "keep-alive",
                                                "te", "upgrade", "proxy-authorization",
                                                "proxy-authenticate"};
  for (auto f : kFixed)
    if (iequals(name, f)) return true;
  for (const auto& l : listed)
    if (iequals(name, l)) return true;
  return false;
}

void append_fields(std::string& out, const MessageHead& head, const std::vector<std::string>& listed,
                   bool skip_host) {
  for (const auto& h : head.headers) {
    if (is_hop_by_hop(h.name, listed)) continue;
    if (skip_host && iequals(h.name, "host")) continue;
    out.append(h.name).append(": ").append(h.value).append("\r\n");
  }
}

exchange::Head event_head(const MessageHead& head, bool request) {
  exchange::Head out;
  out.version = head.version_minor == 0 ? "HTTP/1.0" : "HTTP/1.1";
  if (request) {
    out.method = head.method;
    out.scheme = "http";
  } else {
    out.status = head.status;
    out.reason = head.reason;
  }
  for (const auto& h : head.headers) out.headers.push_back({h.name, h.value});
  return out;
}

}  // namespace

struct PlainHttpProxy::Ex {
  exchange::Exchange ex;
  bool client_close = false;      // the client asked to close after this exchange
  bool head_sent = false;         // response head went to the client
  bool close_delimited = false;   // response body ends with the origin's close
  bool informational = false;
};

class PlainHttpProxy::RequestHandler final : public http::H1Parser::Handler {
 public:
  explicit RequestHandler(PlainHttpProxy& p) : p_(p) {}

  void on_head(const MessageHead& head, Framing, std::uint64_t, std::string_view) override {
    p_.skip_request_head_ = true;
    if (p_.ending_) return;
    // An absolute-form http:// URI is what a client sends to a proxy.
    std::string_view target = head.target;
    constexpr std::string_view kScheme = "http://";
    if (target.size() < kScheme.size() || !iequals(target.substr(0, kScheme.size()), kScheme)) {
      p_.answer(400, target.substr(0, 8) == "https://" || head.method == "CONNECT"
                         ? "use CONNECT for https"
                         : "the request target must be an absolute http:// URI",
                true);
      return;
    }
    std::string_view rest = target.substr(kScheme.size());
    auto slash = rest.find_first_of("/?");
    std::string authority(rest.substr(0, slash));
    std::string path = slash == std::string_view::npos ? "/" : std::string(rest.substr(slash));
    if (path.front() == '?') path.insert(0, "/");
    if (authority.find('@') != std::string::npos) {
      p_.answer(400, "credentials in the request URI are not forwarded", true);
      return;
    }
    bool has_port = !authority.empty() &&
                    (authority.back() != ']' && authority.find(':') != std::string::npos &&
                     (authority.front() != '[' || authority.rfind("]:") != std::string::npos));
    auto hp = net::parse_host_port(has_port ? authority : authority + ":80");
    if (!hp) {
      p_.answer(400, "invalid host in the request URI", true);
      return;
    }
    if (!p_.awaiting_.empty() && p_.up_ && p_.up_->key() != hp->to_string()) {
      p_.answer(400, "pipelined requests to different origins are not supported", true);
      return;
    }

    using Icap = PlainHttpSettings::RequestPolicy::Icap;
    const std::string* proxy_auth = head.find("proxy-authorization");
    auto policy = p_.settings_.decide ? p_.settings_.decide(*hp, proxy_auth ? *proxy_auth : std::string_view())
                                      : PlainHttpSettings::RequestPolicy{};
    if (!policy.challenge.empty()) {
      p_.answer(407, policy.block, true, "Proxy-Authenticate: " + policy.challenge + "\r\n");
      return;
    }
    if (!policy.block.empty()) {
      p_.answer(policy.status, policy.block, true);
      return;
    }
    // Each request may match another rule: its exchange carries that rule's
    // name, hook selection and archive choice.
    if (policy.rule != p_.connection_->rule || policy.archive != p_.connection_->archive ||
        policy.hooks != p_.connection_->hooks) {
      auto info = std::make_shared<exchange::ConnectionInfo>(*p_.connection_);
      info->rule = policy.rule;
      info->hooks = policy.hooks;
      info->archive = policy.archive;
      p_.connection_ = std::move(info);
    }
    if (policy.icap == Icap::refuse) {
      p_.answer(403, "plain HTTP is not sent to ICAP and a fail-closed ICAP service applies: use https",
                true);
      return;
    }

    auto st = std::make_shared<Ex>();
    bool close = false, keep_alive = false;
    auto listed = connection_options(head, &close, &keep_alive);
    st->client_close = close || (head.version_minor == 0 && !keep_alive);
    st->ex.id = exchange::next_exchange_id(p_.connection_->worker);
    st->ex.connection = p_.connection_;
    st->ex.protocol = head.version_minor == 0 ? "HTTP/1.0" : "HTTP/1.1";
    st->ex.method = head.method;
    st->ex.authority = hp->port == 80 ? hp->host : hp->to_string();
    st->ex.target = path;
    st->ex.timing.request_head_in = Clock::now();
    exchange::Head ev = event_head(head, true);
    ev.authority = st->ex.authority;
    ev.target = path;
    if (policy.icap == Icap::skip) {
      if (policy.icap_reqmod) st->ex.icap_reqmod = "skipped";
      if (policy.icap_respmod) st->ex.icap_respmod = "skipped";
      if (p_.settings_.on_icap_skip) p_.settings_.on_icap_skip();
    }
    p_.current_request_ = st;
    p_.awaiting_.push_back(st);
    p_.consumer_.on_request_head(st->ex, ev);

    if (!p_.select_upstream(hp->host, hp->port)) return;
    if (connection_bound_auth(head, true)) p_.upstream_reusable_ = false;  // pinned: never pooled
    std::string out;
    out.reserve(256 + head.headers.size() * 48);
    out.append(head.method).append(" ").append(path).append(" HTTP/1.1\r\n");
    out.append("Host: ").append(st->ex.authority).append("\r\n");
    append_fields(out, head, listed, true);
    if (!p_.settings_.via.empty())
      out.append("Via: ").append(head.version_minor == 0 ? "1.0 " : "1.1 ").append(p_.settings_.via).append("\r\n");
    out.append("\r\n");
    p_.responses_->expect_response_to(head.method);
    p_.send_upstream(out);
    st->ex.timing.request_head_out = Clock::now();
  }
  void on_body(std::span<const char> data) override {
    if (!p_.current_request_) return;
    p_.current_request_->ex.request_body_bytes += data.size();
    p_.consumer_.on_body(p_.current_request_->ex, exchange::Direction::request, data);
  }
  void on_forward(std::span<const char> wire) override {
    if (p_.skip_request_head_) {
      p_.skip_request_head_ = false;
      return;
    }
    if (p_.current_request_ && !p_.ending_) p_.send_upstream(wire);
  }
  void on_trailers(const http::HeaderList& t) override {
    trailers_.clear();
    for (const auto& h : t) trailers_.push_back({h.name, h.value});
  }
  void on_message_end() override {
    if (p_.current_request_) p_.consumer_.on_request_end(p_.current_request_->ex, trailers_);
    trailers_.clear();
    p_.current_request_.reset();
  }

 private:
  PlainHttpProxy& p_;
  exchange::Headers trailers_;
};

class PlainHttpProxy::ResponseHandler final : public http::H1Parser::Handler {
 public:
  explicit ResponseHandler(PlainHttpProxy& p) : p_(p) {}

  void on_head(const MessageHead& head, Framing framing, std::uint64_t, std::string_view) override {
    p_.skip_response_head_ = true;
    if (p_.awaiting_.empty()) return;
    Ex& st = *p_.awaiting_.front();
    bool close = false, keep_alive = false;
    auto listed = connection_options(head, &close, &keep_alive);
    st.informational = head.status < 200;
    if (!st.informational) {
      st.ex.status = head.status;
      st.ex.timing.response_head_in = Clock::now();
      st.close_delimited = framing == Framing::until_close;
      if (close || head.version_minor == 0 || st.close_delimited) p_.upstream_reusable_ = false;
    }
    if (connection_bound_auth(head, false)) p_.upstream_reusable_ = false;  // pinned: never pooled
    p_.consumer_.on_response_head(st.ex, event_head(head, false));
    std::string out;
    out.append("HTTP/1.1 ").append(std::to_string(head.status)).append(" ").append(head.reason).append("\r\n");
    append_fields(out, head, listed, false);
    if (!p_.settings_.via.empty())
      out.append("Via: ").append(head.version_minor == 0 ? "1.0 " : "1.1 ").append(p_.settings_.via).append("\r\n");
    if (!st.informational && (st.client_close || st.close_delimited)) out.append("Connection: close\r\n");
    out.append("\r\n");
    p_.io_.send(Side::client, out);
    if (!st.informational) {
      st.head_sent = true;
      st.ex.timing.response_head_out = Clock::now();
    }
  }
  void on_body(std::span<const char> data) override {
    if (p_.awaiting_.empty()) return;
    Ex& st = *p_.awaiting_.front();
    st.ex.response_body_bytes += data.size();
    p_.consumer_.on_body(st.ex, exchange::Direction::response, data);
  }
  void on_forward(std::span<const char> wire) override {
    if (p_.skip_response_head_) {
      p_.skip_response_head_ = false;
      return;
    }
    p_.io_.send(Side::client, wire);
    // Back-pressure: the origin waits while the client is slow.
    if (p_.up_ && p_.io_.queued(Side::client) >= p_.settings_.high_watermark) p_.up_->read_stop();
  }
  void on_trailers(const http::HeaderList& t) override {
    trailers_.clear();
    for (const auto& h : t) trailers_.push_back({h.name, h.value});
  }
  void on_message_end() override {
    if (p_.awaiting_.empty()) return;
    if (p_.awaiting_.front()->informational) {
      p_.awaiting_.front()->informational = false;
      return;
    }
    auto st = p_.awaiting_.front();
    st->ex.timing.end = Clock::now();
    p_.consumer_.on_response_end(st->ex, trailers_);
    trailers_.clear();
    p_.finish_exchange();
  }

 private:
  PlainHttpProxy& p_;
  exchange::Headers trailers_;
};

PlainHttpProxy::PlainHttpProxy(http::RelayIo& io, exchange::Consumer& consumer,
                               std::shared_ptr<const exchange::ConnectionInfo> connection,
                               PlainHttpSettings settings, net::UpstreamPool& pool, uv_loop_t* loop,
                               std::span<char> read_buffer)
    : io_(io),
      consumer_(consumer),
      connection_(std::move(connection)),
      settings_(std::move(settings)),
      pool_(pool),
      loop_(loop),
      read_buffer_(read_buffer),
      req_handler_(std::make_unique<RequestHandler>(*this)),
      resp_handler_(std::make_unique<ResponseHandler>(*this)),
      requests_(http::H1Parser::Kind::request, *req_handler_, settings_.limits) {}

PlainHttpProxy::~PlainHttpProxy() {
  for (auto& st : awaiting_) consumer_.on_abort(st->ex, "connection closed");
  if (current_request_ && std::find(awaiting_.begin(), awaiting_.end(), current_request_) == awaiting_.end())
    consumer_.on_abort(current_request_->ex, "connection closed");
  release_upstream(awaiting_.empty() && !current_request_ && upstream_reusable_);
}

// Uses the current origin connection when it goes to the same place, else
// one from the pool, else a new one.
bool PlainHttpProxy::select_upstream(const std::string& host, std::uint16_t port) {
  auto probe = net::HostPort{host, port, host.find(':') != std::string::npos ? net::HostKind::ipv6 : net::HostKind::name};
  std::string key = probe.to_string();
  if (up_ && up_->key() == key && (up_->connected() || !outbox_.empty())) return true;
  release_upstream(upstream_reusable_ && awaiting_.size() <= 1);
  upstream_reusable_ = true;
  responses_ = std::make_unique<http::H1Parser>(http::H1Parser::Kind::response, *resp_handler_,
                                                settings_.limits);
  skip_response_head_ = false;
  up_ = pool_.take(key);
  if (up_) {
    up_->set_owner(this);
    up_->read_start();
    return true;
  }
  up_ = std::make_shared<net::UpstreamConn>(loop_, host, port, read_buffer_);
  io_.pause_reading(Side::client, true);  // until connected: bounded buffering
  up_->connect(settings_.connect_timeout, this, settings_.destinations);
  return up_ != nullptr;
}

void PlainHttpProxy::release_upstream(bool reusable) {
  if (!up_) return;
  auto conn = std::move(up_);
  conn->set_owner(nullptr);
  outbox_.clear();
  if (reusable && conn->connected() && responses_ && responses_->idle()) {
    pool_.put(std::move(conn));
  } else {
    conn->close();
  }
}

void PlainHttpProxy::send_upstream(std::span<const char> data) {
  if (!up_) return;
  if (!up_->connected()) {
    outbox_.append(data.data(), data.size());
    return;
  }
  up_->write(data);
  if (up_->queued() >= settings_.high_watermark) io_.pause_reading(Side::client, true);
}

void PlainHttpProxy::on_upstream_connected(net::UpstreamConn& c, int status, const std::string& error) {
  if (&c != up_.get()) return;
  if (status != 0) {
    bool timeout = error.find("timed out") != std::string::npos;
    up_.reset();
    outbox_.clear();
    io_.note_failure(status == net::kDestinationRefused ? core::FailureCause::access_destination
                     : status == net::kResolveFailed    ? core::FailureCause::upstream_dns
                     : timeout                          ? core::FailureCause::upstream_connect_timeout
                                                        : core::FailureCause::upstream_connect);
    answer(status == net::kDestinationRefused ? 403 : timeout ? 504 : 502, error, true);
    return;
  }
  up_->read_start();
  if (!outbox_.empty()) {
    std::string out;
    out.swap(outbox_);
    up_->write(out);
  }
  if (up_->queued() < settings_.high_watermark) io_.pause_reading(Side::client, false);
}

void PlainHttpProxy::on_upstream_data(net::UpstreamConn& c, std::span<const char> data) {
  if (&c != up_.get() || !responses_) return;
  if (awaiting_.empty()) {
    upstream_reusable_ = false;
    release_upstream(false);  // bytes nobody asked for: the connection is unusable
    return;
  }
  if (!responses_->feed(data)) {
    const std::string why = "invalid response from origin: " + responses_->error().reason;
    io_.note_failure(core::FailureCause::upstream_protocol);
    if (!awaiting_.empty() && !awaiting_.front()->head_sent) {
      answer(502, why, true);
    } else {
      io_.fail(why);
    }
  }
}

bool PlainHttpProxy::awaiting_origin() const {
  return up_ && !awaiting_.empty();
}

void PlainHttpProxy::on_upstream_closed(net::UpstreamConn& c, const std::string& reason) {
  if (&c != up_.get()) return;
  up_.reset();
  // The close may be what delimits the body.
  bool whole = responses_ ? responses_->finish() : true;
  if (awaiting_.empty() && whole) return;
  io_.note_failure(core::FailureCause::upstream_reset);
  if (!awaiting_.empty() && !awaiting_.front()->head_sent) {
    answer(502, "origin closed the connection before responding (" + reason + ")", true);
    return;
  }
  for (auto& st : awaiting_) consumer_.on_abort(st->ex, "origin closed mid-response");
  awaiting_.clear();
  io_.set_close_reason("origin closed mid-response");
  ending_ = true;
  io_.stop_reading(Side::client);
  io_.end(Side::client, false);
}

void PlainHttpProxy::on_upstream_drained(net::UpstreamConn& c) {
  if (&c == up_.get() && !ending_) io_.pause_reading(Side::client, false);
}

void PlainHttpProxy::on_writable(Side to) {
  if (to == Side::client && up_ && !ending_) up_->read_start();
}

void PlainHttpProxy::on_data(Side from, std::span<const char> data) {
  if (from != Side::client || ending_) return;
  if (!requests_.feed(data)) {
    const auto& err = requests_.error();
    if (current_request_) {
      consumer_.on_abort(current_request_->ex, err.reason);
      awaiting_.erase(std::remove(awaiting_.begin(), awaiting_.end(), current_request_), awaiting_.end());
      current_request_.reset();
      upstream_reusable_ = false;
    }
    answer(err.status, err.reason, true);
  }
}

void PlainHttpProxy::on_end(Side from, bool) {
  if (from != Side::client) return;
  client_eof_ = true;
  if (!requests_.finish() && current_request_) {
    consumer_.on_abort(current_request_->ex, "client closed mid-request");
    awaiting_.erase(std::remove(awaiting_.begin(), awaiting_.end(), current_request_), awaiting_.end());
    current_request_.reset();
    upstream_reusable_ = false;
    release_upstream(false);
  }
  maybe_end_client();
}

void PlainHttpProxy::finish_exchange() {
  auto st = awaiting_.front();
  awaiting_.pop_front();
  if (st->close_delimited) release_upstream(false);
  else if (awaiting_.empty() && !upstream_reusable_) release_upstream(false);
  if (st->client_close || st->close_delimited) {
    ending_ = true;
    io_.stop_reading(Side::client);
    io_.end(Side::client, true);
    return;
  }
  maybe_end_client();
}

void PlainHttpProxy::maybe_end_client() {
  if (client_eof_ && awaiting_.empty() && !ending_) {
    ending_ = true;
    io_.end(Side::client, true);
  }
}

// The proxy's own response; earlier exchanges are abandoned.
void PlainHttpProxy::answer(int status, const std::string& reason, bool close_after,
                            std::string_view extra_headers) {
  if (ending_) return;
  for (auto& st : awaiting_) consumer_.on_abort(st->ex, reason);
  awaiting_.clear();
  current_request_.reset();
  release_upstream(false);
  const char* phrase = status == 400   ? "Bad Request"
                       : status == 403 ? "Forbidden"
                       : status == 503 ? "Service Unavailable"
                       : status == 407 ? "Proxy Authentication Required"
                       : status == 431 ? "Request Header Fields Too Large"
                       : status == 501 ? "Not Implemented"
                       : status == 504 ? "Gateway Timeout"
                       : status == 505 ? "HTTP Version Not Supported"
                                       : "Bad Gateway";
  std::string body = "sightline: " + reason + "\n";
  std::string resp = "HTTP/1.1 " + std::to_string(status) + " " + phrase +
                     "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: " +
                     std::to_string(body.size()) + "\r\nCache-Control: no-store\r\n" + std::string(extra_headers) +
                     (close_after ? "Connection: close\r\n" : "") + "\r\n" + body;
  io_.set_close_reason(reason);
  io_.send(Side::client, resp);
  if (close_after) {
    ending_ = true;
    io_.stop_reading(Side::client);
    io_.end(Side::client, true);
  }
}

}  // namespace sightline::proxy
