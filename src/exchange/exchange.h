// The exchange-event feed: every HTTP exchange that crosses the proxy, in
// either protocol, reported as one ordered stream of events. It is the single
// source for inspection hooks, the compliance archive and HTTP metrics.
//
// Events for one exchange always arrive in this order, on the worker thread
// that owns the connection:
//   request_head, request_body*, request_end,
//   response_head (1xx heads may precede the final one), response_body*,
//   response_end
// or, at any point after request_head, abort (and nothing after it).
// Request and response events may interleave (a server can answer before
// the request body ends). Bodies stream through: no consumer sees a whole
// body unless it buffers one itself, with its own cap.
//
// Consumers must not block: they run on an event loop. A consumer that needs
// to do slow work (disk, network) queues it elsewhere (the hook bus does).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sightline::exchange {

using Clock = std::chrono::steady_clock;

struct Header {
  std::string name;
  std::string value;
};
using Headers = std::vector<Header>;

// Connection facts shared by all exchanges on one client connection.
struct ConnectionInfo {
  std::uint64_t id = 0;     // worker index in the top 8 bits, then a per-worker count
  unsigned worker = 0;
  std::string client;       // "addr:port"
  std::string server;       // upstream "addr:port"
  std::string target;       // CONNECT target or absolute-form authority
  std::string sni;
  std::string client_tls;   // "TLSv1.3 TLS_AES_128_GCM_SHA256", empty for plain HTTP
  std::string upstream_tls;
  std::string alpn;         // "h2", "http/1.1", empty
  std::string rule;         // policy rule that matched, empty for the default
  // Who the client is (issue 9 identity): from Proxy-Authorization in
  // explicit mode, the user map in transparent mode; empty when unknown.
  std::string user;
  std::vector<std::string> groups;
  // Compliance archive (issue 9): this connection's exchanges are archived;
  // the origin certificate's SHA-256 (hex) and verification verdict go into
  // each archived exchange's metadata.
  bool archive = false;
  std::string upstream_cert_sha256;
  std::string upstream_verdict;
  // That rule's `hooks` option (hook consumers for this connection's
  // exchanges); absent: every consumer.
  std::optional<std::vector<std::string>> hooks;
};

// A protocol-neutral request or response head. HTTP/2 pseudo-headers are
// mapped to the fields; `headers` holds the regular fields only.
struct Head {
  std::string method;     // requests
  std::string scheme;     // requests: "https", "http"
  std::string authority;  // requests: host[:port]
  std::string target;     // requests: path and query (origin-form), or the
                          // absolute/authority form as sent
  int status = 0;         // responses
  std::string reason;     // responses, HTTP/1 only
  std::string version;    // "HTTP/1.1", "HTTP/1.0", "HTTP/2"
  Headers headers;
};

// Latency the proxy itself adds to an exchange, for metrics: how long each
// head was held between its arrival (complete) and its forwarding.
struct Timing {
  Clock::time_point request_head_in{};
  Clock::time_point request_head_out{};
  Clock::time_point response_head_in{};
  Clock::time_point response_head_out{};
  Clock::time_point end{};
};

// One exchange's identity and summary, kept up to date by the codec, so
// consumers can stay stateless (several worker threads call them at once).
struct Exchange {
  std::uint64_t id = 0;  // unique in the process: see next_exchange_id()
  std::shared_ptr<const ConnectionInfo> connection;
  std::uint32_t stream = 0;  // HTTP/2 stream id, 0 for HTTP/1
  std::string protocol;      // "HTTP/1.1", "HTTP/1.0", "HTTP/2"
  std::string method;
  std::string authority;
  std::string target;
  int status = 0;            // final status once the response head arrived
  Timing timing;
  std::uint64_t request_body_bytes = 0;
  std::uint64_t response_body_bytes = 0;
  // ICAP adaptation of each message: empty when it was not sent to ICAP,
  // else the combined verdict of its chain of services: "unchanged",
  // "modified", "respond", "error" (a fail-closed service failed, or a
  // fail-open one failed and none changed the message), "too-large" or
  // "skipped" (passed unadapted: body over the cap, plain HTTP through the
  // explicit proxy); the round trip in milliseconds (-1 when none).
  std::string icap_reqmod, icap_respmod;
  double icap_reqmod_ms = -1, icap_respmod_ms = -1;
};

// Exchange ids: the worker index in the top 8 bits, then a count kept by
// that worker's thread, so ids are unique without a shared counter.
inline std::uint64_t next_exchange_id(unsigned worker) {
  thread_local std::uint64_t count = 0;
  return (static_cast<std::uint64_t>(worker) << 56) | ++count;
}

enum class Direction { request, response };

class Consumer {
 public:
  virtual ~Consumer() = default;
  virtual void on_request_head(const Exchange& ex, const Head& head) = 0;
  virtual void on_body(const Exchange& ex, Direction dir, std::span<const char> data) = 0;
  virtual void on_request_end(const Exchange& ex, const Headers& trailers) = 0;
  // Called for every response head, informational (1xx) ones included.
  virtual void on_response_head(const Exchange& ex, const Head& head) = 0;
  virtual void on_response_end(const Exchange& ex, const Headers& trailers) = 0;
  virtual void on_abort(const Exchange& ex, std::string_view reason) = 0;
  // Whether this consumer reads the header fields of heads (Head::headers)
  // on `connection`'s exchanges: when none does, codecs pass heads with the
  // request line or status only and skip copying every field.
  virtual bool wants_headers(const ConnectionInfo& /*connection*/) const { return true; }
};

// Ignores everything: the default when nothing subscribes.
class NullConsumer final : public Consumer {
 public:
  bool wants_headers(const ConnectionInfo&) const override { return false; }
  void on_request_head(const Exchange&, const Head&) override {}
  void on_body(const Exchange&, Direction, std::span<const char>) override {}
  void on_request_end(const Exchange&, const Headers&) override {}
  void on_response_head(const Exchange&, const Head&) override {}
  void on_response_end(const Exchange&, const Headers&) override {}
  void on_abort(const Exchange&, std::string_view) override {}
};

// Fans events out to several consumers in registration order.
class Fanout final : public Consumer {
 public:
  void add(std::shared_ptr<Consumer> c) { consumers_.push_back(std::move(c)); }
  bool empty() const { return consumers_.empty(); }

  void on_request_head(const Exchange& ex, const Head& head) override {
    for (auto& c : consumers_) c->on_request_head(ex, head);
  }
  void on_body(const Exchange& ex, Direction dir, std::span<const char> data) override {
    for (auto& c : consumers_) c->on_body(ex, dir, data);
  }
  void on_request_end(const Exchange& ex, const Headers& trailers) override {
    for (auto& c : consumers_) c->on_request_end(ex, trailers);
  }
  void on_response_head(const Exchange& ex, const Head& head) override {
    for (auto& c : consumers_) c->on_response_head(ex, head);
  }
  void on_response_end(const Exchange& ex, const Headers& trailers) override {
    for (auto& c : consumers_) c->on_response_end(ex, trailers);
  }
  void on_abort(const Exchange& ex, std::string_view reason) override {
    for (auto& c : consumers_) c->on_abort(ex, reason);
  }
  bool wants_headers(const ConnectionInfo& connection) const override {
    for (const auto& c : consumers_)
      if (c->wants_headers(connection)) return true;
    return false;
  }

 private:
  std::vector<std::shared_ptr<Consumer>> consumers_;
};

}  // namespace sightline::exchange
