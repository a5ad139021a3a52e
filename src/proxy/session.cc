#include "proxy/session.h"

#include "archive/warc.h"

#include "core/log.h"
#include "http/h1_relay.h"
#include "http/h2_relay.h"
#include "http/sniff_relay.h"
#include "net/address.h"
#include "net/proxy_protocol.h"
#include "metrics/proxy_metrics.h"
#include "proxy/plain_http.h"
#include "tls/forge.h"

#include <arpa/inet.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>
#include <netinet/in.h>

#include <openssl/crypto.h>

#include <algorithm>
#include <atomic>
#include <cstring>

namespace sightline::proxy {

namespace {

double ms_between(std::uint64_t from, std::uint64_t to) {
  if (from == 0 || to == 0 || to < from) return -1;
  return static_cast<double>(to - from) / 1e6;
}

nlohmann::json tls_json(const TlsFacts& f, bool with_resumed) {
  if (!f.version) return nullptr;
  nlohmann::json j = {{"version", f.version}, {"cipher", f.cipher}, {"alpn", f.alpn}};
  if (with_resumed) j["resumed"] = f.resumed;
  return j;
}

// A fatal alert from the client that rejects our certificate (OpenSSL
// reports a received alert as reason SSL_AD_REASON_OFFSET + its code): its
// RFC 8446 name, or null for any other error.
const char* certificate_alert(unsigned long err) {
  if (err == 0 || ERR_GET_LIB(err) != ERR_LIB_SSL) return nullptr;
  switch (ERR_GET_REASON(err) - SSL_AD_REASON_OFFSET) {
    case SSL_AD_BAD_CERTIFICATE: return "bad_certificate";
    case SSL_AD_UNSUPPORTED_CERTIFICATE: return "unsupported_certificate";
    case SSL_AD_CERTIFICATE_REVOKED: return "certificate_revoked";
    case SSL_AD_CERTIFICATE_EXPIRED: return "certificate_expired";
    case SSL_AD_CERTIFICATE_UNKNOWN: return "certificate_unknown";
    case SSL_AD_UNKNOWN_CA: return "unknown_ca";
    case SSL_AD_ACCESS_DENIED: return "access_denied";
    default: return nullptr;
  }
}

// Password checks queued on libuv's thread pool, process-wide. The pool
// also resolves names: past this many, clients get 503 instead of a queue
// that delays everyone's DNS.
constexpr int kMaxAuthInFlight = 16;
std::atomic<int> g_auth_in_flight{0};

const std::string* find_header(const std::vector<std::pair<std::string, std::string>>& headers,
                               std::string_view name) {
  for (const auto& [n, v] : headers)
    if (http::iequals(n, name)) return &v;
  return nullptr;
}

// Wire encoding of an ALPN list.
std::string encode_alpn(const std::vector<std::string>& protos) {
  std::string out;
  for (const auto& p : protos) {
    out.push_back(static_cast<char>(p.size()));
    out += p;
  }
  return out;
}

}  // namespace

struct Session::WriteReq {
  uv_write_t req{};
  std::unique_ptr<char[]> data;
  Session* session = nullptr;
  Leg* leg = nullptr;
};

// Holds the session alive while libuv's thread pool resolves: a DNS request
// is not tied to a handle, so closing the session does not cancel it in time.
struct Session::ResolveReq {
  uv_getaddrinfo_t req{};
  std::shared_ptr<Session> session;
};

// A password check on the thread pool. Holds the session (like ResolveReq)
// and the identity snapshot whose hash it reads.
struct Session::AuthReq {
  uv_work_t req{};
  std::shared_ptr<Session> session;
  std::shared_ptr<const identity::Directory> directory;
  const identity::PasswordHash* hash = nullptr;  // in `directory`, or the dummy
  identity::BasicCredentials credentials;
  std::string user;  // as in the credentials file; empty: unknown user
  identity::AuthCache::Key key{};
  bool ok = false;
};

Session::Session(SessionHost& host, const ProxyContext& ctx, std::uint64_t id, unsigned worker)
    : host_(host), ctx_(ctx), id_(id), worker_(worker) {
  client_.name = "client";
  upstream_.name = "upstream";
}

Session::~Session() = default;

// ---------------------------------------------------------------------------
// Accept and request head

void Session::set_action(const char* action) {
  if (ctx_.metrics) {
    auto& m = *ctx_.metrics;
    m.registry.add(worker_, m.active_connections[metrics::idx(metrics::conn_action(action_))], -1);
    m.registry.add(worker_, m.active_connections[metrics::idx(metrics::conn_action(action))], 1);
  }
  action_ = action;
}

void Session::start(uv_stream_t* server, const ListenerInfo& listener) {
  t_accept_ = uv_hrtime();
  if (ctx_.metrics)
    ctx_.metrics->registry.add(worker_, ctx_.metrics->active_connections[metrics::idx(metrics::ConnAction::none)], 1);
  uv_loop_t* loop = host_.loop();
  uv_timer_init(loop, &timer_);
  timer_.data = this;
  timer_initialized_ = true;
  ++open_handles_;
  client_.tcp = std::make_unique<uv_tcp_t>();
  uv_tcp_init(loop, client_.tcp.get());
  client_.tcp->data = this;
  client_.initialized = true;
  ++open_handles_;
  if (int rc = uv_accept(server, reinterpret_cast<uv_stream_t*>(client_.tcp.get())); rc != 0) {
    fatal_ = true;
    close(std::string("accept failed: ") + uv_strerror(rc));
    return;
  }
  uv_tcp_nodelay(client_.tcp.get(), 1);
  sockaddr_storage peer{};
  int len = sizeof peer;
  if (uv_tcp_getpeername(client_.tcp.get(), reinterpret_cast<sockaddr*>(&peer), &len) == 0) {
    client_sa_ = peer;
    client_addr_ = net::sockaddr_to_string(reinterpret_cast<sockaddr*>(&peer));
    char ip[INET6_ADDRSTRLEN] = {0};
    if (peer.ss_family == AF_INET)
      inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&peer)->sin_addr, ip, sizeof ip);
    else if (peer.ss_family == AF_INET6)
      inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(&peer)->sin6_addr, ip, sizeof ip);
    client_ip_ = ip;
  }
  listener_ = listener;
  if (listener.proxy_protocol != 0) {
    // A PROXY header from the load balancer comes before anything else.
    state_ = State::reading_proxy_header;
    arm_timer(ctx_.settings.handshake_timeout);
    start_reading(client_);
    return;
  }
  after_proxy_header();
}

void Session::on_proxy_header_data(const char* data, std::size_t n) {
  inbuf_.append(data, n);
  net::ProxyHeader hdr;
  auto res = net::parse_proxy_header(
      std::span(reinterpret_cast<const std::uint8_t*>(inbuf_.data()), inbuf_.size()),
      listener_.proxy_protocol == 1 ? net::ProxyProtocolVersion::v1 : net::ProxyProtocolVersion::v2, hdr);
  if (res.status == net::ProxyParseStatus::need_more) return;
  if (res.status == net::ProxyParseStatus::error) {
    note_failure(core::FailureCause::client_bad_request);
    close("bad PROXY protocol header: " + res.reason);
    return;
  }
  inbuf_.erase(0, hdr.header_bytes);
  if (!hdr.local) {
    // The load balancer's word replaces the socket's addresses for policy,
    // logs and metrics (and, in transparent mode, the original destination).
    client_sa_ = hdr.source;
    client_addr_ = net::sockaddr_to_string(reinterpret_cast<sockaddr*>(&hdr.source));
    char ip[INET6_ADDRSTRLEN] = {0};
    if (hdr.source.ss_family == AF_INET)
      inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&hdr.source)->sin_addr, ip, sizeof ip);
    else
      inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(&hdr.source)->sin6_addr, ip, sizeof ip);
    client_ip_ = ip;
    original_dst_ = hdr.destination;
    have_original_dst_ = true;
  }
  stop_reading(client_);
  after_proxy_header();
}

void Session::after_proxy_header() {
  const ListenerInfo& listener = listener_;
  if (!admit_client()) return;
  identify_by_address();
  if (listener.kind == ListenerKind::redirect || listener.kind == ListenerKind::tproxy) {
    begin_transparent();
    return;
  }
  if (listener.static_target) {
    // Static listener: the target is fixed, the client speaks TLS at once.
    static_ = true;
    request_.authority = listener.target;
    connect_known_target();
    return;
  }
  read_request_head();
}

// Explicit listeners: the request head, starting with what came after a
// PROXY header, within timeouts.handshake.
void Session::read_request_head() {
  state_ = State::reading_request;
  arm_timer(ctx_.settings.handshake_timeout);
  if (!inbuf_.empty()) {
    std::string early;
    early.swap(inbuf_);
    on_request_data(early.data(), early.size());
    if (state_ != State::reading_request) return;
  }
  start_reading(client_);
}

bool Session::admit_client() {
  const auto& client = reinterpret_cast<const sockaddr&>(client_sa_);
  std::optional<AdmissionRefusal> refusal;
  if (ctx_.access && !ctx_.access->client_allowed(client)) {
    note_failure(core::FailureCause::access_client);
    refusal = AdmissionRefusal{403, "client " + (client_ip_.empty() ? std::string("?") : client_ip_) +
                                        " is not in access.allow_clients"};
  } else if (ctx_.limits) {
    switch (ctx_.limits->acquire(client, limit_slot_)) {
      case net::ConnectionLimits::Verdict::ok:
        return true;
      case net::ConnectionLimits::Verdict::total:
        note_failure(core::FailureCause::limit_connections);
        refusal = AdmissionRefusal{503, "connection limit reached (limits.max_connections = " +
                                            std::to_string(ctx_.limits->max_total()) + ")"};
        break;
      case net::ConnectionLimits::Verdict::per_client:
        note_failure(core::FailureCause::limit_client);
        refusal = AdmissionRefusal{503, "too many connections from " + client_ip_ +
                                            " (limits.max_connections_per_client = " +
                                            std::to_string(ctx_.limits->max_per_client()) + ")"};
        break;
    }
  }
  if (!refusal) return true;
  set_action("reject");
  if (listener_.kind != ListenerKind::explicit_proxy) {
    close(refusal->reason);  // nothing on these listeners speaks HTTP to us first
    return false;
  }
  // The client's request head is read (bounded by timeouts.handshake and
  // limits.max_request_head) so it gets the answer rather than a reset.
  admission_refusal_ = std::move(refusal);
  read_request_head();
  return false;
}

// Transparent listener: the client thinks it talks to the origin. The
// original destination comes from the PROXY header, from conntrack
// (REDIRECT/DNAT: SO_ORIGINAL_DST) or is the socket's own address (TPROXY).
void Session::begin_transparent() {
  static_ = true;
  transparent_ = true;
  if (!have_original_dst_) {
    int fd = -1;
    uv_fileno(reinterpret_cast<uv_handle_t*>(client_.tcp.get()), &fd);
    socklen_t len = sizeof original_dst_;
    int rc = -1;
    if (listener_.kind == ListenerKind::tproxy) {
      rc = getsockname(fd, reinterpret_cast<sockaddr*>(&original_dst_), &len);
    } else {
      sockaddr_storage local{};
      socklen_t llen = sizeof local;
      getsockname(fd, reinterpret_cast<sockaddr*>(&local), &llen);
      rc = local.ss_family == AF_INET6
               ? getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &original_dst_, &len)
               : getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &original_dst_, &len);
    }
    if (rc != 0) {
      close(std::string("no original destination (not redirected?): ") + std::strerror(errno));
      return;
    }
  }
  // Loop protection: a connection aimed at one of our own listeners would
  // come straight back to us.
  auto same_endpoint = [](const sockaddr_storage& a, const sockaddr_storage& b) {
    if (a.ss_family != b.ss_family) return false;
    if (a.ss_family == AF_INET) {
      auto* x = reinterpret_cast<const sockaddr_in*>(&a);
      auto* y = reinterpret_cast<const sockaddr_in*>(&b);
      return x->sin_port == y->sin_port &&
             (y->sin_addr.s_addr == htonl(INADDR_ANY) || x->sin_addr.s_addr == y->sin_addr.s_addr);
    }
    auto* x = reinterpret_cast<const sockaddr_in6*>(&a);
    auto* y = reinterpret_cast<const sockaddr_in6*>(&b);
    return x->sin6_port == y->sin6_port &&
           (IN6_IS_ADDR_UNSPECIFIED(&y->sin6_addr) || IN6_ARE_ADDR_EQUAL(&x->sin6_addr, &y->sin6_addr));
  };
  for (const auto& own : ctx_.own_addresses)
    if (same_endpoint(original_dst_, own)) {
      set_action("reject");
      note_failure(core::FailureCause::access_destination);
      close("loop: the original destination " +
            net::sockaddr_to_string(reinterpret_cast<sockaddr*>(&original_dst_)) +
            " is one of the proxy's own listeners");
      return;
    }
  auto target = net::parse_host_port(net::sockaddr_to_string(reinterpret_cast<sockaddr*>(&original_dst_)));
  if (!target) {
    close("unusable original destination");
    return;
  }
  request_.authority = *target;
  connect_known_target();
}

// Static and transparent listeners know the destination without a request:
// refuse what the policy blocks by address or name, then connect.
void Session::connect_known_target() {
  if (auto d = decide(false); d.action == policy::Action::block) {
    close("blocked by policy: " + describe(d));
    return;
  }
  if (auto why = archive_refusal()) {
    close(*why);
    return;
  }
  if (defer_connect_for_reuse()) return;
  state_ = State::connecting;
  t_connect_start_ = uv_hrtime();
  arm_timer(ctx_.settings.connect_timeout);
  resolve();
}

// Not TLS (or a server that speaks first): relay untouched to the original
// destination, the bytes already read first.
void Session::start_splice(const char* why) {
  policy_rule_ = why;
  if (reuse_wanted_) {  // nothing connected yet (a parked connection might have fitted)
    reuse_wanted_ = false;
    connect_late(LateNext::splice);
    return;
  }
  start_bypass();
  set_action("splice");
  // A server-speaks-first protocol may already have bytes waiting upstream.
}

