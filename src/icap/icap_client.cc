#include "icap/icap_client.h"

#include "net/address.h"

#include <algorithm>
#include <charconv>

namespace sightline::icap {
namespace {

using Clock = std::chrono::steady_clock;

char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + ('a' - 'A')) : c; }
char upper(char c) { return (c >= 'a' && c <= 'z') ? static_cast<char>(c - ('a' - 'A')) : c; }

std::string_view trim(std::string_view v) {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  return v;
}

// Comma-separated list, elements trimmed and case-folded, empty ones skipped.
std::vector<std::string> split_list(std::string_view v, char (*fold)(char)) {
  std::vector<std::string> out;
  for (;;) {
    const auto comma = v.find(',');
    std::string_view e = trim(v.substr(0, comma));
    if (!e.empty()) {
      std::string s(e);
      std::transform(s.begin(), s.end(), s.begin(), fold);
      out.push_back(std::move(s));
    }
    if (comma == std::string_view::npos) break;
    v.remove_prefix(comma + 1);
  }
  return out;
}

bool parse_number(std::string_view v, std::size_t& out) {
  v = trim(v);
  if (v.empty() || v.size() > 12 || !std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return false;
  auto r = std::from_chars(v.data(), v.data() + v.size(), out);
  return r.ec == std::errc{} && r.ptr == v.data() + v.size();
}

bool contains(const std::vector<std::string>& list, std::string_view item) {
  return std::find(list.begin(), list.end(), item) != list.end();
}

std::string host_port(const std::string& host, std::uint16_t port) {
  net::HostPort hp{host, port, host.find(':') != std::string::npos ? net::HostKind::ipv6 : net::HostKind::name};
  return hp.to_string();
}

}  // namespace

// ---------------------------------------------------------------------------
// URL, OPTIONS, Transfer-*

std::string ServiceUrl::host_header() const { return host_port(host, port); }
std::string ServiceUrl::uri() const { return "icap://" + host_header() + "/" + service; }

std::optional<ServiceUrl> parse_service_url(std::string_view url, std::string* error) {
  constexpr std::string_view scheme = "icap://";
  auto bad = [&](const char* why) -> std::optional<ServiceUrl> {
    *error = std::string("ICAP URL '") + std::string(url) + "': " + why;
    return std::nullopt;
  };
  if (url.size() < scheme.size() ||
      !std::equal(scheme.begin(), scheme.end(), url.begin(), [](char a, char b) { return a == lower(b); }))
    return bad("must start with icap://");
  std::string_view rest = url.substr(scheme.size());
  const auto slash = rest.find('/');
  if (slash == std::string_view::npos) return bad("no service path");
  std::string authority(rest.substr(0, slash));
  std::string_view service = rest.substr(slash + 1);
  if (service.empty()) return bad("empty service name");
  if (!std::all_of(service.begin(), service.end(), [](char c) {
        auto u = static_cast<unsigned char>(c);
        return u > 0x20 && u < 0x7f;
      }))
    return bad("invalid character in service name");
  // The port is optional here; parse_host_port wants one.
  const auto close = authority.rfind(']');
  const auto colon = authority.rfind(':');
  if (colon == std::string::npos || (close != std::string::npos && colon < close)) authority += ":1344";
  auto hp = net::parse_host_port(authority);
  if (!hp) return bad("invalid host or port");
  ServiceUrl u;
  u.host = hp->host;
  u.port = hp->port;
  u.service = service;
  return u;
}

bool ServiceOptions::supports(Method m) const { return contains(methods, method_name(m)); }

