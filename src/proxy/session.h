// One client connection through the explicit proxy, from accept to close:
//   request head (CONNECT) → resolve → connect upstream → "200" →
//   peek ClientHello → client handshake suspended → upstream TLS + verify →
//   forge (or refuse) → client handshake resumed → relay with back-pressure.
// Lives on one worker loop. Its libuv handles are members: the session is
// released by its host only after the last handle's close callback.
#pragma once

#include "net/connect_request.h"
#include "proxy/context.h"
#include "proxy/plain_http.h"
#include "http/h1_relay.h"
#include "http/relay.h"
#include "identity/store.h"
#include "metrics/proxy_metrics.h"
#include "tls/client_hello.h"
#include "tls/contexts.h"
#include "tls/ossl.h"
#include "hooks/tap.h"

#include <uv.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>

namespace sightline::proxy {

using http::Relay;
using http::RelayIo;
using http::Side;

// What the log says of a completed handshake. The strings are OpenSSL's
// static names (no allocation per connection); version null: none.
struct TlsFacts {
  const char* version = nullptr;
  const char* cipher = nullptr;
  std::string alpn;
  bool resumed = false;
  static TlsFacts of(SSL* ssl) {
    const unsigned char* p = nullptr;
    unsigned int n = 0;
    SSL_get0_alpn_selected(ssl, &p, &n);
    return {SSL_get_version(ssl), SSL_get_cipher_name(ssl),
            std::string(reinterpret_cast<const char*>(p), n), SSL_session_reused(ssl) == 1};
  }
};

class Session final : public tls::ClientHandshakeHandler,
                      public tls::UpstreamSessionSink,
                      public RelayIo,
                      public std::enable_shared_from_this<Session> {
 public:
  Session(SessionHost& host, const ProxyContext& ctx, std::uint64_t id, unsigned worker);
  ~Session() override;
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Accepts the pending connection on `server` and starts reading the
  // request. On failure the session closes itself (and is released).
  void start(uv_stream_t* server, const ListenerInfo& listener);
  // Closes at once (worker shutdown).
  void abort(const char* reason);

  int on_client_hello(SSL* ssl, int* alert) override;
  std::string_view selected_alpn() const override { return upstream_alpn_; }
  const tls::TicketBinding* ticket_binding() const override;
  void on_ticket_refused() override { client_ticket_refused_ = true; }

  void on_upstream_session(SSL_SESSION* session) override;

  // RelayIo
  void send(Side to, std::span<const char> data) override;
  std::size_t queued(Side to) const override;
  void end(Side to, bool clean) override;
  void stop_reading(Side from) override;
  void pause_reading(Side from, bool paused) override;
  void flush_sends() override;
  void fail(std::string reason) override;
  void set_close_reason(std::string reason) override;
  void note_failure(core::FailureCause cause) override {
    if (cause_ == core::FailureCause::none) cause_ = cause;
  }

 private:
  enum class State {
    reading_proxy_header,
    reading_request,
    authenticating,  // a password hash is being checked off the loop
    connecting,  // resolving and connecting
    peeking_hello,
    upstream_handshake,
    forging,
    client_handshake,
    relaying,
    closing,
  };

  struct Leg {
    // Heap-allocated so an origin connection can move to the pool and back
    // (upstream.reuse); freed with the session, after its close callback.
    std::unique_ptr<uv_tcp_t> tcp;
    uv_shutdown_t shutdown_req{};
    bool initialized = false;
    bool reading = false;
    bool paused = false;         // stopped by back-pressure
    bool eof = false;            // TCP FIN or error seen
    bool read_done = false;      // nothing more will come from this leg
    bool write_shutdown = false; // FIN queued toward this leg
    bool shutdown_done = false;
    tls::SslPtr ssl;
    BIO* rbio = nullptr;  // owned by ssl
    BIO* wbio = nullptr;  // owned by ssl
    std::uint64_t plaintext_in = 0;
    // Small plaintext sends of one pump (a response head and its body, h2
    // frames), encrypted together as one TLS record by flush().
    std::string plain_out;
    unsigned writes_in_flight = 0;  // uv_write requests whose callback is still due
    const char* name = "";
  };

  struct WriteReq;
  struct ResolveReq;
  struct AuthReq;

  // Phases.
  void on_request_data(const char* data, std::size_t n);
  void after_request_head();
  void on_proxy_header_data(const char* data, std::size_t n);
  void after_proxy_header();
  void begin_transparent();
  void connect_known_target();
  void start_splice(const char* why);
  void start_sniffed_http();
  void relay_first_bytes();
  bool start_plain_http();
  void resolve();
  void on_resolved(int status, addrinfo* res);
  void connect_next();
  void on_connected(int status);
  void on_hello_data(const char* data, std::size_t n);
  void after_hello();
  policy::Decision decide(bool with_sni);
  policy::Query policy_query(bool with_sni, std::string_view& name) const;
  void apply_decision_rule(policy::Decision& d, bool with_sni, std::string_view name);
  std::string describe(const policy::Decision& d) const;
  PlainHttpSettings::RequestPolicy plain_request_policy(const net::HostPort& origin,
                                                       std::string_view proxy_authorization);
  std::shared_ptr<exchange::ConnectionInfo> connection_info() const;

  // Identity (docs/identity.md).
  bool requires_password() const;
  void identify_by_address();
  void set_user(std::string user);
  void authenticate(std::string_view proxy_authorization, bool plain);
  void on_authenticated(bool ok, std::string user);
  void challenge(metrics::AuthResult why, std::string reason);
  void count_auth(metrics::AuthResult r);
  std::string challenge_header() const;
  bool archive_selected() const;
  std::optional<std::string> archive_refusal() const;
  bool archive_allows_more();
  void set_archive_info(exchange::ConnectionInfo& info);
  void resume_reading();
  void start_bypass();
  void note_pinned_client(const char* why, const char* alert);
  void start_client_tls();
  // Origin connection reuse (upstream.reuse, proxy/origin_pool.h).
  enum class LateNext { upstream_tls, bypass, splice, plain_http, decide, reattach };
  bool reuse_allowed() const;
  bool defer_connect_for_reuse();
  void begin_hello_peek();
  std::string alpn_offer() const;
  std::string verify_name() const;
  void open_upstream();
  void adopt_origin(std::unique_ptr<ParkedOrigin> parked);
  void connect_late(LateNext next);
  void connect_failed(std::string why, int status = 502);
  // Access control and connection limits, once the client's address is
  // known (after a PROXY header); false when the connection is refused.
  bool admit_client();
  void read_request_head();
  void note_leg_lost(const Leg& leg);
  bool connecting() const;
  void park_origin_if_idle();
  bool park_origin(bool client_stays);
  void take_parked_leg(ParkedOrigin& parked);
  // Idle origin release (upstream.release_idle, docs/interception.md).
  bool release_candidate() const;
  void release_origin();
  void reacquire_origin(std::span<const char> request);
  void finish_reattach(bool pooled);
  void reattach_failed(std::string reason);
  void count_release(std::size_t event);
  void restore_first_upstream();
  std::shared_ptr<exchange::ConnectionInfo> relay_connection_info(const TlsFacts& upstream);
  void start_upstream_tls();
  void drive_upstream_handshake();
  void on_upstream_verified();
  bool judge_origin_certificate(SSL* ssl);
  void keep_tls12_session(SSL* ssl, bool resumed);
  void on_forged(tls::ForgedPtr leaf);
  void refuse_client(int alert, std::string reason);
  void refuse_upstream(int alert, std::string reason, int status = 502);
  void drive_client_handshake();
  void start_relay();
  std::unique_ptr<Relay> make_relay();
  std::unique_ptr<Relay> make_plain_h1_relay();
  http::IcapOptions icap_options();

  // Relay.
  void on_leg_data(Leg& from, const char* data, std::size_t n);
  void pump(Leg& from);
  void on_leg_eof(Leg& from);
  void end_of_input(Leg& from, bool clean);
  void schedule_trim();
  void trim_leg(Leg& leg);
  void release_tls_buffers(Leg& leg);
  void drop_bio_capacity(Leg& leg, bool read);
  void maybe_finish();
  Leg& leg_of(Side s) { return s == Side::client ? client_ : upstream_; }
  Leg& opposite(Leg& l) { return &l == &client_ ? upstream_ : client_; }
  Side side_of(const Leg& l) const { return &l == &client_ ? Side::client : Side::upstream; }
  std::size_t pending_out(const Leg& leg) const;
  void on_write_done(Leg& leg, int status);

  // I/O helpers.
  void start_reading(Leg& leg);
  void stop_reading(Leg& leg);
  void flush(Leg& leg);
  bool write_plain(Leg& leg, std::span<const char> data);
  bool write_batched_plain(Leg& leg);
  void send_raw(Leg& leg, const char* data, std::size_t n);
  void respond_error(int status, const char* phrase, std::string body, std::string reason,
                     std::string_view extra_headers = {});
  void shutdown_write(Leg& leg);

  // Timers and teardown.
  void arm_timer(std::chrono::milliseconds ms);
  void on_timer();
  void close(std::string reason);
  void close_handles(bool force);
  void log_connection();
  void record_metrics();
  void set_action(const char* action);

  bool keylog_selected() const;
  void start_hooks();
  void pause_for_hooks();
  void resume_after_hooks();

  static void alloc_cb(uv_handle_t* h, std::size_t suggested, uv_buf_t* buf);
  static void read_cb(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);
  static void close_cb(uv_handle_t* h);

  SessionHost& host_;
  const ProxyContext& ctx_;
  std::uint64_t id_;
  unsigned worker_;
  State state_ = State::reading_request;
  int open_handles_ = 0;
  bool fatal_ = false;  // closing without draining

  Leg client_;
  Leg upstream_;
  std::unique_ptr<Relay> relay_;
  uv_timer_t timer_{};
  bool timer_initialized_ = false;
  uv_connect_t connect_req_{};
  std::uint64_t idle_since_ = 0;

  std::string inbuf_;  // request head, then ClientHello bytes
  net::ProxyRequest request_;
  tls::ClientHelloInfo hello_;
  std::string client_addr_;
  std::string client_ip_;
  bool static_ = false;       // static or transparent listener: no CONNECT, no HTTP answers
  bool transparent_ = false;  // redirect/tproxy listener: original destination, protocol sniffing
  ListenerInfo listener_;
  bool have_original_dst_ = false;
  sockaddr_storage original_dst_{};
  std::shared_ptr<const policy::Policy> policy_;  // snapshot taken at the first decision
  std::string policy_rule_;                       // "name (file:line)" or "default"
  std::optional<tls::OnInvalid> rule_on_invalid_;
  bool rule_auto_bypass_ = true;
  bool auto_bypassed_ = false;
  unsigned pinned_failures_ = 0;        // this connection's count toward auto-bypass (0: none)
  const char* pinned_alert_ = nullptr;  // the certificate alert the client sent, if any
  std::string upstream_addr_;
  sockaddr_storage client_sa_{};              // the client as logged (PROXY header's word included)
  const policy::Rule* rule_ = nullptr;        // the rule that decided; lives as long as policy_
  std::unique_ptr<hooks::StreamTap> tap_;     // inspected connections with stream consumers
  bool hooks_paused_ = false;                 // a blocking hook consumer is over its limit
  bool archived_ = false;                     // exchanges go to the compliance archive
  bool archive_paused_ = false;               // the archive's queue is over its limit
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);  // weak-checked by hook callbacks