// "METHOD http://..." : an absolute-form request for the plain-HTTP proxy.
bool looks_like_plain_http(std::string_view s) {
  auto sp = s.find(' ');
  if (sp == std::string_view::npos || sp == 0 || sp > 20) return false;
  for (std::size_t i = 0; i < sp; ++i)
    if (s[i] < 'A' || s[i] > 'Z') return false;
  std::string_view rest = s.substr(sp + 1);
  constexpr std::string_view kScheme = "http://";
  if (rest.size() < kScheme.size()) return false;
  return http::iequals(rest.substr(0, kScheme.size()), kScheme) && s.substr(0, sp) != "CONNECT";
}

void Session::on_request_data(const char* data, std::size_t n) {
  inbuf_.append(data, n);
  if (admission_refusal_) {
    // Answered once the request is in (or at its size cap), so the client
    // reads the refusal instead of a reset.
    if (inbuf_.find("\r\n\r\n") == std::string::npos && inbuf_.size() < ctx_.settings.max_request_head)
      return;
    stop_reading(client_);
    auto r = std::move(*admission_refusal_);
    admission_refusal_.reset();
    respond_error(r.status, r.status == 503 ? "Service Unavailable" : "Forbidden", "sightline: " + r.reason + "\n",
                  r.reason, r.status == 503 ? "Retry-After: 1\r\n" : "");
    return;
  }
  if (looks_like_plain_http(inbuf_)) {
    if (!requires_password()) {
      start_plain_http();
      return;
    }
    // The first request's credentials are checked here, off the loop if
    // they are not cached; later requests must repeat the same ones
    // (plain_request_policy). A head this parser refuses goes to the
    // plain-HTTP parser, which answers it (and refuses it unauthenticated).
    net::ProxyRequest head;
    auto res = net::parse_proxy_request(inbuf_, ctx_.settings.max_request_head, head);
    if (res.status == net::ParseStatus::need_more) return;
    if (res.status == net::ParseStatus::error && res.http_status == 405) {
      stop_reading(client_);
      const std::string* value = find_header(head.headers, "proxy-authorization");
      authenticate(value ? std::string_view(*value) : std::string_view(), true);
      return;
    }
    start_plain_http();
    return;
  }
  auto res = net::parse_proxy_request(inbuf_, ctx_.settings.max_request_head, request_);
  if (res.status == net::ParseStatus::need_more) return;
  stop_reading(client_);
  if (res.status == net::ParseStatus::error) {
    note_failure(core::FailureCause::client_bad_request);
    const char* phrase = res.http_status == 405   ? "Method Not Allowed"
                         : res.http_status == 431 ? "Request Header Fields Too Large"
                         : res.http_status == 505 ? "HTTP Version Not Supported"
                                                  : "Bad Request";
    respond_error(res.http_status, phrase, "sightline: " + res.reason + "\n", res.reason);
    return;
  }
  // Bytes sent after the head (a client that does not wait for "200") are
  // the start of its TLS stream.
  inbuf_.erase(0, request_.head_bytes);
  if (requires_password()) {
    const std::string* value = find_header(request_.headers, "proxy-authorization");
    authenticate(value ? std::string_view(*value) : std::string_view(), false);
    return;
  }
  after_request_head();
}

void Session::after_request_head() {
  if (ctx_.access && !ctx_.access->connect_port_allowed(request_.authority.port)) {
    note_failure(core::FailureCause::access_port);
    std::string why = "CONNECT to port " + std::to_string(request_.authority.port) +
                      " is not allowed (access.connect_ports)";
    respond_error(403, "Forbidden", "sightline: " + why + "\n", why);
    return;
  }
  // A destination blocked by name, port or address is refused before any
  // connection is made; the ClientHello's SNI is checked again later.
  if (auto d = decide(false); d.action == policy::Action::block) {
    std::string why = "blocked by policy: " + describe(d);
    respond_error(403, "Forbidden", "sightline: " + why + "\n", why);
    return;
  }
  if (auto why = archive_refusal()) {
    respond_error(503, "Service Unavailable", "sightline: " + *why + "\n", *why);
    return;
  }
  if (defer_connect_for_reuse()) return;
  state_ = State::connecting;
  t_connect_start_ = uv_hrtime();
  arm_timer(ctx_.settings.connect_timeout);
  resolve();
}

bool Session::start_plain_http() {
  state_ = State::relaying;
  set_action("http");
  codec_ = "http/1.1";
  auto info = connection_info();
  PlainHttpSettings ps;
  ps.limits = ctx_.settings.h1;
  ps.connect_timeout = ctx_.settings.connect_timeout;
  ps.high_watermark = ctx_.settings.relay_high_watermark;
  ps.via = ctx_.settings.via;
  ps.destinations = ctx_.access.get();
  ps.decide = [this](const net::HostPort& origin, std::string_view proxy_authorization) {
    return plain_request_policy(origin, proxy_authorization);
  };
  if (metrics::ProxyMetrics* m = ctx_.metrics) {
    unsigned shard = worker_;
    ps.on_icap_skip = [m, shard] { m->registry.inc(shard, m->icap_bypass_plain_http); };
  }
  relay_ = std::make_unique<PlainHttpProxy>(*this, *ctx_.exchanges, std::move(info), std::move(ps),
                                            host_.upstream_pool(), host_.loop(),
                                            host_.read_buffer());
  relay_first_bytes();
  return true;
}

// A plain-HTTP relay starts with the bytes already read, then reads on.
void Session::relay_first_bytes() {
  idle_since_ = uv_now(host_.loop());
  arm_timer(ctx_.settings.idle_timeout);
  std::string first;
  first.swap(inbuf_);
  client_.plaintext_in += first.size();
  relay_->on_data(Side::client, first);
  start_reading(client_);
}

void Session::resolve() {
  const auto& target = request_.authority;
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_family = AF_UNSPEC;
  if (target.kind != net::HostKind::name) hints.ai_flags = AI_NUMERICHOST;
  auto req = std::make_unique<ResolveReq>();
  req->session = shared_from_this();
  req->req.data = req.get();
  std::string port = std::to_string(target.port);
  int rc = uv_getaddrinfo(
      host_.loop(), &req->req,
      [](uv_getaddrinfo_t* r, int status, addrinfo* res) {
        std::unique_ptr<ResolveReq> owned(static_cast<ResolveReq*>(r->data));
        owned->session->on_resolved(status, res);
      },
      target.host.c_str(), port.c_str(), &hints);
  if (rc != 0) {
    on_resolved(rc, nullptr);
    return;
  }
  (void)req.release();  // owned by the callback from here on
}

void Session::on_resolved(int status, addrinfo* res) {
  addrs_.reset(res);
  t_resolved_ = uv_hrtime();
  if (!connecting()) return;  // closed or timed out meanwhile
  if (status != 0 || !res) {
    note_failure(core::FailureCause::upstream_dns);
    connect_failed(std::string("DNS resolution failed for ") + request_.authority.host + ": " +
                   uv_strerror(status));
    return;
  }
  next_addr_ = addrs_.get();
  connect_next();
}

void Session::connect_next() {
  // Addresses access.deny_destinations (or the proxy's own listeners)
  // refuse are skipped, so a name resolving to one is refused too.
  while (next_addr_) {
    if (next_addr_->ai_family == AF_INET || next_addr_->ai_family == AF_INET6) {
      auto why = ctx_.access ? ctx_.access->refuse_destination(*next_addr_->ai_addr) : std::nullopt;
      if (!why) break;
      refused_destination_ = std::move(*why);
    }
    next_addr_ = next_addr_->ai_next;
  }
  if (!next_addr_ && last_connect_error_.empty() && !refused_destination_.empty()) {
    note_failure(core::FailureCause::access_destination);
    connect_failed("destination refused: " + refused_destination_, 403);
    return;
  }
  if (!next_addr_) {
    note_failure(core::FailureCause::upstream_connect);
    connect_failed("connect to " + request_.authority.to_string() + " failed: " +
                   (last_connect_error_.empty() ? "no usable address" : last_connect_error_));
    return;
  }
  addrinfo* ai = next_addr_;
  next_addr_ = ai->ai_next;
  upstream_addr_ = net::sockaddr_to_string(ai->ai_addr);
  // A fresh handle: a failed one is freed with this assignment (in its
  // close callback, the earliest libuv allows).
  upstream_.tcp = std::make_unique<uv_tcp_t>();
  uv_tcp_init_ex(host_.loop(), upstream_.tcp.get(), static_cast<unsigned>(ai->ai_family));
  upstream_.tcp->data = this;
  upstream_.initialized = true;
  ++open_handles_;
  if (listener_.spoof_source && !client_ip_.empty()) {
    // TPROXY with spoof_source: the origin sees the client's own address
    // (needs CAP_NET_ADMIN and policy routing for the return traffic).
    int fd = -1;
    uv_fileno(reinterpret_cast<uv_handle_t*>(upstream_.tcp.get()), &fd);
    int one = 1;
    bool v6 = ai->ai_family == AF_INET6;
    setsockopt(fd, v6 ? SOL_IPV6 : SOL_IP, v6 ? IPV6_TRANSPARENT : IP_TRANSPARENT, &one, sizeof one);
    sockaddr_storage src{};
    bool ok = false;
    if (v6) {
      auto* a = reinterpret_cast<sockaddr_in6*>(&src);
      a->sin6_family = AF_INET6;
      ok = inet_pton(AF_INET6, client_ip_.c_str(), &a->sin6_addr) == 1;
    } else {
      auto* a = reinterpret_cast<sockaddr_in*>(&src);
      a->sin_family = AF_INET;
      ok = inet_pton(AF_INET, client_ip_.c_str(), &a->sin_addr) == 1;
    }
    int rc = ok ? uv_tcp_bind(upstream_.tcp.get(), reinterpret_cast<const sockaddr*>(&src), 0) : UV_EINVAL;
    if (rc != 0)
      log::emit(log::Level::warn, {{"event", "spoof_source_failed"}, {"client", client_ip_},
                                   {"msg", uv_strerror(rc)}});
  }
  uv_tcp_nodelay(upstream_.tcp.get(), 1);
  connect_req_.data = this;
  int rc = uv_tcp_connect(&connect_req_, upstream_.tcp.get(), ai->ai_addr, [](uv_connect_t* r, int st) {
    static_cast<Session*>(r->data)->on_connected(st);
  });
  if (rc != 0) on_connected(rc);
}

void Session::on_connected(int status) {
  if (!connecting()) return;
  if (status != 0) {
    last_connect_error_ = upstream_addr_ + ": " + uv_strerror(status);
    // A failed socket cannot connect again: close it and retry with a fresh
    // handle from its close callback (the memory is reused only after it).
    upstream_.initialized = false;
    uv_close(reinterpret_cast<uv_handle_t*>(upstream_.tcp.get()), [](uv_handle_t* h) {
      auto* self = static_cast<Session*>(h->data);
      --self->open_handles_;
      if (self->connecting()) {
        self->connect_next();
      } else if (self->open_handles_ == 0) {
        self->host_.session_closed(self->id_);
      }
    });
    return;
  }
  t_connected_ = uv_hrtime();
  if (late_connect_) {
    late_connect_ = false;
    switch (late_next_) {
      case LateNext::upstream_tls:
        arm_timer(ctx_.settings.handshake_timeout);  // the connect's budget is spent
        start_upstream_tls();
        return;
      case LateNext::bypass:
        start_bypass();
        return;
      case LateNext::splice:
        start_bypass();
        set_action("splice");
        return;
      case LateNext::plain_http:
        start_sniffed_http();
        return;
      case LateNext::decide:
        arm_timer(ctx_.settings.handshake_timeout);
        after_hello();
        return;
      case LateNext::reattach: {
        // dst rules see the address connected to: a new DNS answer must not
        // lead the connection under another rule.
        if (policy_ && request_.authority.kind == net::HostKind::name) {
          std::string_view name;
          policy::Decision d = policy_->decide(policy_query(true, name));
          if (d.rule != rule_) {
            reattach_failed("policy: the origin's new address " + upstream_addr_ + " falls under " +
                            describe(d));
            return;
          }
        }
        arm_timer(ctx_.settings.handshake_timeout);
        state_ = State::upstream_handshake;
        start_upstream_tls();
        return;
      }
    }
    return;
  }
  begin_hello_peek();
}

void Session::begin_hello_peek() {
  state_ = State::peeking_hello;
  // Transparent: a client that says nothing may be waiting for a server
  // that speaks first (SMTP, SSH); after a short wait the bytes are spliced.
  arm_timer(transparent_ ? ctx_.settings.first_byte_timeout : ctx_.settings.handshake_timeout);
  static constexpr char kEstablished[] = "HTTP/1.1 200 Connection established\r\n\r\n";
  if (!static_) send_raw(client_, kEstablished, sizeof kEstablished - 1);
  if (!inbuf_.empty()) {
    std::string early;
    early.swap(inbuf_);
    on_hello_data(early.data(), early.size());
    if (state_ != State::peeking_hello) return;
  }
  start_reading(client_);
}

// Plain HTTP on a transparent listener: the HTTP/1.1 codec over plain
// legs, from the first byte.
void Session::start_sniffed_http() {
  set_action("http");
  codec_ = "http/1.1";
  state_ = State::relaying;
  relay_ = make_plain_h1_relay();
  relay_first_bytes();
  start_reading(upstream_);
}

// ---------------------------------------------------------------------------
// ClientHello peek and the two handshakes