std::optional<ServiceOptions> parse_options(const Response& r, std::string* error) {
  auto bad = [&](std::string why) -> std::optional<ServiceOptions> {
    *error = "OPTIONS: " + why;
    return std::nullopt;
  };
  if (r.status != 200) return bad("answered " + std::to_string(r.status) + " " + r.reason);
  ServiceOptions o;
  const auto* methods = r.find("methods");
  if (!methods) return bad("no Methods header");
  o.methods = split_list(*methods, upper);
  const auto* istag = r.find("istag");
  if (!istag || istag->empty()) return bad("no ISTag header");
  o.istag = *istag;
  if (const auto* s = r.find("service")) o.service = *s;
  std::size_t n = 0;
  if (const auto* p = r.find("preview")) {
    if (!parse_number(*p, n)) return bad("invalid Preview");
    o.preview = n;
  }
  if (const auto* a = r.find("allow")) o.allow_204 = contains(split_list(*a, lower), "204");
  if (const auto* t = r.find("transfer-preview")) o.transfer_preview = split_list(*t, lower);
  if (const auto* t = r.find("transfer-ignore")) o.transfer_ignore = split_list(*t, lower);
  if (const auto* t = r.find("transfer-complete")) o.transfer_complete = split_list(*t, lower);
  if (const auto* m = r.find("max-connections")) {
    if (!parse_number(*m, n) || n == 0) return bad("invalid Max-Connections");
    o.max_connections = n;
  }
  if (const auto* t = r.find("options-ttl")) {
    if (!parse_number(*t, n)) return bad("invalid Options-TTL");
    o.ttl = std::chrono::seconds(static_cast<std::int64_t>(n));
  }
  return o;
}

Transfer transfer_for(const ServiceOptions& o, std::string_view target) {
  std::string_view path = target.substr(0, target.find_first_of("?#"));
  path = path.substr(path.rfind('/') == std::string_view::npos ? 0 : path.rfind('/') + 1);
  const auto dot = path.rfind('.');
  std::string ext;
  if (dot != std::string_view::npos) {
    ext = path.substr(dot + 1);
    std::transform(ext.begin(), ext.end(), ext.begin(), lower);
  }
  if (!ext.empty()) {
    if (contains(o.transfer_ignore, ext)) return Transfer::ignore;
    if (contains(o.transfer_complete, ext)) return Transfer::complete;
    if (contains(o.transfer_preview, ext)) return Transfer::preview;
  }
  if (contains(o.transfer_ignore, "*")) return Transfer::ignore;
  if (contains(o.transfer_complete, "*")) return Transfer::complete;
  return Transfer::preview;
}

const char* kind_name(Result::Kind k) {
  switch (k) {
    case Result::Kind::unchanged: return "unchanged";
    case Result::Kind::modified: return "modified";
    case Result::Kind::respond: return "respond";
    case Result::Kind::error: return "error";
  }
  return "?";
}

// ---------------------------------------------------------------------------
// Calls and transactions

struct IcapService::Call {
  Method method = Method::reqmod;
  exchange::Head req;
  exchange::Head resp;
  std::string body;
  exchange::Headers icap_headers;
  Callback cb;
  Clock::time_point started;
  bool retried = false;
};

// One request/answer on one connection. It owns the connection while it
// runs and hands it back to the pool only at a message boundary.
class IcapService::Transaction final : public net::UpstreamConn::Owner {
 public:
  // `call` is null for OPTIONS.
  Transaction(IcapService& svc, std::unique_ptr<Call> call) : svc_(svc), call_(std::move(call)) {
    Request r;
    r.method = call_ ? call_->method : Method::options;
    r.uri = svc_.config_.url.uri();
    r.host = svc_.config_.url.host_header();
    if (call_) {
      r.headers = call_->icap_headers;
      r.http_request = &call_->req;
      if (call_->method == Method::respmod) r.http_response = &call_->resp;
      r.body = call_->body;
      r.allow_204 = svc_.config_.allow_204;
      const ServiceOptions& o = *svc_.options_;
      if (svc_.config_.use_preview && o.preview &&
          transfer_for(o, call_->req.target) != Transfer::complete)
        r.preview = o.preview;
      // What an unchanged echo looks like, to tell it from a modification.
      sent_head_ = call_->method == Method::reqmod ? serialize_http_head(call_->req, true)
                                                   : serialize_http_head(call_->resp, false);
    }
    wire_ = serialize(r);
    if (r.preview && !call_->body.empty()) ++svc_.counters_.previews;
    parser_ = ResponseParser(svc_.config_.limits);
  }

