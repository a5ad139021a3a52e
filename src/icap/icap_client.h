// Asynchronous ICAP (RFC 3507) client on a libuv loop: one IcapService per
// `icap://host:port/service` and per worker thread (not thread-safe; every
// call and callback on the loop's thread).
//
// What a call does:
//  - on first use, and again when the cached answer's Options-TTL expired (or
//    a response carried a different ISTag), it sends OPTIONS and caches the
//    service's Methods, Preview, Transfer-* lists, Max-Connections and ISTag;
//    calls wait for that answer;
//  - Transfer-Ignore for the request path's file extension: answered
//    `unchanged` without contacting the server (Result::sent is false);
//  - a preview of the body when the service announced Preview (and
//    Transfer-Complete does not list the extension); `Allow: 204` always;
//  - it takes a pooled keep-alive connection or opens one (DNS off the loop,
//    connect timeout), at most min(config max_connections, Max-Connections)
//    connections in use or idle; beyond that calls queue (bounded);
//  - a request that fails on a reused connection before any byte of the
//    answer arrived is retried once on a fresh connection (the server may
//    have closed the idle connection as we reused it).
//
// The callback always runs later from the loop, never inside reqmod() or
// respmod(). Destroying the service drops pending callbacks (never called);
// shutdown() first to have them called with an error. A callback may destroy
// the service; callbacks still queued behind it are then dropped.
#pragma once

#include "core/uv_handle.h"
#include "exchange/exchange.h"
#include "icap/icap_message.h"
#include "net/upstream_conn.h"

#include <uv.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sightline::icap {

struct ServiceUrl {
  std::string host;  // name or IP literal (IPv6 without brackets)
  std::uint16_t port = 1344;
  std::string service;  // after the authority, without the leading '/'

  std::string uri() const;          // "icap://host:port/service" (port always written)
  std::string host_header() const;  // "host:port"
};

// Parses "icap://host[:port]/service" (port 1-65535, default 1344; IPv6 in
// brackets; the service name non-empty, visible ASCII). Returns nullopt with
// `error` set otherwise.
std::optional<ServiceUrl> parse_service_url(std::string_view url, std::string* error);

// What OPTIONS told us.
struct ServiceOptions {
  std::vector<std::string> methods;  // upper-case: "REQMOD", "RESPMOD"
  std::string istag;
  std::string service;
  std::optional<std::size_t> preview;  // bytes; nullopt: no Preview header
  bool allow_204 = false;              // the server said "Allow: 204"
  // Lower-case file extensions, or "*" for all others.
  std::vector<std::string> transfer_preview, transfer_ignore, transfer_complete;
  std::optional<std::size_t> max_connections;
  std::optional<std::chrono::seconds> ttl;  // Options-TTL

  bool supports(Method m) const;
};

// Reads a 200 answer to OPTIONS. Methods and ISTag are required (RFC 3507
// 4.10.2); a malformed Preview, Max-Connections or Options-TTL is an error.
std::optional<ServiceOptions> parse_options(const Response& r, std::string* error);

enum class Transfer { preview, complete, ignore };
// Which Transfer-* list applies to a request target's file extension (the
// last path segment's text after its last dot, query excluded): an explicit
// listing first (ignore, then complete, then preview), then "*" in the same
// order, else preview.
Transfer transfer_for(const ServiceOptions& o, std::string_view target);

struct ServiceConfig {
  ServiceUrl url;
  std::chrono::milliseconds connect_timeout{2000};  // DNS + TCP connect
  // Waiting for the server: from the request's first write until the
  // complete answer, restarted whenever bytes arrive.
  std::chrono::milliseconds response_timeout{10000};
  std::chrono::milliseconds idle_timeout{30000};  // pooled connections
  // Used when OPTIONS has no Options-TTL (RFC: valid forever; we re-ask).
  std::chrono::seconds default_options_ttl{3600};
  std::size_t max_connections = 16;  // lowered further by Max-Connections
  std::size_t max_queue = 4096;      // calls waiting for a connection
  // Bodies larger than this are not sent (error "body exceeds cap"); callers
  // check within_body_cap() first and apply their own policy instead.
  std::size_t max_body = 8 * 1024 * 1024;
  bool use_preview = true;
  bool allow_204 = true;
  Limits limits;  // for the server's answers (limits.max_body bounds the returned body)
};