void Session::on_hello_data(const char* data, std::size_t n) {
  inbuf_.append(data, n);
  auto res = tls::parse_client_hello(
      std::span(reinterpret_cast<const std::uint8_t*>(inbuf_.data()), inbuf_.size()), hello_,
      ctx_.settings.max_client_hello);
  switch (res.status) {
    case tls::HelloStatus::need_more:
      if (transparent_) arm_timer(ctx_.settings.handshake_timeout);  // it spoke: now a hello deadline
      return;
    case tls::HelloStatus::not_tls:
      if (transparent_) {
        stop_reading(client_);
        if (http::SniffRelay::looks_like_http(inbuf_) == 1) {
          if (reuse_wanted_) {
            reuse_wanted_ = false;
            connect_late(LateNext::plain_http);
            return;
          }
          start_sniffed_http();
          return;
        }
        start_splice("not TLS: spliced");
        return;
      }
      set_action("reject");
      note_failure(core::FailureCause::client_bad_request);
      close("not TLS after CONNECT: " + res.reason);
      return;
    case tls::HelloStatus::malformed:
      note_failure(core::FailureCause::client_bad_request);
      close("malformed ClientHello: " + res.reason);
      return;
    case tls::HelloStatus::done:
      break;
  }
  t_hello_ = uv_hrtime();
  stop_reading(client_);
  // `dst` rules for a named target are decided with the address connected
  // to: the parked connection's that will be taken, else connect first.
  if (reuse_wanted_ && request_.authority.kind == net::HostKind::name && policy_ &&
      policy_->uses_destination_address()) {
    std::string key = OriginPool::key(request_.authority.to_string(), verify_name(), alpn_offer());
    if (const ParkedOrigin* parked = host_.origin_pool().peek(key)) {
      upstream_addr_ = parked->addr;
    } else {
      reuse_wanted_ = false;
      connect_late(LateNext::decide);
      return;
    }
  }
  after_hello();
}

// The policy's decision on an intercepted-or-not TLS connection, and what
// follows from it.
void Session::after_hello() {
  policy::Decision d = decide(true);
  if (ctx_.metrics && ctx_.policies)
    ctx_.metrics->registry.inc(worker_, ctx_.metrics->policy_decisions[static_cast<std::size_t>(d.action)]);
  if (d.action == policy::Action::bypass) {
    if (reuse_wanted_) {  // nothing connected yet: the client's own TLS needs the origin
      reuse_wanted_ = false;
      connect_late(LateNext::bypass);
      return;
    }
    start_bypass();
    return;
  }
  set_action("intercept");
  start_client_tls();
  if (state_ == State::closing) return;
  if (d.action == policy::Action::block) {
    // Transparent clients never asked a proxy: they get an alert, not a page.
    if (transparent_) refuse_client(SSL_AD_ACCESS_DENIED, "blocked by policy: " + describe(d));
    else refuse_upstream(SSL_AD_ACCESS_DENIED, "blocked by policy: " + describe(d), 403);
    return;
  }
  if (auto why = archive_refusal()) {
    if (transparent_) refuse_client(SSL_AD_INTERNAL_ERROR, *why);
    else refuse_upstream(SSL_AD_INTERNAL_ERROR, *why, 503);
    return;
  }
  open_upstream();
}

// Evaluates the policy for this connection. Before the ClientHello the name
// is the CONNECT host; after it, the SNI (or the CONNECT host when there is
// none) and the address actually connected to.
policy::Decision Session::decide(bool with_sni) {
  if (!ctx_.policies) return {};
  if (!policy_) policy_ = ctx_.policies->current();
  if (!policy_) return {};
  std::string_view name;
  policy::Query q = policy_query(with_sni, name);
  policy::Decision d = policy_->decide(q);
  apply_decision_rule(d, with_sni, name);
  return d;
}

// What the policy is asked about this connection now.
policy::Query Session::policy_query(bool with_sni, std::string_view& name) const {
  policy::Query q;
  const auto& target = request_.authority;
  name = target.kind == net::HostKind::name ? std::string_view(target.host) : "";
  if (with_sni && !hello_.sni.empty()) name = hello_.sni;
  q.server_name = name;
  q.dst_port = target.port;
  if (target.kind != net::HostKind::name) {
    q.dst_ip = policy::IpAddress::parse(target.host);
  } else if (with_sni && !upstream_addr_.empty()) {
    // "[v6]:port" or "v4:port" of the connected address.
    std::string_view a = upstream_addr_;
    auto colon = a.rfind(':');
    std::string_view host = a.substr(0, colon);
    if (!host.empty() && host.front() == '[') host = host.substr(1, host.size() - 2);
    q.dst_ip = policy::IpAddress::parse(host);
  }
  q.client_ip = policy::IpAddress::parse(client_ip_);
  q.user = user_;
  q.groups = groups_;
  return q;
}

// The decision's own part, after policy_query.
void Session::apply_decision_rule(policy::Decision& d, bool with_sni, std::string_view name) {
  policy_rule_ = describe(d);
  rule_ = d.rule;
  if (d.rule) {
    rule_on_invalid_ = d.rule->options.on_invalid;
    rule_auto_bypass_ = d.rule->options.auto_bypass.value_or(true);
  }
  // A client seen rejecting forged certificates for this name (a pinned
  // app) is bypassed instead, unless the rule or the policy says not to.
  if (with_sni && d.action == policy::Action::inspect && ctx_.auto_bypass && !name.empty() &&
      policy_->auto_bypass_enabled() && rule_auto_bypass_ &&
      ctx_.auto_bypass->contains(client_ip_, name)) {
    auto_bypassed_ = true;
    d.action = policy::Action::bypass;
  }
}

// Plain HTTP through the explicit proxy: each request names its origin, so
// the policy decides per request (the connection log shows the last one).
PlainHttpSettings::RequestPolicy Session::plain_request_policy(const net::HostPort& origin,
                                                                std::string_view proxy_authorization) {
  PlainHttpSettings::RequestPolicy p;
  if (requires_password()) {
    // Every request repeats the credentials the connection authenticated
    // with; anything else is challenged and the connection closed, so the
    // client's retry is checked anew on a fresh connection.
    bool same = auth_ == metrics::AuthResult::ok && !proxy_authorization.empty() &&
                CRYPTO_memcmp(identity::AuthCache::digest(proxy_authorization).data(), auth_digest_.data(),
                              auth_digest_.size()) == 0;
    if (!same) {
      auto why = proxy_authorization.empty() ? metrics::AuthResult::missing : metrics::AuthResult::invalid;
      auth_ = why;
      count_auth(why);
      http_status_ = 407;
      p.challenge = challenge_header();
      p.block = proxy_authorization.empty() ? "proxy authentication required"
                                            : "proxy credentials differ from the connection's";
      return p;
    }
  }
  request_.authority = origin;
  if (ctx_.access && !ctx_.access->http_port_allowed(origin.port)) {
    note_failure(core::FailureCause::access_port);
    p.block = "HTTP to port " + std::to_string(origin.port) + " is not allowed (access.http_ports)";
    return p;
  }
  policy::Decision d = decide(false);
  if (d.action == policy::Action::block) {
    p.block = "blocked by policy: " + describe(d);
    return p;
  }
  if (auto why = archive_refusal()) {
    p.block = *why;
    p.status = 503;
    return p;
  }
  p.rule = rule_ ? rule_->name : std::string();
  p.hooks = rule_ ? rule_->options.hooks : std::nullopt;
  p.archive = archive_selected();
  archived_ = archived_ || p.archive;
  http::IcapOptions icap = icap_options();
  if (!icap.reqmod && !icap.respmod) return p;
  auto closed = [](const std::vector<icap::ChainStep>& chain) {
    return std::any_of(chain.begin(), chain.end(), [](const icap::ChainStep& s) { return s.fail_closed; });
  };
  using Icap = PlainHttpSettings::RequestPolicy::Icap;
  p.icap = closed(icap.reqmod_chain) || closed(icap.respmod_chain) ? Icap::refuse : Icap::skip;
  p.icap_reqmod = icap.reqmod;
  p.icap_respmod = icap.respmod;
  return p;
}

// What every exchange of this connection shares; callers add what they know.
std::shared_ptr<exchange::ConnectionInfo> Session::connection_info() const {
  auto info = std::make_shared<exchange::ConnectionInfo>();
  info->id = id_;
  info->worker = worker_;
  info->client = client_addr_;
  info->user = user_;
  info->groups = groups_;
  if (rule_) { info->rule = rule_->name; info->hooks = rule_->options.hooks; }  // hook selection
  return info;
}

// ---------------------------------------------------------------------------
// Identity

// Explicit listeners ask for a password when a credentials file is
// configured; the others cannot (nobody speaks HTTP to them).
bool Session::requires_password() const {
  return ctx_.identity && ctx_.identity->requires_password() && listener_.kind == ListenerKind::explicit_proxy &&
         !listener_.static_target;
}

void Session::identify_by_address() {
  if (!ctx_.identity || requires_password()) return;
  directory_ = ctx_.identity->current();
  if (!directory_ || !directory_->user_map) return;
  if (auto ip = policy::IpAddress::parse(client_ip_))
    if (auto user = directory_->user_map->lookup(*ip); !user.empty()) set_user(std::string(user));
}

void Session::set_user(std::string user) {
  user_ = std::move(user);
  groups_ = directory_ ? directory_->groups_of(user_) : std::vector<std::string>{};
}

void Session::count_auth(metrics::AuthResult r) {
  if (ctx_.metrics) ctx_.metrics->registry.inc(worker_, ctx_.metrics->proxy_auth[metrics::idx(r)]);
}

std::string Session::challenge_header() const {
  return "Basic realm=\"" + ctx_.identity->realm() + "\", charset=\"UTF-8\"";
}

// Checks `Proxy-Authorization` (a cached outcome at once, otherwise a hash
// on the thread pool), then goes on with the request or answers 407.
void Session::authenticate(std::string_view value, bool plain) {
  auth_plain_ = plain;
  directory_ = ctx_.identity->current();
  if (value.empty()) {
    challenge(metrics::AuthResult::missing, "proxy authentication required");
    return;
  }
  auto basic = identity::parse_basic(value);
  if (!basic) {
    challenge(metrics::AuthResult::invalid, "proxy authentication: not Basic user:password");
    return;
  }
  auth_digest_ = identity::AuthCache::digest(value);
  const auto* entry = directory_->credentials ? directory_->credentials->find(basic->user) : nullptr;
  auto& cache = ctx_.identity->cache();
  auto key = identity::AuthCache::key(basic->user, basic->password, entry ? entry->hash.text : "");
  switch (cache.find(key)) {
    case identity::AuthCache::Result::ok:
      on_authenticated(true, entry->user);
      return;
    case identity::AuthCache::Result::invalid:
      on_authenticated(false, basic->user);
      return;
    case identity::AuthCache::Result::unknown:
      break;
  }
  if (g_auth_in_flight.fetch_add(1, std::memory_order_relaxed) >= kMaxAuthInFlight) {
    g_auth_in_flight.fetch_sub(1, std::memory_order_relaxed);
    auth_ = metrics::AuthResult::busy;
    count_auth(*auth_);
    respond_error(503, "Service Unavailable", "sightline: too many password checks in progress, retry\n",
                  "proxy authentication busy");
    return;
  }
  auto req = std::make_unique<AuthReq>();
  req->req.data = req.get();
  req->session = shared_from_this();
  req->directory = directory_;
  req->hash = entry ? &entry->hash : &identity::PasswordHash::dummy();
  req->user = entry ? entry->user : std::string();
  req->credentials = std::move(*basic);
  req->key = key;
  state_ = State::authenticating;
  int rc = uv_queue_work(
      host_.loop(), &req->req,
      [](uv_work_t* w) {  // thread pool: the slow part
        auto* r = static_cast<AuthReq*>(w->data);
        r->ok = r->hash->verify(r->credentials.password) && !r->user.empty();
      },
      [](uv_work_t* w, int status) {
        std::unique_ptr<AuthReq> owned(static_cast<AuthReq*>(w->data));
        g_auth_in_flight.fetch_sub(1, std::memory_order_relaxed);
        Session& self = *owned->session;
        if (status != 0) {
          self.close("password check cancelled");
          return;
        }
        self.ctx_.identity->cache().put(owned->key, owned->ok);
        if (self.state_ != State::authenticating) return;  // closed or timed out meanwhile
        self.on_authenticated(owned->ok, owned->ok ? owned->user : owned->credentials.user);
      });
  if (rc != 0) {
    g_auth_in_flight.fetch_sub(1, std::memory_order_relaxed);
    close(std::string("password check not queued: ") + uv_strerror(rc));
    return;
  }
  (void)req.release();  // owned by the callback from here on
}

void Session::on_authenticated(bool ok, std::string user) {
  if (!ok) {
    // The name tried is logged (it tells an attack from a typo); never the password.
    challenge(metrics::AuthResult::invalid, "proxy authentication failed for user \"" + user + "\"");
    return;
  }
  auth_ = metrics::AuthResult::ok;
  count_auth(*auth_);
  set_user(std::move(user));
  if (auth_plain_) {
    start_plain_http();
    return;
  }
  state_ = State::reading_request;
  after_request_head();
}

// 407, and the connection closes: the client retries on a new one with
// credentials (what curl and browsers do).
void Session::challenge(metrics::AuthResult why, std::string reason) {
  auth_ = why;
  count_auth(why);
  respond_error(407, "Proxy Authentication Required", "sightline: " + reason + "\n", reason,
                "Proxy-Authenticate: " + challenge_header() + "\r\n");
}

std::string Session::describe(const policy::Decision& d) const {
  if (!d.rule) return std::string("default ") + std::string(policy::to_string(d.action));
  return "rule '" + d.rule->name + "' (" + d.rule->file + ":" + std::to_string(d.rule->line) + ")";
}

// Bypass: the client talks to the origin itself, end to end encrypted; the
// bytes already read (the ClientHello) go first, then both ways untouched.
void Session::start_bypass() {
  set_action("bypass");
  codec_ = "opaque";
  state_ = State::relaying;
  relay_ = std::make_unique<http::OpaqueRelay>(*this);
  idle_since_ = uv_now(host_.loop());
  arm_timer(ctx_.settings.idle_timeout);
  client_.plaintext_in += inbuf_.size();
  send_raw(upstream_, inbuf_.data(), inbuf_.size());
  std::string().swap(inbuf_);
  start_reading(client_);
  start_reading(upstream_);
}