  ~Transaction() override {
    if (conn_) {
      conn_->set_owner(nullptr);
      conn_->close();
    }
  }

  void begin(std::shared_ptr<net::UpstreamConn> conn, bool reused) {
    conn_ = std::move(conn);
    reused_ = reused;
    if (reused) {
      ++svc_.counters_.connections_reused;
      conn_->set_owner(this);
      conn_->read_start();
      send();
    } else {
      ++svc_.counters_.connections_opened;
      conn_->connect(svc_.config_.connect_timeout, this);  // may fail synchronously
    }
  }

  void fail(std::string why, bool retryable = false) {
    if (state_ == State::done) return;
    state_ = State::done;
    timer_.reset();
    drop_conn();
    IcapService& svc = svc_;  // `this` is only parked after finished(), not freed
    svc.finished(*this, nullptr);
    if (call_ && retryable && !call_->retried) {
      call_->retried = true;
      ++svc.counters_.retries;
      svc.waiting_.push_front(std::move(call_));
    } else if (call_) {
      Result res;
      res.error = std::move(why);
      res.sent = sent_;
      res.reused_connection = reused_;
      svc.deliver(std::move(call_), std::move(res));
    } else {
      svc.options_done(std::nullopt, std::move(why));
    }
    svc.pump();
  }

  // net::UpstreamConn::Owner
  void on_upstream_connected(net::UpstreamConn&, int status, const std::string& error) override {
    if (state_ == State::done) return;
    if (status != 0) {
      fail("ICAP connect failed: " + error);
      return;
    }
    conn_->read_start();
    send();
  }

  void on_upstream_data(net::UpstreamConn&, std::span<const char> data) override {
    if (state_ == State::done) return;
    got_bytes_ = true;
    arm_timer();
    while (!data.empty()) {
      std::size_t used = 0;
      const auto st = parser_.feed(data, &used);
      data = data.subspan(used);
      if (st == ResponseParser::Status::failed) {
        fail("ICAP protocol error: " + parser_.error());
        return;
      }
      if (st == ResponseParser::Status::incomplete) return;
      Response r = parser_.take();
      parser_.reset();
      if (r.status == 100) {
        if (state_ != State::preview) {
          fail("ICAP protocol error: unexpected 100 Continue");
          return;
        }
        ++svc_.counters_.continues;
        state_ = State::waiting;
        conn_->write(wire_.rest);  // may fail synchronously
        if (state_ == State::done) return;
        std::string().swap(wire_.rest);
        continue;
      }
      complete(std::move(r), !data.empty());
      return;
    }
  }

  void on_upstream_closed(net::UpstreamConn&, const std::string& reason) override {
    if (state_ == State::done) return;
    // A pooled connection the server closed just as we reused it: nothing
    // of an answer came, so the request can go again on a fresh one.
    fail("ICAP connection lost: " + reason, reused_ && !got_bytes_);
  }

  void on_upstream_drained(net::UpstreamConn&) override {}

 private:
  enum class State { connecting, preview, waiting, done };

  void arm_timer() {
    if (!timer_) {
      if (timer_.init(uv_timer_init, svc_.loop_) != 0) return;
      timer_.get()->data = this;
    }
    uv_timer_start(timer_.get(), [](uv_timer_t* t) {
      auto* self = static_cast<Transaction*>(t->data);
      self->fail("ICAP response timed out after " +
                 std::to_string(self->svc_.config_.response_timeout.count()) + " ms");
    }, static_cast<std::uint64_t>(svc_.config_.response_timeout.count()), 0);
  }