  std::unique_ptr<addrinfo, void (*)(addrinfo*)> addrs_{nullptr, uv_freeaddrinfo};
  addrinfo* next_addr_ = nullptr;
  std::string last_connect_error_;
  std::string refused_destination_;  // why the last refused address was (access.deny_destinations)

  tls::UpstreamVerifyState verify_;
  std::string verdict_ = "not-checked";
  std::string verdict_reason_;
  bool untrusted_ = false;
  tls::ForgedPtr leaf_;
  std::string cache_key_;
  std::string cache_result_;
  int refuse_alert_ = 0;
  std::optional<http::Refusal> refusal_;  // answering with error pages
  std::string upstream_alpn_;
  std::string resume_key_;   // upstream session cache key, empty: no resumption
  bool upstream_resumed_ = false;
  // Idle memory is given back once both legs were quiet this long.
  static constexpr std::uint64_t kTrimAfterMs = 20;
  static constexpr std::size_t kRecordPlaintext = 16 * 1024;  // one full TLS record
  static constexpr std::size_t kCoalesceBelow = 4 * 1024;     // smaller sends wait in plain_out
  bool trim_pending_ = false;  // relaying, buffers may be held: on_timer trims
  bool client_ticket_refused_ = false;  // a valid ticket for another certificate was offered
  // Origin connection reuse: the key under which this connection's origin
  // leg may be parked (empty: never), whether the connect waits for the
  // ClientHello because one may fit, a connect made after it, and what a
  // reused or parked origin connection was.
  std::string pool_key_;
  bool reuse_wanted_ = false;
  bool late_connect_ = false;
  LateNext late_next_ = LateNext::upstream_tls;
  bool park_pending_ = false;  // the client leg was ended: park once the pump returns
  bool upstream_reused_ = false;
  bool upstream_parked_ = false;
  std::uint64_t upstream_uses_ = 1;  // client connections the origin connection served
  // upstream.release_idle: the origin leg went back to the pool while the
  // client idles (released) or is being taken again (reattaching); the
  // plaintext that arrived meanwhile waits in held_request_.
  bool origin_released_ = false;
  bool reattaching_ = false;
  unsigned releases_ = 0;
  unsigned reattaches_ = 0;
  bool reattach_failed_ = false;
  std::string held_request_;
  // The first origin connection's timings and resumption, for the log line
  // (a reattachment's connect and handshake would overwrite them).
  struct FirstUpstream {
    std::uint64_t connect_start, resolved, connected, hs_start, hs_done;
    bool resumed;
    std::string addr, verdict, verdict_reason;
  };
  FirstUpstream first_upstream_{};
  // Each leg's TLS facts for the log, taken when its handshake completes:
  // later the SSL may be back "in init" after an unclean close, mid-way
  // through a post-handshake message, or parked.
  TlsFacts client_tls_, upstream_tls_;
  bool upstream_tls_error_ = false;