// The client gave up right after seeing a forged certificate: count it
// against the pair; at the threshold its next connections are bypassed (a
// pinned application). Only while our certificate was out and the
// handshake not complete (state client_handshake with a leaf), and never
// for error-page certificates or the untrusted CA.
void Session::note_pinned_client(const char* why, const char* alert) {
  // A resumed handshake sent no certificate: its failure says nothing of pinning.
  if (state_ != State::client_handshake || !ctx_.auto_bypass || !policy_ ||
      !policy_->auto_bypass_enabled() || !rule_auto_bypass_ || untrusted_ || refusal_ || !leaf_ ||
      pinned_failures_ != 0 || (client_.ssl && SSL_session_reused(client_.ssl.get()) == 1))
    return;
  std::string name = hello_.sni.empty() ? request_.authority.host : hello_.sni;
  auto f = ctx_.auto_bypass->record_failure(client_ip_, name);
  pinned_failures_ = f.count;
  pinned_alert_ = alert;
  if (f.bypassed) {
    if (ctx_.metrics) ctx_.metrics->registry.inc(worker_, ctx_.metrics->auto_bypass_activations);
    log::emit(log::Level::warn, {{"event", "auto_bypass"}, {"client", client_ip_}, {"sni", name},
                                 {"reason", why}, {"alert", alert ? alert : "none"},
                                 {"failures", f.count}});
  }
}

void Session::start_client_tls() {
  client_.ssl.reset(SSL_new(ctx_.tls.client.get()));
  if (!client_.ssl) {
    close("client SSL_new: " + tls::drain_errors());
    return;
  }
  client_.rbio = BIO_new(BIO_s_mem());
  client_.wbio = BIO_new(BIO_s_mem());
  SSL_set_bio(client_.ssl.get(), client_.rbio, client_.wbio);
  SSL_set_app_data(client_.ssl.get(), static_cast<tls::ClientHandshakeHandler*>(this));
  if (ctx_.keylog_client && keylog_selected()) hooks::set_keylog(client_.ssl.get(), ctx_.keylog_client.get());
  SSL_set_accept_state(client_.ssl.get());
  BIO_write(client_.rbio, inbuf_.data(), static_cast<int>(inbuf_.size()));
  std::string().swap(inbuf_);
  // Runs the ClientHello through OpenSSL; the callback suspends it until the
  // upstream side has decided what certificate (if any) to present.
  state_ = State::upstream_handshake;
  drive_client_handshake();
}

void Session::start_upstream_tls() {
  t_upstream_hs_start_ = uv_hrtime();
  upstream_.ssl.reset(SSL_new(ctx_.tls.upstream.get()));
  if (!upstream_.ssl) {
    refuse_client(SSL_AD_INTERNAL_ERROR, "upstream SSL_new: " + tls::drain_errors());
    return;
  }
  SSL* ssl = upstream_.ssl.get();
  upstream_.rbio = BIO_new(BIO_s_mem());
  upstream_.wbio = BIO_new(BIO_s_mem());
  SSL_set_bio(ssl, upstream_.rbio, upstream_.wbio);
  if (ctx_.keylog_upstream && keylog_selected()) hooks::set_keylog(ssl, ctx_.keylog_upstream.get());
  SSL_set_connect_state(ssl);

  const auto& target = request_.authority;
  // Verify against the name the client asked for (SNI), else the CONNECT host.
  std::string verify_name = this->verify_name();
  bool is_ip = hello_.sni.empty() && target.kind != net::HostKind::name;
  if (!is_ip) SSL_set_tlsext_host_name(ssl, verify_name.c_str());
  verify_.allow_invalid = rule_on_invalid_.value_or(ctx_.settings.on_invalid) ==
                         tls::OnInvalid::forward_untrusted;
  if (!tls::prepare_upstream_ssl(ssl, verify_name, is_ip, &verify_)) {
    refuse_client(SSL_AD_INTERNAL_ERROR, "cannot set verification name " + verify_name);
    return;
  }
  std::string wire = alpn_offer();
  if (!wire.empty())
    SSL_set_alpn_protos(ssl, reinterpret_cast<const unsigned char*>(wire.data()),
                        static_cast<unsigned>(wire.size()));
  if (reuse_allowed()) pool_key_ = OriginPool::key(target.to_string(), verify_name, wire);
  // Resume a session with this origin when one verified recently: same
  // verified name, same address, same ALPN offer. Never under
  // forward-untrusted, where nothing from the origin may be trusted.
  if (ctx_.settings.upstream_resumption && !verify_.allow_invalid) {
    resume_key_ = verify_name + (is_ip ? "|ip|" : "|dns|") + upstream_addr_ + "|" + wire;
    SSL_set_app_data(ssl, static_cast<tls::UpstreamSessionSink*>(this));
    if (SSL_SESSION* cached = host_.upstream_sessions().get(resume_key_)) SSL_set_session(ssl, cached);
  }
  start_reading(upstream_);
  drive_upstream_handshake();
}

// ---------------------------------------------------------------------------
// Origin connection reuse (upstream.reuse, docs/interception.md)

// Not with spoof_source: such an origin connection carries its client's
// own address.
bool Session::reuse_allowed() const {
  return ctx_.settings.upstream_reuse && !listener_.spoof_source;
}

// A parked connection to this target may serve the client: read its
// ClientHello first and connect only if none fits. On a transparent
// listener a client that turns out not to speak TLS (plain HTTP, another
// protocol) or stays silent (a server-speaks-first protocol, after
// timeouts.first_byte) is connected then, and relayed as usual.
bool Session::defer_connect_for_reuse() {
  if (!reuse_allowed() || !host_.origin_pool().has_target(request_.authority.to_string()))
    return false;
  reuse_wanted_ = true;
  begin_hello_peek();
  return true;
}

std::string Session::verify_name() const {
  return hello_.sni.empty() ? request_.authority.host : hello_.sni;
}

// The client's ALPN protocols that the proxy relays, in the client's order
// (wire form): what the origin is offered.
std::string Session::alpn_offer() const {
  std::vector<std::string> offer;
  for (const auto& p : hello_.alpn)
    if (std::find(ctx_.settings.upstream_alpn.begin(), ctx_.settings.upstream_alpn.end(), p) !=
        ctx_.settings.upstream_alpn.end())
      offer.push_back(p);
  return encode_alpn(offer);
}

void Session::open_upstream() {
  if (!reuse_wanted_) {
    start_upstream_tls();
    return;
  }
  reuse_wanted_ = false;
  std::string key = OriginPool::key(request_.authority.to_string(), verify_name(), alpn_offer());
  if (auto parked = host_.origin_pool().take(key)) {
    pool_key_ = std::move(key);
    adopt_origin(std::move(parked));
    return;
  }
  connect_late(LateNext::upstream_tls);
}

// The parked connection becomes this session's origin leg, its handshake
// and verification already done: straight to the forged certificate.
void Session::adopt_origin(std::unique_ptr<ParkedOrigin> parked) {
  take_parked_leg(*parked);
  upstream_reused_ = true;
  upstream_uses_ = parked->uses;
  on_upstream_verified();
}

void Session::take_parked_leg(ParkedOrigin& parked) {
  upstream_.tcp.reset(parked.tcp.release());
  upstream_.tcp->data = this;
  upstream_.initialized = true;
  ++open_handles_;
  upstream_.ssl = std::move(parked.ssl);
  upstream_.rbio = parked.rbio;
  upstream_.wbio = parked.wbio;
  upstream_addr_ = std::move(parked.addr);
  resume_key_ = std::move(parked.resume_key);
  if (!resume_key_.empty())  // later session tickets refresh the resumption cache
    SSL_set_app_data(upstream_.ssl.get(), static_cast<tls::UpstreamSessionSink*>(this));
}

// Connects after the ClientHello, when no parked connection fitted.
void Session::connect_late(LateNext next) {
  late_connect_ = true;

  late_next_ = next;
  // Whatever the client sends meanwhile waits in the socket: the step
  // after the connect reads it.
  stop_reading(client_);
  t_connect_start_ = uv_hrtime();
  arm_timer(ctx_.settings.connect_timeout);
  resolve();
}

bool Session::connecting() const {
  return state_ == State::connecting || (late_connect_ && state_ != State::closing);
}

// Before the ClientHello the client hears it in HTTP (explicit listeners);
// after it, on an intercepted connection, through the error page.
void Session::connect_failed(std::string why, int status) {
  if (!late_connect_) {
    respond_error(status, status == 403 ? "Forbidden" : "Bad Gateway", "sightline: " + why + "\n", why);
    return;
  }
  late_connect_ = false;
  switch (late_next_) {
    case LateNext::upstream_tls:  // the client's handshake waits: it gets the error page
      refuse_upstream(status == 403 ? SSL_AD_ACCESS_DENIED : SSL_AD_HANDSHAKE_FAILURE, std::move(why), status);
      return;
    case LateNext::reattach:  // the client's request gets the 502
      reattach_failed(std::move(why));
      return;
    case LateNext::decide:  // nothing decided yet, but the client speaks TLS: the same
      set_action("intercept");
      start_client_tls();
      if (state_ != State::closing)
        refuse_upstream(status == 403 ? SSL_AD_ACCESS_DENIED : SSL_AD_HANDSHAKE_FAILURE, std::move(why), status);
      return;
    default:  // no client handshake: the client sees the close
      close(std::move(why));
      return;
  }
}

// An HTTP/1.1 origin connection left between exchanges by a client
// connection that ends goes to the worker's pool instead of being closed.
// Only a verified one, with nothing in flight or buffered either way.
void Session::park_origin_if_idle() {
  park_pending_ = false;
  if (park_origin(false)) upstream_parked_ = true;
}

// Parks the origin leg if it is idle; `client_stays`: the client
// connection goes on without it (release_origin).
bool Session::park_origin(bool client_stays) {
  if (pool_key_.empty() || upstream_parked_ || origin_released_ || state_ != State::relaying ||
      codec_ != "http/1.1" ||
      refusal_ || untrusted_ || verdict_ != "ok" || !upstream_.initialized || !upstream_.ssl ||
      upstream_.eof || upstream_.read_done || upstream_.write_shutdown || upstream_tls_error_ ||
      upstream_.writes_in_flight != 0 || pending_out(upstream_) != 0 || !relay_ ||
      !relay_->origin_idle())
    return false;
  SSL* ssl = upstream_.ssl.get();
  if (SSL_pending(ssl) != 0 || SSL_has_pending(ssl) || BIO_ctrl_pending(upstream_.rbio) != 0 ||
      SSL_get_shutdown(ssl) != 0 || (client_stays && pending_out(client_) != 0))
    return false;
  stop_reading(upstream_);
  trim_leg(upstream_);
  // This session goes: nothing of the SSL may point into it (a ticket
  // while parked is dropped).
  SSL_set_app_data(ssl, nullptr);
  tls::detach_verify_state(ssl);
  auto p = std::make_unique<ParkedOrigin>();
  p->tcp = core::UvHandle<uv_tcp_t>::adopt(upstream_.tcp.release());
  p->ssl = std::move(upstream_.ssl);
  p->rbio = std::exchange(upstream_.rbio, nullptr);
  p->wbio = std::exchange(upstream_.wbio, nullptr);
  p->target = request_.authority.to_string();
  p->key = pool_key_;
  p->addr = upstream_addr_;
  p->resume_key = resume_key_;
  p->resumed = upstream_resumed_;
  p->uses = upstream_uses_;
  upstream_.initialized = false;
  upstream_.read_done = upstream_.write_shutdown = upstream_.shutdown_done = true;
  --open_handles_;  // the pool closes it from now on (never the last: the client's is open)
  host_.origin_pool().put(std::move(p));
  return true;
}

// ---------------------------------------------------------------------------
// Idle origin release (upstream.release_idle, docs/interception.md)
//
// An HTTP/1.1 client connection that has been quiet for release_idle_after
// between exchanges gives its origin connection back to the pool (which
// keeps it for reuse_idle_timeout, within its limits): an idle browser
// connection then holds one TLS leg, not two. Its next request takes a
// parked connection under the same key, or connects, handshakes and
// verifies again; one that cannot gets a 502 page.

bool Session::release_candidate() const {
  return ctx_.settings.release_idle_after.count() > 0 && !pool_key_.empty() && !origin_released_ &&
         !upstream_parked_ && !reattaching_ && codec_ == "http/1.1" &&
         !host_.origin_pool().closed();  // draining: it would only close and reconnect
}

void Session::release_origin() {
  if (!park_origin(true)) return;
  origin_released_ = true;
  ++releases_;
  count_release(0);
}

// The released client connection sent plaintext (`request`, read from its
// TLS leg): it waits until an origin connection is back.
void Session::reacquire_origin(std::span<const char> request) {
  held_request_.assign(request.data(), request.size());
  stop_reading(client_);
  first_upstream_ = {t_connect_start_, t_resolved_, t_connected_, t_upstream_hs_start_,
                     t_upstream_hs_done_, upstream_resumed_, upstream_addr_, verdict_, verdict_reason_};
  origin_released_ = false;
  reattaching_ = true;
  upstream_.eof = upstream_.read_done = upstream_.write_shutdown = upstream_.shutdown_done = false;
  upstream_.paused = upstream_.reading = false;
  upstream_.plain_out.clear();
  if (auto parked = host_.origin_pool().take(pool_key_)) {
    take_parked_leg(*parked);
    finish_reattach(true);
    return;
  }
  verify_ = {};
  state_ = State::connecting;
  connect_late(LateNext::reattach);
}

// The new origin connection is verified (or came verified from the pool):
// the held request goes on over it.
void Session::finish_reattach(bool pooled) {
  SSL* ssl = upstream_.ssl.get();
  if (!pooled) {
    bool resumed = SSL_session_reused(ssl) == 1;
    // Nothing less than what the client's certificate was forged from: a
    // verified origin (on_invalid does not apply to a connection whose
    // client already trusts the forged certificate).
    if (!judge_origin_certificate(ssl)) {
      reattach_failed("upstream certificate invalid: " + verdict_reason_);
      return;
    }
    if (ctx_.metrics)
      ctx_.metrics->registry.inc(worker_, resumed ? ctx_.metrics->upstream_tls_resumed
                                                  : ctx_.metrics->upstream_tls_full);
    keep_tls12_session(ssl, resumed);
  }
  const unsigned char* alpn = nullptr;
  unsigned int alpn_len = 0;
  SSL_get0_alpn_selected(ssl, &alpn, &alpn_len);
  std::string_view chosen(reinterpret_cast<const char*>(alpn), alpn_len);
  if (!chosen.empty() && chosen != "http/1.1") {
    reattach_failed("origin chose " + std::string(chosen) + " on a new connection; the client speaks HTTP/1.1");
    return;
  }
  reattaching_ = false;
  ++reattaches_;
  count_release(pooled ? 1 : 2);
  state_ = State::relaying;
  relay_->rebind_connection(relay_connection_info(TlsFacts::of(ssl)));
  restore_first_upstream();  // the connection line describes the first origin connection
  idle_since_ = uv_now(host_.loop());
  arm_timer(ctx_.settings.idle_timeout);
  start_reading(upstream_);
  start_reading(client_);
  std::string held = std::exchange(held_request_, std::string());
  relay_->on_data(Side::client, held);
  if (state_ != State::relaying) return;
  pump(client_);
}