  void send() {
    state_ = wire_.previewing ? State::preview : State::waiting;
    sent_ = true;
    if (call_) ++svc_.counters_.requests_sent;
    else ++svc_.counters_.options_sent;
    arm_timer();
    conn_->write(wire_.first);  // may fail synchronously (then state_ is done)
    if (state_ != State::done) std::string().swap(wire_.first);
  }

  void drop_conn() {
    if (!conn_) return;
    conn_->set_owner(nullptr);
    conn_->close();
    conn_.reset();
  }

  void complete(Response r, bool trailing_bytes) {
    const bool was_preview = state_ == State::preview;
    state_ = State::done;
    timer_.reset();
    // Reusable only at a message boundary: everything we meant to write is
    // out (a final answer to a preview ends it: the preview had its last
    // chunk), nothing extra came, and the server keeps the connection.
    std::shared_ptr<net::UpstreamConn> reusable;
    if (r.keep_alive() && !trailing_bytes && conn_->connected() && conn_->queued() == 0) {
      conn_->set_owner(nullptr);
      reusable = std::move(conn_);
    } else {
      drop_conn();
    }
    (void)was_preview;
    IcapService& svc = svc_;
    if (const auto* tag = r.find("istag"); tag && svc.options_ && *tag != svc.options_->istag)
      svc.options_expiry_ = {};  // the service changed: ask OPTIONS again next time
    svc.finished(*this, std::move(reusable));
    if (!call_) {
      std::string why;
      auto opts = parse_options(r, &why);
      svc.options_done(std::move(opts), std::move(why));
      svc.pump();
      return;
    }
    Result res = interpret(std::move(r));
    svc.deliver(std::move(call_), std::move(res));
    svc.pump();
  }

  Result interpret(Response r) {
    Result res;
    res.sent = true;
    res.reused_connection = reused_;
    res.icap_status = r.status;
    if (const auto* tag = r.find("istag")) res.istag = *tag;
    else if (svc_.options_) res.istag = svc_.options_->istag;
    res.icap_headers = r.headers;
    if (r.status == 204) {
      res.kind = Result::Kind::unchanged;
      return res;
    }
    if (r.status != 200) {
      res.error = "ICAP server answered " + std::to_string(r.status) + " " + r.reason;
      return res;
    }
    const bool reqmod = call_->method == Method::reqmod;
    exchange::Head* head = nullptr;
    if (reqmod && r.http_response) {
      res.kind = Result::Kind::respond;  // the server answers the client itself
      head = &*r.http_response;
    } else if (reqmod && r.http_request) {
      head = &*r.http_request;
    } else if (!reqmod && r.http_response) {
      head = &*r.http_response;
    } else {
      res.error = "ICAP 200 answer without the encapsulated HTTP head";
      return res;
    }
    res.has_body = r.body_section.has_value();
    if (res.kind != Result::Kind::respond) {
      const bool same = serialize_http_head(*head, reqmod) == sent_head_ && r.body == call_->body;
      res.kind = same ? Result::Kind::unchanged : Result::Kind::modified;
    }
    res.head = std::move(*head);
    res.body = std::move(r.body);
    return res;
  }

  IcapService& svc_;
  std::unique_ptr<Call> call_;
  WireRequest wire_;
  std::string sent_head_;
  std::shared_ptr<net::UpstreamConn> conn_;
  ResponseParser parser_;
  core::UvHandle<uv_timer_t> timer_;
  State state_ = State::connecting;
  bool reused_ = false;
  bool sent_ = false;
  bool got_bytes_ = false;
};

// ---------------------------------------------------------------------------
// The service

IcapService::IcapService(uv_loop_t* loop, ServiceConfig config)
    : loop_(loop),
      config_(std::move(config)),
      read_buffer_(64 * 1024),
      pool_(loop, config_.idle_timeout, std::max<std::size_t>(1, config_.max_connections),
            std::max<std::size_t>(1, config_.max_connections)),
      alive_(std::make_shared<bool>(true)) {}

