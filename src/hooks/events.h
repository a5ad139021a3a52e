// What inspection hooks receive. Workers publish these to the hook bus
// (hooks/bus.h); each consumer (a Sink) handles them on its own thread, so a
// slow consumer never runs on an event loop.
//
// Three kinds: stream events (the plaintext of inspected connections, for
// PCAP), exchange records (one per HTTP exchange, for the JSON event feed)
// and connection records (one per connection at its close). A consumer says
// which it wants (Sink::wants()), so workers build only what someone reads.
#pragma once

#include "exchange/exchange.h"

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace sightline::hooks {

using WallClock = std::chrono::system_clock;

// One intercepted connection as its two ends saw it: the client's address and
// the server address the client was trying to reach (the upstream's resolved
// address in explicit mode, the original destination in transparent mode).
struct FlowInfo {
  std::uint64_t conn_id = 0;
  sockaddr_storage client{};
  sockaddr_storage server{};
  std::string sni;        // may be empty
  std::string rule;       // policy rule that matched, may be empty
};

enum class StreamKind : std::uint8_t { open, data, close };
enum class FlowDir : std::uint8_t { to_server, to_client };

// Plaintext of one intercepted connection, in order per connection: one open,
// data in each direction as it was decrypted, one close.
struct StreamEvent {
  StreamKind kind = StreamKind::data;
  FlowDir dir = FlowDir::to_server;  // data only
  bool clean = true;                 // close: ended with FIN (true) or abort (false)
  WallClock::time_point ts{};
  std::shared_ptr<const FlowInfo> flow;
  std::string bytes;                 // data only
};

// One HTTP exchange, published when it ends (response complete or aborted).
// Built by ExchangeTap (hooks/exchange_tap.h) from the exchange feed.
struct ExchangeRecord {
  std::uint64_t id = 0;
  std::shared_ptr<const exchange::ConnectionInfo> connection;  // never null
  std::uint32_t stream = 0;   // HTTP/2 stream id, 0 for HTTP/1
  std::string protocol;       // "HTTP/1.1", "HTTP/1.0", "HTTP/2"
  exchange::Head request;     // as received from the client
  bool has_response = false;  // a final response head arrived
  exchange::Head response;    // the final (non-1xx) head, if any
  std::uint64_t request_body_bytes = 0;
  std::uint64_t response_body_bytes = 0;
  // The first bytes of each body, up to the largest body cap any consumer
  // asked for; empty when nobody did. Shorter than the byte count: truncated.
  bool bodies_captured = false;
  std::string request_body;
  std::string response_body;
  WallClock::time_point start{};    // request head complete
  WallClock::time_point end{};      // response end or abort
  double request_held_us = -1;      // proxy-added latency per head; -1: n/a
  double response_held_us = -1;
  bool complete = false;            // false: aborted
  std::string abort_reason;
  // ICAP per message (see exchange::Exchange): outcome, round trip in ms.
  std::string icap_reqmod, icap_respmod;
  double icap_reqmod_ms = -1, icap_respmod_ms = -1;
};

// TLS as negotiated on one leg; empty version: no TLS on that leg.
struct TlsDetails {
  std::string version;
  std::string cipher;
  std::string alpn;
};

// One connection, published when it closes: the facts of the "connection"
// log line (see proxy/session.cc) for every action, bypass and block included.
struct ConnectionRecord {
  WallClock::time_point ts{};  // close time
  std::uint64_t id = 0;
  std::string client;          // "addr:port"
  std::string target;          // CONNECT / static target "host:port", may be empty
  std::string server;          // upstream "addr:port" connected to, may be empty
  std::string sni;
  std::string action;          // intercept, bypass, splice, http, refuse, reject
  std::string policy;          // "rule 'name' (file:line)" or "default inspect"
  std::string rule;            // the rule's name alone, empty for the default
  std::string user;            // identity (issue 9); empty: unknown
  std::vector<std::string> groups;
  TlsDetails client_tls, upstream_tls;
  std::string upstream_verdict, upstream_reason;
  std::string codec;           // h2, http/1.1, opaque, empty
  int status = 0;              // error page / refusal status, 0: none
  std::uint64_t bytes_client_to_server = 0;
  std::uint64_t bytes_server_to_client = 0;
  double upstream_connect_ms = -1, upstream_handshake_ms = -1, forge_ms = -1,
         client_handshake_ms = -1, total_ms = -1;
  std::string close_reason;
  bool auto_bypass = false;
};

// What a consumer wants delivered; the bus builds nothing else for it.
struct Wants {
  bool streams = true;
  bool exchanges = false;
  bool connections = false;
  std::size_t body_cap = 0;  // exchanges: capture each body's first bytes up to this
};

// A consumer of hook events. All calls come from the consumer's own thread
// (never concurrently); it may block on disk or network there.
class Sink {
 public:
  virtual ~Sink() = default;
  virtual std::string_view name() const = 0;
  // Asked once, when the consumer is added to the bus.
  virtual Wants wants() const { return {}; }
  virtual void on_stream(const StreamEvent& ev) = 0;
  virtual void on_exchange(const ExchangeRecord& rec) { (void)rec; }
  virtual void on_connection(const ConnectionRecord& rec) { (void)rec; }
  // At least once a second, and when the queue is idle: time-based rotation,
  // flushing, housekeeping.
  virtual void on_tick(WallClock::time_point now) { (void)now; }
  // Last call, after every queued event: flush and close.
  virtual void on_stop() {}
};

}  // namespace sightline::hooks