// No origin connection for the client's next request: it is answered with
// a 502 page naming the reason, and the client connection ends after it.
void Session::reattach_failed(std::string reason) {
  reattaching_ = false;
  count_release(3);
  // Counted here: the connection line (and record_metrics) keep the first
  // connection's verdict.
  if (ctx_.metrics && verdict_ != first_upstream_.verdict && verdict_ != "ok" && verdict_ != "not-checked")
    ctx_.metrics->registry.inc(worker_, ctx_.metrics->verify_failures[metrics::idx(metrics::verdict(verdict_))]);
  log::emit(log::Level::warn, {{"event", "origin_reattach_failed"}, {"id", id_},
                               {"target", request_.authority.to_string()}, {"reason", reason}});
  if (upstream_.initialized) {
    stop_reading(upstream_);
    upstream_.read_done = true;
    shutdown_write(upstream_);
  } else {
    upstream_.read_done = upstream_.write_shutdown = upstream_.shutdown_done = true;
  }
  close_reason_ = reason;
  reattach_failed_ = true;
  refusal_ = http::Refusal{502, std::move(reason)};
  state_ = State::relaying;
  // The refused exchange records the connection that failed: its address,
  // verdict and certificate (when one came), TLS facts if its handshake completed.
  SSL* ssl = upstream_.ssl.get();
  auto info = relay_connection_info(ssl && SSL_is_init_finished(ssl) ? TlsFacts::of(ssl) : TlsFacts{});
  restore_first_upstream();
  relay_ = std::make_unique<http::H1Relay>(*this, *ctx_.exchanges, std::move(info), ctx_.settings.h1,
                                           refusal_, icap_options(), false);
  idle_since_ = uv_now(host_.loop());
  arm_timer(ctx_.settings.idle_timeout);
  start_reading(client_);
  std::string held = std::exchange(held_request_, std::string());
  relay_->on_data(Side::client, held);
  if (state_ != State::relaying) return;
  pump(client_);
}

// The connection log line describes the first origin connection.
void Session::restore_first_upstream() {
  t_connect_start_ = first_upstream_.connect_start;
  t_resolved_ = first_upstream_.resolved;
  t_connected_ = first_upstream_.connected;
  t_upstream_hs_start_ = first_upstream_.hs_start;
  t_upstream_hs_done_ = first_upstream_.hs_done;
  upstream_resumed_ = first_upstream_.resumed;
  upstream_addr_ = first_upstream_.addr;
  verdict_ = first_upstream_.verdict;
  verdict_reason_ = first_upstream_.verdict_reason;
}

void Session::count_release(std::size_t event) {
  if (ctx_.metrics) ctx_.metrics->registry.inc(worker_, ctx_.metrics->origin_release_events[event]);
}

void Session::drive_upstream_handshake() {
  ERR_clear_error();
  int rc = SSL_do_handshake(upstream_.ssl.get());
  flush(upstream_);
  if (rc == 1) {
    t_upstream_hs_done_ = uv_hrtime();
    upstream_resumed_ = SSL_session_reused(upstream_.ssl.get()) == 1;
    stop_reading(upstream_);  // resumed once the client leg is ready
    on_upstream_verified();
    return;
  }
  int err = SSL_get_error(upstream_.ssl.get(), rc);
  if (err == SSL_ERROR_WANT_READ) {
    if (upstream_.eof) {
      note_failure(core::FailureCause::upstream_tls);
      refuse_upstream(SSL_AD_HANDSHAKE_FAILURE, "upstream closed during TLS handshake");
    }
    return;
  }
  t_upstream_hs_done_ = uv_hrtime();
  if (verify_.first_error != X509_V_OK) {
    verdict_ = tls::verdict_for(verify_.first_error);
    verdict_reason_ = tls::reason_for(verify_);
    ERR_clear_error();
    note_failure(core::FailureCause::upstream_certificate);
    refuse_upstream(SSL_AD_ACCESS_DENIED, "upstream certificate invalid: " + verdict_reason_);
    return;
  }
  note_failure(core::FailureCause::upstream_tls);
  refuse_upstream(SSL_AD_HANDSHAKE_FAILURE, "upstream TLS handshake failed: " + tls::drain_errors());
}

// Sessions are kept only from origins that verified: a failed or untrusted
// origin leaves nothing to resume.
void Session::on_upstream_session(SSL_SESSION* session) {
  tls::SslSessionPtr owned(session);
  if (resume_key_.empty() || verify_.first_error != X509_V_OK || untrusted_ || verdict_ != "ok" ||
      SSL_get_verify_result(upstream_.ssl.get()) != X509_V_OK)
    return;
  host_.upstream_sessions().put(resume_key_, std::move(owned));
}

// Sets verdict_ (and its reason) for the origin's certificate; true when
// it verified. Both the callback's record and OpenSSL's own result must be
// clean (defence in depth: OpenSSL's result is trusted too).
bool Session::judge_origin_certificate(SSL* ssl) {
  if (!SSL_get0_peer_certificate(ssl)) {
    verdict_ = "invalid";
    verdict_reason_ = "origin sent no certificate";
    return false;
  }
  long result = SSL_get_verify_result(ssl);
  if (verify_.first_error == X509_V_OK && result != X509_V_OK) {
    verify_.first_error = static_cast<int>(result);
    verify_.first_error_depth = -1;
  }
  verdict_ = tls::verdict_for(verify_.first_error);
  if (verify_.first_error == X509_V_OK) return true;
  verdict_reason_ = tls::reason_for(verify_);
  return false;
}

// TLS 1.2 sessions exist at the end of the handshake (TLS 1.3 tickets
// come later through on_upstream_session).
void Session::keep_tls12_session(SSL* ssl, bool resumed) {
  if (!resume_key_.empty() && !resumed && SSL_version(ssl) != TLS1_3_VERSION)
    host_.upstream_sessions().put(resume_key_, tls::SslSessionPtr(SSL_get1_session(ssl)));
}

void Session::on_upstream_verified() {
  if (reattaching_) {
    finish_reattach(false);
    return;
  }
  SSL* ssl = upstream_.ssl.get();
  // For the connection line, taken now: later the SSL may be mid-way
  // through a post-handshake message, or parked.
  upstream_tls_ = TlsFacts::of(ssl);
  X509* origin = SSL_get0_peer_certificate(ssl);
  if (!judge_origin_certificate(ssl)) {
    if (!origin || rule_on_invalid_.value_or(ctx_.settings.on_invalid) == tls::OnInvalid::block) {
      note_failure(core::FailureCause::upstream_certificate);
      refuse_upstream(SSL_AD_ACCESS_DENIED, "upstream certificate invalid: " + verdict_reason_);
      return;
    }
    untrusted_ = true;
  }
  if (!untrusted_ && !upstream_reused_) keep_tls12_session(ssl, upstream_resumed_);
  const unsigned char* alpn = nullptr;
  unsigned int alpn_len = 0;
  SSL_get0_alpn_selected(ssl, &alpn, &alpn_len);
  upstream_alpn_.assign(reinterpret_cast<const char*>(alpn), alpn_len);

  state_ = State::forging;
  t_forge_start_ = uv_hrtime();
  auto keys = ctx_.leaf_keys->current();
  cache_key_ = tls::CertCache::make_key(origin, hello_.sni, untrusted_);
  tls::ForgedPtr hit;
  std::weak_ptr<Session> weak = weak_from_this();
  SessionHost* host = &host_;
  auto lookup = ctx_.cert_cache->acquire(
      cache_key_, keys->generation, &hit, [weak, host](tls::ForgedPtr v) {
        host->post([weak, v = std::move(v)] {
          if (auto s = weak.lock()) s->on_forged(v);
        });
      });
  switch (lookup) {
    case tls::CertCache::Lookup::hit:
      cache_result_ = "hit";
      on_forged(std::move(hit));
      return;
    case tls::CertCache::Lookup::pending:
      cache_result_ = "wait";
      return;
    case tls::CertCache::Lookup::create:
      break;
  }
  cache_result_ = "miss";
  tls::LeafKeyType type = tls::leaf_type_for(origin);
  const tls::IssuingCa& issuer = untrusted_ ? ctx_.untrusted_ca : ctx_.ca;
  std::string error;
  auto forged = std::make_shared<tls::ForgedCert>();
  forged->key = tls::up_ref(keys->get(type));
  forged->key_generation = keys->generation;
  forged->cert = tls::forge_leaf(origin, issuer, forged->key.get(), &error);
  if (!forged->cert) {
    ctx_.cert_cache->publish(cache_key_, nullptr);
    note_failure(core::FailureCause::internal);
    refuse_client(SSL_AD_INTERNAL_ERROR, error);
    return;
  }
  forged->ticket_binding = tls::certificate_binding(forged->cert.get());
  tls::ForgedPtr ready = forged;
  ctx_.cert_cache->publish(cache_key_, ready);
  on_forged(ready);
}

void Session::on_forged(tls::ForgedPtr leaf) {
  if (state_ != State::forging) return;
  t_forge_done_ = uv_hrtime();
  if (!leaf) {
    note_failure(core::FailureCause::internal);
    refuse_client(SSL_AD_INTERNAL_ERROR, "certificate forging failed in another connection");
    return;
  }
  leaf_ = std::move(leaf);
  state_ = State::client_handshake;
  drive_client_handshake();
  if (state_ == State::client_handshake) start_reading(client_);
}

// The origin side failed (verification or TLS). Unless alerts are
// configured, the client's handshake completes with a certificate naming
// only the host it asked for, and every request gets an error page with the
// reason; nothing from the origin is ever relayed.
void Session::refuse_upstream(int alert, std::string reason, int status) {
  if (state_ == State::closing) return;
  if (reattaching_) {  // the client's handshake is long done: its request gets the page
    reattach_failed(std::move(reason));
    return;
  }
  if (ctx_.settings.refuse_with_alert || !client_.ssl) {
    refuse_client(alert, std::move(reason));
    return;
  }
  bool is_ip = hello_.sni.empty() && request_.authority.kind != net::HostKind::name;
  const std::string& name = hello_.sni.empty() ? request_.authority.host : hello_.sni;
  auto keys = ctx_.leaf_keys->current();
  auto page_cert = std::make_shared<tls::ForgedCert>();
  page_cert->key = tls::up_ref(keys->get(tls::LeafKeyType::ec_p256));
  page_cert->key_generation = keys->generation;
  std::string error;
  page_cert->cert = tls::forge_for_name(name, is_ip, ctx_.ca, page_cert->key.get(), &error);
  if (!page_cert->cert) {
    refuse_client(SSL_AD_INTERNAL_ERROR, error);
    return;
  }
  page_cert->ticket_binding = tls::certificate_binding(page_cert->cert.get());
  set_action("refuse");
  close_reason_ = reason;
  refusal_ = http::Refusal{status, std::move(reason)};
  // The origin leg has nothing more to do.
  stop_reading(upstream_);
  upstream_.read_done = true;
  shutdown_write(upstream_);
  // Speak whatever HTTP the client prefers, since no origin chose.
  upstream_alpn_.clear();
  for (const char* p : {"h2", "http/1.1"})
    if (upstream_alpn_.empty() &&
        std::find(hello_.alpn.begin(), hello_.alpn.end(), p) != hello_.alpn.end())
      upstream_alpn_ = p;
  leaf_ = std::move(page_cert);
  untrusted_ = false;
  state_ = State::client_handshake;
  drive_client_handshake();
  if (state_ == State::client_handshake) start_reading(client_);
}

void Session::refuse_client(int alert, std::string reason) {
  if (state_ == State::closing) return;
  if (!client_.ssl) {
    close(std::move(reason));
    return;
  }
  set_action("refuse");
  close_reason_ = std::move(reason);
  refuse_alert_ = alert;
  state_ = State::client_handshake;
  // The suspended handshake resumes into the ClientHello callback, which now
  // fails with `alert`; OpenSSL writes the alert for us.
  ERR_clear_error();
  SSL_do_handshake(client_.ssl.get());
  ERR_clear_error();
  flush(client_);
  shutdown_write(client_);
  std::string r = close_reason_;
  close(r);
}

// Only certificates of the enterprise CA that stand for a verified origin
// get resumable sessions: not the untrusted CA's (a client that clicked
// through its warning sees it again) nor error pages'. A binding never set
// (all zero) matches nothing either.
const tls::TicketBinding* Session::ticket_binding() const {
  if (!leaf_ || untrusted_ || refusal_ || leaf_->ticket_binding == tls::TicketBinding{}) return nullptr;
  return &leaf_->ticket_binding;
}

int Session::on_client_hello(SSL* ssl, int* alert) {
  if (refuse_alert_ != 0) {
    *alert = refuse_alert_;
    return SSL_CLIENT_HELLO_ERROR;
  }
  if (!leaf_) return SSL_CLIENT_HELLO_RETRY;
  const tls::IssuingCa& issuer = untrusted_ ? ctx_.untrusted_ca : ctx_.ca;
  if (SSL_use_cert_and_key(ssl, leaf_->cert.get(), leaf_->key.get(), issuer.chain.get(), 1) != 1) {
    *alert = SSL_AD_INTERNAL_ERROR;
    return SSL_CLIENT_HELLO_ERROR;
  }
  // No ticket could ever resume: TLS 1.3 sends none (TLS 1.2: see
  // decrypt_ticket). Not SSL_OP_NO_TICKET, which would hide an offered
  // ticket from the log (client_ticket_refused).
  if (!ticket_binding()) SSL_set_num_tickets(ssl, 0);
  return SSL_CLIENT_HELLO_SUCCESS;
}