IcapService::~IcapService() {
  *alive_ = false;
  active_.clear();
  finished_.clear();
  pool_.clear();
}

void IcapService::reqmod(const exchange::Head& req, std::string body, Callback cb,
                         exchange::Headers icap_headers) {
  auto c = std::make_unique<Call>();
  c->method = Method::reqmod;
  c->req = req;
  c->body = std::move(body);
  c->icap_headers = std::move(icap_headers);
  c->cb = std::move(cb);
  submit(std::move(c));
}

void IcapService::respmod(const exchange::Head& req, const exchange::Head& resp, std::string body,
                          Callback cb, exchange::Headers icap_headers) {
  auto c = std::make_unique<Call>();
  c->method = Method::respmod;
  c->req = req;
  c->resp = resp;
  c->body = std::move(body);
  c->icap_headers = std::move(icap_headers);
  c->cb = std::move(cb);
  submit(std::move(c));
}

void IcapService::refresh_options(std::function<void(std::string)> done) {
  if (shut_down_) {
    deferred_.push_back([done = std::move(done)] { done("ICAP client shut down"); });
    run_deferred_soon();
    return;
  }
  options_waiters_.push_back(std::move(done));
  options_expiry_ = {};
  pump();
}

void IcapService::submit(std::unique_ptr<Call> call) {
  ++counters_.calls;
  call->started = Clock::now();
  if (shut_down_) {
    Result r;
    r.error = "ICAP client shut down";
    deliver(std::move(call), std::move(r));
  } else if (!within_body_cap(call->body.size())) {
    Result r;
    r.error = "body of " + std::to_string(call->body.size()) + " bytes exceeds the ICAP cap of " +
              std::to_string(config_.max_body);
    deliver(std::move(call), std::move(r));
  } else if (waiting_.size() >= config_.max_queue) {
    Result r;
    r.error = "ICAP queue full";
    deliver(std::move(call), std::move(r));
  } else {
    waiting_.push_back(std::move(call));
    pump();
  }
}

bool IcapService::options_fresh() const { return options_ && Clock::now() < options_expiry_; }

std::size_t IcapService::connection_limit() const {
  std::size_t limit = std::max<std::size_t>(1, config_.max_connections);
  if (options_ && options_->max_connections) limit = std::min(limit, *options_->max_connections);
  return limit;
}

// Takes an idle connection, or makes a new one if the limit allows.
std::shared_ptr<net::UpstreamConn> IcapService::acquire(bool& reused) {
  const std::string key = config_.url.host_header();
  if (auto c = pool_.take(key)) {
    reused = true;
    return c;
  }
  if (active_.size() + pool_.size() >= connection_limit()) return nullptr;
  reused = false;
  return std::make_shared<net::UpstreamConn>(loop_, config_.url.host, config_.url.port,
                                             std::span<char>(read_buffer_));
}

void IcapService::pump() {
  if (pumping_) {
    repump_ = true;  // a nested call (a synchronous failure): the outer loop goes again
    return;
  }
  pumping_ = true;
  do {
    repump_ = false;
    pump_once();
  } while (repump_ && !shut_down_);
  pumping_ = false;
}