struct Result {
  enum class Kind {
    unchanged,  // 204, an identical 200 echo, or Transfer-Ignore: forward the original
    modified,   // `head` and `body` replace the original message
    respond,    // REQMOD only: send `head` and `body` to the client instead (a block page)
    error,      // `error` says why: the caller fails open or closed
  };
  Kind kind = Kind::error;
  int icap_status = 0;  // 0 when nothing was received
  std::string istag;    // of the answer (falls back to the OPTIONS ISTag)
  // modified: the new request (REQMOD) or response (RESPMOD) head;
  // respond: the HTTP response. Framing fields (Content-Length,
  // Transfer-Encoding) are as the server sent them: the caller re-frames
  // from `body`.
  exchange::Head head;
  std::string body;
  bool has_body = false;  // the answer encapsulated a body (else null-body)
  std::string error;
  bool sent = false;               // a request went to the server
  bool reused_connection = false;  // on a pooled keep-alive connection
  std::chrono::steady_clock::duration latency{};  // call to result (steady clock)
  exchange::Headers icap_headers;  // the answer's ICAP fields (X-Infection-Found, ...)
  // Chains (icap_chain.h): a fail-open service failed and was skipped.
  bool failed_open = false;
};

using Callback = std::function<void(Result)>;
const char* kind_name(Result::Kind k);

class IcapService {
 public:
  struct Counters {
    std::uint64_t calls = 0;
    std::uint64_t requests_sent = 0;  // REQMOD/RESPMOD written (retries included)
    std::uint64_t options_sent = 0;
    std::uint64_t connections_opened = 0;
    std::uint64_t connections_reused = 0;
    std::uint64_t retries = 0;
    std::uint64_t errors = 0;
    std::uint64_t previews = 0;          // requests that sent a preview
    std::uint64_t continues = 0;         // 100 Continue received
  };

  IcapService(uv_loop_t* loop, ServiceConfig config);
  ~IcapService();
  IcapService(const IcapService&) = delete;
  IcapService& operator=(const IcapService&) = delete;

  // REQMOD: `req` (and its body, empty for none) for inspection.
  void reqmod(const exchange::Head& req, std::string body, Callback cb,
              exchange::Headers icap_headers = {});
  // RESPMOD: `resp` and its body; `req` is sent along for context (URL).
  void respmod(const exchange::Head& req, const exchange::Head& resp, std::string body, Callback cb,
               exchange::Headers icap_headers = {});
  // Sends OPTIONS now even if a cached answer is still valid; `done` gets an
  // empty string on success.
  void refresh_options(std::function<void(std::string error)> done);

  // The cached OPTIONS answer (possibly expired), or null.
  const ServiceOptions* options() const { return options_ ? &*options_ : nullptr; }
  // False when a body of `size` bytes is over the cap and must not be sent.
  bool within_body_cap(std::uint64_t size) const { return size <= config_.max_body; }
  // Fails every queued and running call with "ICAP client shut down" and
  // closes all connections. Later calls fail the same way.
  void shutdown();

  const ServiceConfig& config() const { return config_; }
  const Counters& counters() const { return counters_; }
  std::size_t connections_active() const { return active_.size(); }
  std::size_t connections_idle() const { return pool_.size(); }

 private:
  struct Call;
  class Transaction;
  friend class Transaction;

  void submit(std::unique_ptr<Call> call);
  void pump();
  void pump_once();
  bool options_fresh() const;
  std::size_t connection_limit() const;
  std::shared_ptr<net::UpstreamConn> acquire(bool& reused);
  void finished(Transaction& t, std::shared_ptr<net::UpstreamConn> reusable);
  void options_done(std::optional<ServiceOptions> opts, std::string error);
  void deliver(std::unique_ptr<Call> call, Result r);
  void fail_waiting(const std::string& error);
  void run_deferred_soon();
  void run_deferred();

  uv_loop_t* loop_;
  ServiceConfig config_;
  Counters counters_;
  std::vector<char> read_buffer_;
  net::UpstreamPool pool_;
  std::deque<std::unique_ptr<Call>> waiting_;
  std::vector<std::unique_ptr<Transaction>> active_;
  std::vector<std::unique_ptr<Transaction>> finished_;  // freed from a clean stack
  std::optional<ServiceOptions> options_;
  std::chrono::steady_clock::time_point options_expiry_{};
  bool options_pending_ = false;
  std::vector<std::function<void(std::string)>> options_waiters_;
  std::vector<std::function<void()>> deferred_;
  core::UvHandle<uv_timer_t> defer_timer_;
  std::shared_ptr<bool> alive_;
  bool shut_down_ = false;
  bool pumping_ = false;
  bool repump_ = false;
};

}  // namespace sightline::icap