void Session::drive_client_handshake() {
  ERR_clear_error();
  int rc = SSL_do_handshake(client_.ssl.get());
  flush(client_);
  if (rc == 1) {
    t_client_hs_done_ = uv_hrtime();
    client_tls_ = TlsFacts::of(client_.ssl.get());
    start_relay();
    return;
  }
  int err = SSL_get_error(client_.ssl.get(), rc);
  if (err == SSL_ERROR_WANT_CLIENT_HELLO_CB) return;  // suspended until upstream is ready
  if (err == SSL_ERROR_WANT_READ) {
    if (client_.eof) {
      note_pinned_client("closed the connection after the forged certificate", nullptr);
      note_failure(core::FailureCause::client_closed);
      close("client closed during TLS handshake");
    }
    return;
  }
  if (const char* alert = certificate_alert(ERR_peek_error()))
    note_pinned_client("rejected the forged certificate with an alert", alert);
  std::string why = tls::drain_errors();
  // A client that rejects the forged certificate says so with an alert.
  note_failure(core::FailureCause::client_tls);
  close("client TLS handshake failed: " + why);
}

// ---------------------------------------------------------------------------
// Relay

void Session::start_relay() {
  state_ = State::relaying;
  relay_ = make_relay();
  start_hooks();
  idle_since_ = uv_now(host_.loop());
  arm_timer(ctx_.settings.idle_timeout);
  start_reading(client_);
  start_reading(upstream_);
  // Either side may already hold decrypted data (early application data from
  // a server-speaks-first protocol, or the client's first request).
  pump(upstream_);
  if (state_ == State::relaying) pump(client_);
}

// Inspection hooks: key logs limited to chosen rules, and the stream tap
// feeding the consumers this connection's rule selects.
bool Session::keylog_selected() const {
  if (ctx_.keylog_rules.empty()) return true;
  return rule_ && std::find(ctx_.keylog_rules.begin(), ctx_.keylog_rules.end(), rule_->name) !=
                      ctx_.keylog_rules.end();
}

void Session::start_hooks() {
  if (ctx_.hooks.empty()) return;
  const std::vector<std::string>* names = rule_ && rule_->options.hooks ? &*rule_->options.hooks : nullptr;
  auto channels = hooks::select_channels(ctx_.hooks, names);
  if (channels.empty()) return;
  auto flow = std::make_shared<hooks::FlowInfo>();
  flow->conn_id = id_;
  flow->client = client_sa_;
  // The server as the client meant it: the original destination in
  // transparent mode, else the origin address connected to.
  int len = sizeof flow->server;
  if (have_original_dst_) {
    flow->server = original_dst_;
  } else if (!upstream_.initialized ||  // refused before any origin connection was made
             uv_tcp_getpeername(upstream_.tcp.get(), reinterpret_cast<sockaddr*>(&flow->server), &len) != 0) {
    return;
  }
  flow->sni = hello_.sni;
  if (rule_) flow->rule = rule_->name;
  tap_ = std::make_unique<hooks::StreamTap>(std::move(channels), std::move(flow));
  if (tap_->open()) pause_for_hooks();
}

// A consumer with on_overflow = "block" is full: stop reading both legs
// until it has drained; the relay's own back-pressure is left as it was.
void Session::pause_for_hooks() {
  if (hooks_paused_) return;
  hooks_paused_ = true;
  stop_reading(client_);
  stop_reading(upstream_);
  tap_->when_drained([host = &host_, weak = std::weak_ptr<int>(alive_), this] {
    // On a consumer thread: hop to this session's loop; it may be gone by then.
    host->post([weak, this] {
      if (weak.expired()) return;
      resume_after_hooks();
    });
  });
}

void Session::resume_after_hooks() {
  if (!hooks_paused_ || state_ == State::closing) return;
  hooks_paused_ = false;
  // While reattaching, finish_reattach starts reading.
  if (state_ == State::relaying) resume_reading();
}

// Marks the connection archived when it is, with what the archive records
// of the origin: its certificate's SHA-256 and the verification verdict.
void Session::set_archive_info(exchange::ConnectionInfo& info) {
  if (!archive_selected()) return;
  archived_ = true;
  info.archive = true;
  info.upstream_verdict = verdict_;
  if (!upstream_.ssl) return;
  if (X509* cert = SSL_get0_peer_certificate(upstream_.ssl.get())) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    if (X509_digest(cert, EVP_sha256(), md, &len) == 1)
      info.upstream_cert_sha256 = archive::to_hex(std::string_view(reinterpret_cast<const char*>(md), len));
  }
}

// Compliance archive (docs/archive.md): this connection's exchanges are
// archived when the archive takes everything or its rule says so.
bool Session::archive_selected() const {
  return ctx_.archive && (ctx_.archive_all || (rule_ && rule_->options.archive.value_or(false)));
}

// Fail closed: archived traffic is refused while the archive cannot write.
std::optional<std::string> Session::archive_refusal() const {
  if (!archive_selected() || !ctx_.archive->failing() || ctx_.archive->fail_open()) return std::nullopt;
  return "archive cannot write: " + ctx_.archive->failure();
}

// Before relaying more of an archived connection: a full archive queue
// pauses it (back-pressure), a failing archive ends it (fail closed).
// False when the connection was closed.
bool Session::archive_allows_more() {
  if (!archived_) return true;
  if (auto why = archive_refusal()) {
    fail(*why);
    return false;
  }
  if (!archive_paused_ && ctx_.archive->over_limit()) {
    archive_paused_ = true;
    stop_reading(client_);
    stop_reading(upstream_);
    if (ctx_.metrics) ctx_.metrics->registry.inc(worker_, ctx_.metrics->archive_backpressure);
    ctx_.archive->when_drained([host = &host_, weak = std::weak_ptr<int>(alive_), this] {
      // On the archive's writer thread (or here): hop to this session's loop.
      host->post([weak, this] {
        if (weak.expired() || !archive_paused_ || state_ == State::closing) return;
        archive_paused_ = false;
        if (state_ == State::relaying) resume_reading();  // else finish_reattach starts reading
      });
    });
  }
  return true;
}

// Reading restarts only when neither a hook consumer nor the archive holds
// the connection back.
void Session::resume_reading() {
  if (hooks_paused_ || archive_paused_) return;
  for (Leg* leg : {&client_, &upstream_})
    if (!leg->paused) start_reading(*leg);
  // TLS records already received may hold plaintext not yet decrypted.
  if (upstream_.ssl) pump(upstream_);
  if (state_ == State::relaying && client_.ssl) pump(client_);
}

// The negotiated ALPN picks the codec: HTTP/1.1 (or no ALPN, the HTTP/1.1
// default over TLS) gets the strict parser; anything else is relayed as is.
// Plain HTTP on a transparent listener: the HTTP/1.1 codec on plain legs.
std::unique_ptr<Relay> Session::make_plain_h1_relay() {
  auto info = connection_info();
  info->server = upstream_addr_;
  info->target = request_.authority.to_string();
  set_archive_info(*info);
  return std::make_unique<http::H1Relay>(*this, *ctx_.exchanges, std::move(info), ctx_.settings.h1,
                                         std::nullopt, icap_options());
}

// ICAP for this session's HTTP/1.1 and HTTP/2 exchanges: the configured
// services its policy rule selects (all when the rule names none), in
// configuration order per method; the worker's clients are looked up per
// call so a worker shutting down simply yields none.
http::IcapOptions Session::icap_options() {
  http::IcapOptions o;
  const auto& ic = ctx_.icap;
  if (!ic.enabled()) return o;
  if (rule_ && rule_->options.hooks) {  // a `hooks` list without "icap" turns ICAP off
    const auto& hooks = *rule_->options.hooks;
    if (std::find(hooks.begin(), hooks.end(), "icap") == hooks.end()) return o;
  }
  const auto* chosen = rule_ && rule_->options.icap ? &*rule_->options.icap : nullptr;
  for (std::size_t i = 0; i < ic.services.size(); ++i) {
    const auto& svc = ic.services[i];
    if (chosen && std::find(chosen->begin(), chosen->end(), svc.name) == chosen->end()) continue;
    (svc.method == icap::Method::reqmod ? o.reqmod_chain : o.respmod_chain)
        .push_back({i, svc.name, svc.fail_closed});
  }
  o.reqmod = !o.reqmod_chain.empty();
  o.respmod = !o.respmod_chain.empty();
  o.max_body = ic.max_body;
  SessionHost* host = &host_;
  o.service = [host](std::size_t i) { return host->icap_service(i); };
  if (metrics::ProxyMetrics* m = ctx_.metrics) {
    unsigned shard = worker_;
    o.on_result = [m, shard](const icap::ChainStep& s, icap::Method, const icap::Result& r) {
      if (s.service >= m->icap_services.size()) return;
      const auto& ids = m->icap_services[s.service];
      m->registry.observe(shard, ids.duration, std::chrono::duration<double>(r.latency).count());
      m->registry.inc(shard, ids.results[static_cast<std::size_t>(r.kind)]);
    };
    o.on_bypass = [m, shard](icap::Method, bool too_large) {
      m->registry.inc(shard, too_large ? m->icap_bypass_too_large : m->icap_bypass_fail_open);
    };
  }
  return o;
}

// What the exchanges over the current origin connection record of it.
std::shared_ptr<exchange::ConnectionInfo> Session::relay_connection_info(const TlsFacts& upstream) {
  auto info = connection_info();
  info->server = upstream_addr_;
  info->target = request_.authority.to_string();
  info->sni = hello_.sni;
  info->client_tls = std::string(client_tls_.version) + " " + client_tls_.cipher;
  if (upstream.version) info->upstream_tls = std::string(upstream.version) + " " + upstream.cipher;
  info->alpn = upstream.version ? upstream.alpn : upstream_alpn_;
  set_archive_info(*info);
  return info;
}

std::unique_ptr<Relay> Session::make_relay() {
  auto info = relay_connection_info(upstream_tls_);
  if (upstream_alpn_ == "h2") {
    codec_ = "h2";
    auto h2 = std::make_unique<http::H2Relay>(*this, *ctx_.exchanges, std::move(info),
                                              ctx_.settings.h2, ctx_.settings.relay_high_watermark,
                                              refusal_, icap_options());
    h2->start();
    return h2;
  }
  auto make_h1 = [this, info = std::move(info)](bool keep_origin) -> std::unique_ptr<Relay> {
    return std::make_unique<http::H1Relay>(*this, *ctx_.exchanges, info, ctx_.settings.h1,
                                           refusal_, icap_options(), keep_origin);
  };
  if (upstream_alpn_ == "http/1.1" || refusal_) {
    codec_ = "http/1.1";
    return make_h1(!pool_key_.empty() && !refusal_ && !untrusted_);
  }
  if (upstream_alpn_.empty()) {
    codec_ = "sniffing";
    // Without ALPN the protocol is sniffed from the client's first bytes;
    // once the strict parser has taken an origin's response, its connection
    // may be kept like one that chose http/1.1 (under its own key: the
    // offer is part of it).
    auto h1 = [make_h1 = std::move(make_h1), keep = !pool_key_.empty() && !untrusted_] {
      return make_h1(keep);
    };
    return std::make_unique<http::SniffRelay>(*this, std::move(h1), [this](bool is_http) {
      codec_ = is_http ? "http/1.1" : "opaque";
    });
  }
  codec_ = "opaque";
  return std::make_unique<http::OpaqueRelay>(*this);
}

void Session::on_leg_data(Leg& from, const char* data, std::size_t n) {
  idle_since_ = uv_now(host_.loop());
  BIO_write(from.rbio, data, static_cast<int>(n));
  switch (state_) {
    case State::upstream_handshake:
      if (&from == &upstream_) drive_upstream_handshake();
      return;
    case State::client_handshake:
      if (&from == &client_) drive_client_handshake();
      return;
    case State::relaying:
      pump(from);
      return;
    default:
      return;
  }
}

std::size_t Session::pending_out(const Leg& leg) const {
  if (!leg.initialized) return 0;
  return uv_stream_get_write_queue_size(reinterpret_cast<const uv_stream_t*>(leg.tcp.get())) +
         (leg.wbio ? BIO_ctrl_pending(leg.wbio) : 0) + leg.plain_out.size();
}

// Decrypts what `from` has buffered and hands it to the relay, until the TLS
// layer needs more bytes or the opposite leg has too much queued.
void Session::pump(Leg& from) {
  Leg& to = opposite(from);
  std::span<char> buf = host_.plain_buffer();
  bool idle = false;  // stopped because `from` has nothing more buffered
  while (!from.read_done && state_ == State::relaying && !hooks_paused_ && !archive_paused_) {
    if (pending_out(to) >= ctx_.settings.relay_high_watermark) {
      // Back-pressure: stop taking bytes from `from` until `to` drains.
      if (!from.paused) {
        from.paused = true;
        stop_reading(from);
      }
      break;
    }
    SSL* ssl = from.ssl.get();
    // Nothing buffered anywhere (no plaintext, no record bytes inside
    // OpenSSL, no ciphertext in the BIO): SSL_read would only allocate a
    // fresh 16.7 KiB record buffer, find the BIO empty and return WANT_READ.
    if (SSL_pending(ssl) == 0 && !SSL_has_pending(ssl) && BIO_ctrl_pending(from.rbio) == 0) {
      if (from.eof) end_of_input(from, false);
      else idle = true;
      break;
    }
    ERR_clear_error();
    int n = SSL_read(ssl, buf.data(), static_cast<int>(buf.size()));
    if (n > 0) {
      from.plaintext_in += static_cast<std::uint64_t>(n);
      std::span<const char> plain(buf.data(), static_cast<std::size_t>(n));
      if (tap_ && tap_->data(&from == &client_ ? hooks::FlowDir::to_server : hooks::FlowDir::to_client, plain))
        pause_for_hooks();
      if (!archive_allows_more()) break;
      if (origin_released_ && &from == &client_) {
        reacquire_origin(plain);
        return;
      }
      relay_->on_data(side_of(from), plain);
      continue;
    }
    int err = SSL_get_error(ssl, n);
    if (err == SSL_ERROR_WANT_READ) {
      if (from.eof) end_of_input(from, false);
      else idle = true;
      break;
    }
    if (err == SSL_ERROR_ZERO_RETURN) {
      end_of_input(from, true);
      break;
    }
    if (&from == &upstream_) upstream_tls_error_ = true;
    note_failure(&from == &upstream_ ? core::FailureCause::upstream_protocol : core::FailureCause::client_tls);
    close(std::string("TLS error from ") + from.name + ": " + tls::drain_errors());
    return;
  }
  if (state_ == State::closing) return;
  flush(to);
  flush(from);  // reading may produce records (alerts, key updates)
  // `from` waits for the network. What an idle connection would keep goes
  // once both legs have been quiet for kTrimAfterMs (on_timer): not here,
  // where a keep-alive connection would free and allocate it again for
  // every exchange.
  if (idle) schedule_trim();
  if (park_pending_ && state_ == State::relaying) park_origin_if_idle();
}