void IcapService::pump_once() {
  if (shut_down_ || (waiting_.empty() && options_waiters_.empty())) return;
  if (!options_fresh() || (!options_waiters_.empty() && !options_pending_)) {
    if (options_pending_) return;  // calls wait for the answer
    bool reused = false;
    auto conn = acquire(reused);
    if (!conn) return;  // a connection frees up later
    options_pending_ = true;
    auto t = std::make_unique<Transaction>(*this, nullptr);
    Transaction& ref = *t;
    active_.push_back(std::move(t));
    ref.begin(std::move(conn), reused);
    return;
  }
  while (!waiting_.empty() && !shut_down_) {
    Call& c = *waiting_.front();
    if (!options_->supports(c.method)) {
      auto call = std::move(waiting_.front());
      waiting_.pop_front();
      Result r;
      r.error = std::string("ICAP service does not support ") + method_name(call->method);
      deliver(std::move(call), std::move(r));
      continue;
    }
    if (transfer_for(*options_, c.req.target) == Transfer::ignore) {
      auto call = std::move(waiting_.front());
      waiting_.pop_front();
      Result r;
      r.kind = Result::Kind::unchanged;
      r.istag = options_->istag;
      deliver(std::move(call), std::move(r));
      continue;
    }
    bool reused = false;
    auto conn = acquire(reused);
    if (!conn) return;
    auto call = std::move(waiting_.front());
    waiting_.pop_front();
    auto t = std::make_unique<Transaction>(*this, std::move(call));
    Transaction& ref = *t;
    active_.push_back(std::move(t));
    ref.begin(std::move(conn), reused);
  }
}

void IcapService::finished(Transaction& t, std::shared_ptr<net::UpstreamConn> reusable) {
  auto it = std::find_if(active_.begin(), active_.end(), [&](const auto& p) { return p.get() == &t; });
  if (it != active_.end()) {
    finished_.push_back(std::move(*it));
    active_.erase(it);
  }
  if (reusable) pool_.put(std::move(reusable));
  run_deferred_soon();
}

void IcapService::options_done(std::optional<ServiceOptions> opts, std::string error) {
  options_pending_ = false;
  if (opts) {
    auto ttl = opts->ttl.value_or(config_.default_options_ttl);
    ttl = std::max(ttl, std::chrono::seconds(1));  // TTL 0 would mean one OPTIONS per call
    options_ = std::move(opts);
    options_expiry_ = Clock::now() + ttl;
  }
  for (auto& w : options_waiters_)
    deferred_.push_back([w = std::move(w), error] { w(error); });
  options_waiters_.clear();
  if (!error.empty()) fail_waiting(error);
  run_deferred_soon();
}

void IcapService::fail_waiting(const std::string& error) {
  auto calls = std::move(waiting_);
  waiting_.clear();
  for (auto& c : calls) {
    Result r;
    r.error = error;
    deliver(std::move(c), std::move(r));
  }
}

void IcapService::deliver(std::unique_ptr<Call> call, Result r) {
  r.latency = Clock::now() - call->started;
  if (r.kind == Result::Kind::error) ++counters_.errors;
  deferred_.push_back([cb = std::move(call->cb), r = std::move(r)]() mutable { cb(std::move(r)); });
  run_deferred_soon();
}

void IcapService::run_deferred_soon() {
  if (!defer_timer_) {
    if (defer_timer_.init(uv_timer_init, loop_) != 0) return;
    defer_timer_.get()->data = this;
  }
  if (uv_is_active(defer_timer_.handle())) return;
  uv_timer_start(defer_timer_.get(), [](uv_timer_t* t) { static_cast<IcapService*>(t->data)->run_deferred(); },
                 0, 0);
}

void IcapService::run_deferred() {
  finished_.clear();
  auto alive = alive_;
  auto work = std::move(deferred_);
  deferred_.clear();
  for (std::size_t i = 0; i < work.size(); ++i) {
    work[i]();
    if (!*alive) return;  // a callback destroyed the service
  }
}

void IcapService::shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  std::vector<Transaction*> running;
  for (auto& t : active_) running.push_back(t.get());
  for (auto* t : running) t->fail("ICAP client shut down");
  fail_waiting("ICAP client shut down");
  for (auto& w : options_waiters_)
    deferred_.push_back([w = std::move(w)] { w("ICAP client shut down"); });
  options_waiters_.clear();
  pool_.clear();
  run_deferred_soon();
}

}  // namespace sightline::icap
