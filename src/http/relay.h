// What runs between the two decrypted legs of an intercepted connection.
// The session owns sockets and TLS; a Relay only sees plaintext and decides
// what goes where: bytes as they are (opaque), or HTTP exchanges (h1, h2)
// that also feed the exchange-event consumers.
#pragma once

#include "core/failure_cause.h"
#include "core/log.h"
#include "icap/icap_chain.h"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace sightline::http {

enum class Side { client, upstream };

inline Side other(Side s) { return s == Side::client ? Side::upstream : Side::client; }
inline const char* side_name(Side s) { return s == Side::client ? "client" : "upstream"; }

// The proxy answers every request itself with this status and reason (an
// error page) instead of relaying: the origin failed verification or its
// TLS handshake, and its content must never be served.
struct Refusal {
  int status = 502;
  std::string reason;
};

// ICAP adaptation of a connection's exchanges (docs/icap.md), shared by the
// HTTP/1.1 and HTTP/2 relays. A message that goes to ICAP is held (head and
// body, up to max_body) and forwarded, replaced or answered once the ICAP
// verdict arrives. HTTP/1.1 keeps what follows it in the same direction
// waiting behind it (pipelining order); HTTP/2 holds per stream only.
struct IcapOptions {
  bool reqmod = false, respmod = false;  // which adaptations apply here
  // The services of each method for this connection, in chain order
  // (icap_chain.h). A chain's combined `error` means a fail-closed service
  // failed: the relay answers with an error page.
  std::vector<icap::ChainStep> reqmod_chain, respmod_chain;
  // The worker's client for a configured service (null: unavailable).
  icap::ServiceLookup service;
  std::uint64_t max_body = 8ull << 20;  // larger bodies are relayed unadapted
  // For metrics, per service answer; both optional.
  std::function<void(const icap::ChainStep&, icap::Method, const icap::Result&)> on_result;
  std::function<void(icap::Method, bool too_large)> on_bypass;  // else: failed open

  // Sends a request (REQMOD) or a response with its request (RESPMOD)
  // through this connection's chain for the method.
  void adapt(std::uint64_t exchange_id, const exchange::Head& request,
             std::optional<exchange::Head> response, std::string body, icap::Callback done) const {
    icap::Method m = response ? icap::Method::respmod : icap::Method::reqmod;
    // Copies: the chain may outlive the relay that started it.
    auto report = [on_result = on_result, on_bypass = on_bypass, m, exchange_id](
                      const icap::ChainStep& s, const icap::Result& r) {
      if (on_result) on_result(s, m, r);
      if (r.kind != icap::Result::Kind::error) return;
      if (!s.fail_closed && on_bypass) on_bypass(m, false);
      log::emit(log::Line(log::Level::warn, "icap_error").num("exchange", exchange_id)
                    .str("service", s.name).str("method", icap::method_name(m)).str("msg", r.error)
                    .str("fail", s.fail_closed ? "closed" : "open"));
    };
    icap::run_chain(m == icap::Method::reqmod ? reqmod_chain : respmod_chain, service,
                    std::move(report), request, std::move(response), std::move(body), std::move(done));
  }

  // The combined verdict on the exchange (access log, event feed); `ex` is
  // null when the exchange is already gone. A skipped fail-open error shows
  // as "error" when nothing else changed the message.
  void report(exchange::Exchange* ex, icap::Method m, const icap::Result& r) const {
    if (!ex) return;
    bool req = m == icap::Method::reqmod;
    (req ? ex->icap_reqmod : ex->icap_respmod) =
        r.failed_open && r.kind == icap::Result::Kind::unchanged ? "error" : icap::kind_name(r.kind);
    (req ? ex->icap_reqmod_ms : ex->icap_respmod_ms) =
        std::chrono::duration<double, std::milli>(r.latency).count();
  }
  // A body over max_body passes unadapted.
  void report_too_large(exchange::Exchange& ex, icap::Method m) const {
    if (on_bypass) on_bypass(m, true);
    (m == icap::Method::reqmod ? ex.icap_reqmod : ex.icap_respmod) = "too-large";
    log::emit(log::Line(log::Level::info, "icap_bypass").num("exchange", ex.id)
                  .str("method", icap::method_name(m)).str("reason", "body over icap.max_body"));
  }
};

// The session's services to its relay. All calls on the session's loop.
class RelayIo {
 public:
  virtual ~RelayIo() = default;
  // Encrypts and queues plaintext toward `to`.
  virtual void send(Side to, std::span<const char> data) = 0;
  // Bytes queued toward `to` and not yet taken by the kernel.
  virtual std::size_t queued(Side to) const = 0;
  // Nothing more will be sent toward `to`: close_notify (when `clean`) and FIN.
  virtual void end(Side to, bool clean) = 0;
  // Stop reading from `from` for good (its input is no longer wanted).
  virtual void stop_reading(Side from) = 0;
  // Temporarily stop (or resume) reading from `from`: back-pressure from a
  // destination the session does not know about (plain-HTTP origins).
  virtual void pause_reading(Side from, bool paused) = 0;
  // Writes out what send() batched. Sends made from the session's own
  // callbacks are flushed by it; a relay sending from elsewhere (an ICAP
  // answer) calls this afterwards.
  virtual void flush_sends() {}
  // Tear the connection down now with `reason` (protocol error, abort).
  virtual void fail(std::string reason) = 0;
  // Records why the connection ends, for the connection log line.
  virtual void set_close_reason(std::string reason) = 0;
  // Classifies the failure ending the connection (log field and metric);
  // the first one noted wins.
  virtual void note_failure(core::FailureCause /*cause*/) {}
};

class Relay {
 public:
  virtual ~Relay() = default;
  // Plaintext that arrived from `from`.
  virtual void on_data(Side from, std::span<const char> data) = 0;
  // `from` will send nothing more; `clean` when it ended with close_notify.
  virtual void on_end(Side from, bool clean) = 0;
  // The queue toward `to` drained below the low watermark: a relay that held
  // output back (HTTP/2 DATA frames) may produce more now.
  virtual void on_writable(Side /*to*/) {}
  // The origin connection is between exchanges, nothing of it pending or
  // held, and it was never asked to close: the session may keep it for
  // another client connection (upstream.reuse).
  virtual bool origin_idle() const { return false; }
  // A request went to the origin and its response is not complete: an idle
  // timeout or a reset now is the origin's failure, not the client's.
  virtual bool awaiting_origin() const { return false; }
  // Later exchanges go over another origin connection (an idle client's
  // origin connection was released and a new one taken): their records
  // carry its facts.
  virtual void rebind_connection(std::shared_ptr<const exchange::ConnectionInfo> /*info*/) {}
  // Both legs have been quiet a while: memory kept for the next message may go.
  virtual void trim() {}
};

// Bytes pass through untouched; endings are passed on in kind.
class OpaqueRelay final : public Relay {
 public:
  explicit OpaqueRelay(RelayIo& io) : io_(io) {}
  void on_data(Side from, std::span<const char> data) override { io_.send(other(from), data); }
  void on_end(Side from, bool clean) override {
    if (!clean) io_.set_close_reason(std::string(side_name(from)) + " closed without close_notify");
    io_.end(other(from), clean);
  }

 private:
  RelayIo& io_;
};

}  // namespace sightline::http