void Session::schedule_trim() {
  if (trim_pending_ || state_ != State::relaying) return;
  trim_pending_ = true;
  arm_timer(std::min(std::chrono::milliseconds(kTrimAfterMs), ctx_.settings.idle_timeout));
}

// Record buffers and memory-BIO capacity of a quiet (or parked) leg.
// Nothing is buffered then: each call below checks and keeps what holds data.
void Session::trim_leg(Leg& leg) {
  if (leg.plain_out.empty()) std::string().swap(leg.plain_out);
  release_tls_buffers(leg);
  drop_bio_capacity(leg, true);
  drop_bio_capacity(leg, false);
}

// OpenSSL's ~17 KiB record buffers of a quiet leg (SSL_MODE_RELEASE_BUFFERS
// is not set: it would free and allocate them around every record).
// SSL_free_buffers refuses while any record data is held, costs nothing
// when none is allocated, and OpenSSL allocates them again when needed.
void Session::release_tls_buffers(Leg& leg) {
  if (leg.ssl && SSL_pending(leg.ssl.get()) == 0 && !SSL_has_pending(leg.ssl.get()))
    (void)SSL_free_buffers(leg.ssl.get());
}

// A memory BIO keeps the capacity of its largest write for good (BIO_reset
// only clears it). An empty one of a quiet leg gets a fresh, empty BUF_MEM,
// which allocates again only when bytes come (called only once the
// connection is quiet or parked, so even a bulk transfer's large buffers go).
void Session::drop_bio_capacity(Leg& leg, bool read) {
  BIO* bio = read ? leg.rbio : leg.wbio;
  if (!leg.ssl || !bio || BIO_ctrl_pending(bio) != 0) return;
  BUF_MEM* mem = nullptr;
  if (BIO_get_mem_ptr(bio, &mem) != 1 || !mem || mem->max == 0) return;
  BUF_MEM* fresh = BUF_MEM_new();
  if (!fresh) return;  // keep the old one: only memory is at stake
  BIO_set_mem_buf(bio, fresh, BIO_CLOSE);
}

void Session::end_of_input(Leg& from, bool clean) {
  if (from.read_done) return;
  from.read_done = true;
  stop_reading(from);
  // A client that leaves between exchanges may leave its origin connection
  // to the next one; this session then ends the client leg itself.
  if (&from == &client_) park_origin_if_idle();
  relay_->on_end(side_of(from), clean);
  if ((upstream_parked_ || origin_released_) && &from == &client_) end(Side::client, clean);
  maybe_finish();
}

// RelayIo

void Session::send(Side to, std::span<const char> data) {
  Leg& leg = leg_of(to);
  if (leg.write_shutdown || state_ != State::relaying) return;
  if (!leg.ssl) {
    if (to == Side::client) plain_bytes_to_client_ += data.size();
    send_raw(leg, data.data(), data.size());
    return;
  }
  // OpenSSL 3.0 spends about 9,000 instructions per TLS record on top of
  // the cipher: small pieces (heads, small bodies, chunk lines, h2 frames)
  // wait in plain_out and become one record when the pump loop flushes.
  // Bulk pieces are encrypted from the caller's buffer, without a copy.
  if (leg.plain_out.empty() ? data.size() < kCoalesceBelow
                            : leg.plain_out.size() + data.size() <= kRecordPlaintext) {
    leg.plain_out.append(data.data(), data.size());
    return;
  }
  if (!write_batched_plain(leg)) return;
  if (data.size() < kCoalesceBelow) {  // starts the next batch
    leg.plain_out.append(data.data(), data.size());
    return;
  }
  if (!write_plain(leg, data)) return;
  if (BIO_ctrl_pending(leg.wbio) >= 64 * 1024) flush(leg);
}

bool Session::write_plain(Leg& leg, std::span<const char> data) {
  if (SSL_write(leg.ssl.get(), data.data(), static_cast<int>(data.size())) !=
      static_cast<int>(data.size())) {
    close(std::string("TLS write toward ") + leg.name + " failed: " + tls::drain_errors());
    return false;
  }
  return true;
}

bool Session::write_batched_plain(Leg& leg) {
  if (leg.plain_out.empty() || !leg.ssl) return true;
  bool ok = write_plain(leg, leg.plain_out);
  leg.plain_out.clear();
  return ok;
}

std::size_t Session::queued(Side to) const {
  return pending_out(to == Side::client ? client_ : upstream_);
}

// The receiver sees the same kind of ending the sender produced:
// close_notify plus FIN for a clean end, a bare FIN for a truncated one.
void Session::end(Side to, bool clean) {
  Leg& leg = leg_of(to);
  if (leg.write_shutdown) return;
  // The relay ended the client leg (its "Connection: close"): the origin's
  // may be parked once the current pump is over.
  if (to == Side::client && !pool_key_.empty()) park_pending_ = true;
  if (!write_batched_plain(leg)) return;  // the data before the close_notify
  if (clean && leg.ssl) {
    ERR_clear_error();
    SSL_shutdown(leg.ssl.get());
    ERR_clear_error();
  }
  flush(leg);
  shutdown_write(leg);
}

void Session::stop_reading(Side from) {
  Leg& leg = leg_of(from);
  leg.read_done = true;
  stop_reading(leg);
}

void Session::flush_sends() {
  if (state_ != State::relaying) return;
  flush(client_);
  flush(upstream_);
  if (park_pending_) park_origin_if_idle();
}

void Session::pause_reading(Side from, bool paused) {
  Leg& leg = leg_of(from);
  if (paused) {
    stop_reading(leg);
  } else if (state_ == State::relaying) {
    start_reading(leg);
  }
}

void Session::fail(std::string reason) { close(std::move(reason)); }

// A reset or failed write. Before relaying it is the failure of whichever
// side went; while relaying, only an origin cutting a response short is
// one (a client leaving mid-way, or an idle origin going, fails nothing).
void Session::note_leg_lost(const Leg& leg) {
  if (state_ == State::closing) return;
  bool relaying = state_ == State::relaying;
  if (&leg == &client_) {
    if (!relaying) note_failure(core::FailureCause::client_closed);
  } else if (!relaying) {
    note_failure(core::FailureCause::upstream_tls);
  } else if (relay_ && relay_->awaiting_origin()) {
    note_failure(core::FailureCause::upstream_reset);
  }
}

void Session::set_close_reason(std::string reason) {
  if (close_reason_.empty()) close_reason_ = std::move(reason);
}

void Session::maybe_finish() {
  auto done = [](const Leg& l) { return !l.initialized || (l.read_done && l.shutdown_done); };
  if (done(client_) && done(upstream_)) close(close_reason_.empty() ? "closed" : close_reason_);
}

void Session::on_leg_eof(Leg& from) {
  from.eof = true;
  stop_reading(from);
  // A client that connects and closes without a byte (a load balancer's
  // TCP health check) has not failed.
  bool silent = (state_ == State::reading_request || state_ == State::reading_proxy_header) && inbuf_.empty();
  if (&from == &client_ && state_ != State::relaying && state_ != State::closing && !silent)
    note_failure(core::FailureCause::client_closed);
  switch (state_) {
    case State::reading_proxy_header:
      close("client closed before the PROXY header");
      return;
    case State::reading_request:
      close("client closed before sending a request");
      return;
    case State::peeking_hello:
      close("client closed before completing its ClientHello");
      return;
    case State::upstream_handshake:
      if (&from == &upstream_) drive_upstream_handshake();
      else close("client closed during TLS handshake");
      return;
    case State::forging:
      if (&from == &client_) close("client closed during TLS handshake");
      return;
    case State::client_handshake:
      if (&from == &client_) drive_client_handshake();
      return;
    case State::relaying:
      if (!from.ssl) {
        end_of_input(from, true);  // a FIN is a plain stream's clean end
        return;
      }
      pump(from);
      return;
    default:
      return;
  }
}

void Session::on_write_done(Leg& leg, int status) {
  if (state_ == State::closing) return;
  if (status < 0) {
    fatal_ = true;
    note_leg_lost(leg);
    close(std::string("write to ") + leg.name + " failed: " + uv_strerror(status));
    return;
  }
  if (state_ != State::relaying) return;
  if (pending_out(leg) > ctx_.settings.relay_high_watermark / 4) return;
  relay_->on_writable(side_of(leg));
  if (state_ != State::relaying) return;
  // What the relay sent from this callback (HTTP/2 DATA toward `leg`, a
  // WINDOW_UPDATE the other way) goes out now, not at the next read.
  flush(client_);
  flush(upstream_);
  if (state_ != State::relaying) return;
  Leg& from = opposite(leg);
  if (from.paused) {
    from.paused = false;
    if (!from.eof && !from.read_done) start_reading(from);
    if (from.ssl) pump(from);
  }
}

// ---------------------------------------------------------------------------
// I/O helpers

void Session::alloc_cb(uv_handle_t* h, std::size_t, uv_buf_t* buf) {
  auto* self = static_cast<Session*>(h->data);
  std::span<char> s = self->host_.read_buffer();
  *buf = uv_buf_init(s.data(), static_cast<unsigned>(s.size()));
}

void Session::read_cb(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
  auto* self = static_cast<Session*>(s->data);
  if (self->state_ == State::closing || nread == 0) return;
  Leg& leg = reinterpret_cast<uv_tcp_t*>(s) == self->client_.tcp.get() ? self->client_ : self->upstream_;
  if (nread == UV_EOF) {
    self->on_leg_eof(leg);
    return;
  }
  if (nread < 0) {
    // A reset during the client's handshake is an abort like a close.
    if (&leg == &self->client_)
      self->note_pinned_client("reset the connection after the forged certificate", nullptr);
    self->fatal_ = true;
    self->note_leg_lost(leg);
    self->close(std::string(leg.name) + " read error: " + uv_strerror(static_cast<int>(nread)));
    return;
  }
  auto n = static_cast<std::size_t>(nread);
  switch (self->state_) {
    case State::reading_proxy_header:
      self->on_proxy_header_data(buf->base, n);
      return;
    case State::reading_request:
      self->on_request_data(buf->base, n);
      return;
    case State::peeking_hello:
      self->on_hello_data(buf->base, n);
      return;
    case State::relaying:
      if (!leg.ssl) {  // plain HTTP or bypass: no TLS layer in between
        self->idle_since_ = uv_now(self->host_.loop());
        leg.plaintext_in += n;
        if (!self->archive_allows_more()) return;
        self->relay_->on_data(self->side_of(leg), std::span<const char>(buf->base, n));
        Leg& to = self->opposite(leg);
        if (self->state_ == State::relaying && to.initialized &&
            self->pending_out(to) >= self->ctx_.settings.relay_high_watermark) {
          leg.paused = true;
          self->stop_reading(leg);
        }
        return;
      }
      self->on_leg_data(leg, buf->base, n);
      return;
    default:
      self->on_leg_data(leg, buf->base, n);
      return;
  }
}

void Session::start_reading(Leg& leg) {
  // Hook and archive back-pressure hold relayed bytes; an origin handshake
  // (a released connection's reattachment) reads regardless.
  if (leg.reading || leg.eof || leg.read_done || !leg.initialized || state_ == State::closing ||
      (state_ == State::relaying && (hooks_paused_ || archive_paused_)))
    return;
  if (uv_read_start(reinterpret_cast<uv_stream_t*>(leg.tcp.get()), alloc_cb, read_cb) == 0)
    leg.reading = true;
}

void Session::stop_reading(Leg& leg) {
  if (!leg.reading) return;
  uv_read_stop(reinterpret_cast<uv_stream_t*>(leg.tcp.get()));
  leg.reading = false;
}

void Session::flush(Leg& leg) {
  if (!leg.wbio) return;
  if (!write_batched_plain(leg)) return;
  char* data = nullptr;
  long n = BIO_get_mem_data(leg.wbio, &data);
  if (n <= 0) return;
  send_raw(leg, data, static_cast<std::size_t>(n));
  (void)BIO_reset(leg.wbio);
  schedule_trim();  // whatever this write allocated goes once the connection is quiet
}

void Session::send_raw(Leg& leg, const char* data, std::size_t n) {
  if (n == 0 || !leg.initialized || leg.write_shutdown || state_ == State::closing) return;
  auto* stream = reinterpret_cast<uv_stream_t*>(leg.tcp.get());
  // Write straight from the caller's buffer when the socket takes it; copy
  // only what the kernel could not accept now.
  if (uv_stream_get_write_queue_size(stream) == 0) {
    uv_buf_t b = uv_buf_init(const_cast<char*>(data), static_cast<unsigned>(n));
    int w = uv_try_write(stream, &b, 1);
    if (w > 0) {
      data += w;
      n -= static_cast<std::size_t>(w);
    } else if (w != 0 && w != UV_EAGAIN && w != UV_ENOSYS) {
      fatal_ = true;
      note_leg_lost(leg);
      close(std::string("write to ") + leg.name + " failed: " + uv_strerror(w));
      return;
    }
    if (n == 0) return;
  }
  auto req = std::make_unique<WriteReq>();
  req->data = std::make_unique<char[]>(n);
  std::memcpy(req->data.get(), data, n);
  req->session = this;
  req->leg = &leg;
  req->req.data = req.get();
  uv_buf_t b = uv_buf_init(req->data.get(), static_cast<unsigned>(n));
  int rc = uv_write(&req->req, stream, &b, 1, [](uv_write_t* r, int status) {
    std::unique_ptr<WriteReq> owned(static_cast<WriteReq*>(r->data));
    --owned->leg->writes_in_flight;
    owned->session->on_write_done(*owned->leg, status);
  });
  if (rc == 0) ++leg.writes_in_flight;
  if (rc != 0) {
    fatal_ = true;
    note_leg_lost(leg);
    close(std::string("write to ") + leg.name + " failed: " + uv_strerror(rc));
    return;
  }
  (void)req.release();  // owned by the write callback from here on
}