  // Timestamps (uv_hrtime, ns).
  std::uint64_t t_accept_ = 0, t_connect_start_ = 0, t_resolved_ = 0, t_connected_ = 0, t_hello_ = 0,
                t_upstream_hs_start_ = 0, t_upstream_hs_done_ = 0, t_forge_start_ = 0,
                t_forge_done_ = 0, t_client_hs_done_ = 0;
  std::string close_reason_;
  core::FailureCause cause_ = core::FailureCause::none;
  net::ConnectionLimits::Slot limit_slot_;  // held from admission to close
  // An explicit listener's client refused at admission: answered after its request head.
  struct AdmissionRefusal {
    int status;
    std::string reason;
  };
  std::optional<AdmissionRefusal> admission_refusal_;
  std::uint64_t plain_bytes_to_client_ = 0;  // plain HTTP: bytes sent to the client
  std::string codec_;  // "http/1.1", "h2", "opaque" once relaying
  std::string action_ = "none";  // until a decision is made
  int http_status_ = 0;

  // Identity: the files' snapshot taken when the client was identified.
  std::shared_ptr<const identity::Directory> directory_;
  std::string user_;                  // empty: unknown
  std::vector<std::string> groups_;
  std::optional<metrics::AuthResult> auth_;  // Proxy-Authorization checked: the (last) outcome
  identity::AuthCache::Key auth_digest_{};   // SHA-256 of the header value that authenticated
  bool auth_plain_ = false;                  // the check in progress is for a plain-HTTP request
};

}  // namespace sightline::proxy