void Session::shutdown_write(Leg& leg) {
  if (!leg.initialized || leg.write_shutdown) return;
  leg.write_shutdown = true;
  leg.shutdown_req.data = this;
  int rc = uv_shutdown(&leg.shutdown_req, reinterpret_cast<uv_stream_t*>(leg.tcp.get()),
                       [](uv_shutdown_t* r, int) {
                         auto* self = static_cast<Session*>(r->data);
                         Leg& l = r == &self->client_.shutdown_req ? self->client_ : self->upstream_;
                         l.shutdown_done = true;
                         if (self->state_ == State::relaying) self->maybe_finish();
                         else if (self->state_ == State::closing) self->close_handles(false);
                       });
  if (rc != 0) leg.shutdown_done = true;
}

void Session::respond_error(int status, const char* phrase, std::string body, std::string reason,
                            std::string_view extra_headers) {
  if (static_) {  // nobody asked in HTTP: the client only sees the close
    close(std::move(reason));
    return;
  }
  http_status_ = status;
  set_action("reject");
  std::string resp = "HTTP/1.1 " + std::to_string(status) + " " + phrase +
                     "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: " +
                     std::to_string(body.size()) +
                     "\r\nCache-Control: no-store\r\nConnection: close\r\n";
  if (status == 405) resp += "Allow: CONNECT\r\n";
  resp += extra_headers;
  resp += "\r\n" + body;
  send_raw(client_, resp.data(), resp.size());
  // FIN after the response so the client reads it in full before the close.
  shutdown_write(client_);
  close(std::move(reason));
}

// ---------------------------------------------------------------------------
// Timers and teardown

void Session::arm_timer(std::chrono::milliseconds ms) {
  uv_timer_start(&timer_, [](uv_timer_t* t) { static_cast<Session*>(t->data)->on_timer(); },
                 static_cast<std::uint64_t>(ms.count()), 0);
}

void Session::on_timer() {
  if (reattaching_ && !late_connect_ && state_ != State::closing) {
    note_failure(core::FailureCause::upstream_timeout);
    reattach_failed("origin TLS handshake timed out");
    return;
  }
  if (late_connect_ && state_ != State::closing) {
    note_failure(core::FailureCause::upstream_connect_timeout);
    connect_failed("connect to " + request_.authority.to_string() + " timed out after " +
                   std::to_string(ctx_.settings.connect_timeout.count()) + " ms");
    return;
  }
  switch (state_) {
    case State::reading_proxy_header:
      note_failure(core::FailureCause::client_timeout);
      close("timed out waiting for the PROXY header");
      return;
    case State::reading_request:
      note_failure(core::FailureCause::client_timeout);
      close("timed out waiting for the request head");
      return;
    case State::authenticating:
      note_failure(core::FailureCause::internal);
      close("timed out checking the proxy credentials");
      return;
    case State::connecting: {
      note_failure(core::FailureCause::upstream_connect_timeout);
      std::string why = "connect to " + request_.authority.to_string() + " timed out after " +
                        std::to_string(ctx_.settings.connect_timeout.count()) + " ms";
      respond_error(504, "Gateway Timeout", "sightline: " + why + "\n", why);
      return;
    }
    case State::relaying: {
      auto idle = static_cast<std::uint64_t>(ctx_.settings.idle_timeout.count());
      std::uint64_t quiet = uv_now(host_.loop()) - idle_since_;
      if (quiet >= idle) {
        // An exchange still waiting for its response is the origin's
        // failure; a quiet keep-alive connection closing is none.
        bool awaiting_origin = relay_ && relay_->awaiting_origin();
        if (awaiting_origin) note_failure(core::FailureCause::upstream_timeout);
        close(awaiting_origin ? "idle timeout waiting for the origin's response" : "idle timeout");
        return;
      }
      std::uint64_t next = idle - quiet;
      if (trim_pending_) {
        if (quiet >= kTrimAfterMs) {
          trim_leg(client_);
          trim_leg(upstream_);
          if (relay_) relay_->trim();
          trim_pending_ = false;
        } else {
          next = std::min(next, kTrimAfterMs - quiet);  // busy: look again then
        }
      }
      if (release_candidate()) {
        auto after = static_cast<std::uint64_t>(ctx_.settings.release_idle_after.count());
        // Not idle then (a long poll): the next quiet spell schedules it again.
        if (quiet >= after) release_origin();
        else next = std::min(next, after - quiet);
      }
      arm_timer(std::chrono::milliseconds(next));
      return;
    }
    case State::closing:
      close_handles(true);  // lingering writes took too long
      return;
    case State::peeking_hello:
      if (transparent_ && inbuf_.empty()) {
        start_splice("no client bytes: server speaks first, spliced");
        return;
      }
      note_failure(core::FailureCause::client_timeout);
      close("timed out waiting for the ClientHello");
      return;
    case State::upstream_handshake:
      note_failure(core::FailureCause::upstream_timeout);
      // The client's handshake is still to come: it gets the 504 page,
      // within a fresh handshake budget.
      arm_timer(ctx_.settings.handshake_timeout);
      refuse_upstream(SSL_AD_HANDSHAKE_FAILURE, "origin TLS handshake timed out", 504);
      return;
    default:
      note_failure(state_ == State::forging ? core::FailureCause::internal : core::FailureCause::client_timeout);
      close("TLS handshake timed out");
      return;
  }
}

void Session::abort(const char* reason) {
  fatal_ = true;
  close(reason);
}

void Session::close_cb(uv_handle_t* h) {
  auto* self = static_cast<Session*>(h->data);
  if (--self->open_handles_ == 0) self->host_.session_closed(self->id_);
}

void Session::close(std::string reason) {
  if (state_ == State::closing) return;
  state_ = State::closing;
  // OpenSSL marks a session unresumable when its connection is freed
  // without a close_notify exchange; an origin connection that ended
  // without a TLS error keeps its session resumable.
  if (upstream_.ssl && !upstream_tls_error_ && SSL_is_init_finished(upstream_.ssl.get()))
    SSL_set_shutdown(upstream_.ssl.get(), SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
  if (close_reason_.empty() || close_reason_ == "closed") close_reason_ = std::move(reason);
  limit_slot_.reset();
  if (tap_) tap_->close(client_.read_done && upstream_.read_done && !fatal_);
  if (reattaching_) {  // closed mid-way (shutdown, abort): metrics and the line take the first connection
    reattaching_ = false;
    restore_first_upstream();
  }
  // Metrics first: whoever sees the log line finds them counted.
  record_metrics();
  log_connection();
  stop_reading(client_);
  stop_reading(upstream_);
  close_handles(fatal_);
}

// Closes every handle, except that a leg with a FIN still queued (an error
// response or alert not yet written) lingers until its shutdown completes,
// bounded by the timer; uv_close would otherwise cancel those writes.
void Session::close_handles(bool force) {
  bool lingering = false;
  for (Leg* leg : {&client_, &upstream_}) {
    if (!leg->initialized) continue;
    auto* h = reinterpret_cast<uv_handle_t*>(leg->tcp.get());
    if (uv_is_closing(h)) continue;
    if (!force && leg->write_shutdown && !leg->shutdown_done) {
      lingering = true;
      continue;
    }
    uv_close(h, close_cb);
  }
  if (!timer_initialized_) return;
  auto* t = reinterpret_cast<uv_handle_t*>(&timer_);
  if (uv_is_closing(t)) return;
  if (lingering) {
    arm_timer(std::chrono::seconds(5));
  } else {
    uv_close(t, close_cb);
  }
}

void Session::record_metrics() {
  if (!ctx_.metrics) return;
  auto& m = *ctx_.metrics;
  auto& r = m.registry;
  const unsigned s = worker_;
  auto a = metrics::conn_action(action_);
  r.add(s, m.active_connections[metrics::idx(a)], -1);
  metrics::Outcome outcome = metrics::Outcome::ok;
  if (action_ == "refuse" || action_ == "reject") outcome = metrics::Outcome::refused;
  else if (fatal_ || close_reason_.find("timed out") != std::string::npos ||
           close_reason_.find("error") != std::string::npos ||
           close_reason_.find("failed") != std::string::npos)
    outcome = metrics::Outcome::error;
  auto mode = transparent_ ? metrics::Mode::transparent
              : static_    ? metrics::Mode::static_target
                           : metrics::Mode::explicit_proxy;
  r.inc(s, m.connections[metrics::idx(mode)][metrics::idx(a)][metrics::idx(outcome)]);
  if (cause_ != core::FailureCause::none) r.inc(s, m.connection_failures[static_cast<std::size_t>(cause_)]);
  r.inc(s, m.bytes_client_to_server[metrics::idx(a)], client_.plaintext_in);
  r.inc(s, m.bytes_server_to_client[metrics::idx(a)],
        client_.ssl ? upstream_.plaintext_in : plain_bytes_to_client_);
  auto observe = [&](metrics::HistogramId h, std::uint64_t from, std::uint64_t to) {
    if (from != 0 && to >= from) r.observe(s, h, static_cast<double>(to - from) / 1e9);
  };
  observe(m.dns, t_connect_start_, t_resolved_);
  observe(m.upstream_connect, t_connect_start_, t_connected_);
  observe(m.upstream_handshake, t_upstream_hs_start_, t_upstream_hs_done_);
  observe(m.forge, t_forge_start_, t_forge_done_);
  observe(m.client_handshake, t_hello_, t_client_hs_done_);
  if (verdict_ != "ok" && verdict_ != "not-checked")
    r.inc(s, m.verify_failures[metrics::idx(metrics::verdict(verdict_))]);
  if (t_client_hs_done_ != 0) {
    r.inc(s, client_tls_.resumed      ? m.client_tls_resumed
             : client_ticket_refused_ ? m.client_tls_ticket_refused
                                      : m.client_tls_full);
  }
  if (upstream_tls_.version && !upstream_reused_)  // a handshake completed
    r.inc(s, upstream_resumed_ ? m.upstream_tls_resumed : m.upstream_tls_full);
  if (cache_result_ == "hit") r.inc(s, m.cert_cache_hit);
  else if (cache_result_ == "miss") r.inc(s, m.cert_cache_miss);
  else if (cache_result_ == "wait") r.inc(s, m.cert_cache_wait);
}

void Session::log_connection() {
  nlohmann::json j = {
      {"event", "connection"},
      {"id", id_},
      {"client", client_addr_},
      {"target", request_.authority.port ? request_.authority.to_string() : ""},
      {"upstream_addr", upstream_addr_},
      {"sni", hello_.sni},
      {"action", action_},
      {"client_tls", tls_json(client_tls_, true)},
      {"upstream_tls", nullptr},
      {"upstream_verdict", verdict_},
      {"upstream_reason", verdict_reason_},
      {"bytes_client_to_server", client_.plaintext_in},
      {"bytes_server_to_client", client_.ssl ? upstream_.plaintext_in : plain_bytes_to_client_},
      {"upstream_connect_ms", ms_between(t_connect_start_, t_connected_)},
      {"upstream_handshake_ms", ms_between(t_upstream_hs_start_, t_upstream_hs_done_)},
      {"forge_ms", ms_between(t_forge_start_, t_forge_done_)},
      {"client_handshake_ms", ms_between(t_hello_, t_client_hs_done_)},
      {"total_ms", ms_between(t_accept_, uv_hrtime())},
      {"close_reason", close_reason_},
  };
  if (cause_ != core::FailureCause::none) j["cause"] = core::name(cause_);
  if (!user_.empty()) j["user"] = user_;
  if (!groups_.empty()) j["groups"] = groups_;
  if (auth_) j["auth"] = metrics::to_string(*auth_);
  if (!cache_result_.empty()) j["cert_cache"] = cache_result_;
  if (!codec_.empty()) j["codec"] = codec_;
  if (http_status_ != 0) j["status"] = http_status_;
  if (untrusted_) j["forged_by"] = "untrusted-ca";
  if (refusal_) j["error_page"] = true;
  if (!policy_rule_.empty()) j["policy"] = policy_rule_;
  if (auto_bypassed_) j["auto_bypass"] = true;
  if (pinned_failures_ != 0) {
    j["auto_bypass_failures"] = pinned_failures_;
    if (pinned_alert_) j["client_alert"] = pinned_alert_;
  }
  if (client_ticket_refused_) j["client_ticket_refused"] = true;
  if (upstream_resumed_) j["upstream_resumed"] = true;
  if (upstream_reused_) j["upstream_reused"] = upstream_uses_;  // the client connections it served, this one included
  if (upstream_parked_) j["upstream_parked"] = true;
  if (releases_ != 0) j["upstream_released"] = releases_;      // times the idle client gave it back
  if (reattaches_ != 0) j["upstream_reattached"] = reattaches_;  // times a later request got one again
  if (reattach_failed_) j["upstream_reattach_failed"] = true;     // close_reason says why
  if (upstream_tls_.version)  // a handshake with the origin completed
    j["upstream_tls"] = tls_json(upstream_tls_, false);
  // The same facts as a connection record for hook consumers that want them (JSON event feed).
  hooks::publish_connection(ctx_.hooks, rule_ ? &rule_->options.hooks : nullptr,
                            rule_ ? std::string_view(rule_->name) : std::string_view(), j);
  bool failed = action_ == "refuse" || action_ == "reject";
  log::emit(failed ? log::Level::warn : log::Level::info, std::move(j));
}

}  // namespace sightline::proxy
