// Plain HTTP through the explicit proxy: absolute-form requests
// ("GET http://host/path HTTP/1.1") are parsed with the strict HTTP/1.1
// parser, rewritten to origin form with hop-by-hop headers removed and Via
// added (RFC 9110 §7.6), and sent over a per-worker pool of origin
// connections. The client connection stays open between requests
// (keep-alive); each exchange feeds the exchange-event consumers like
// intercepted HTTPS does.
#pragma once

#include "exchange/exchange.h"
#include "http/h1_parser.h"
#include "http/relay.h"
#include "net/address.h"
#include "net/upstream_conn.h"

#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <vector>
#include <string>

namespace sightline::proxy {

struct PlainHttpSettings {
  http::H1Limits limits;
  std::chrono::milliseconds connect_timeout{10'000};
  std::size_t high_watermark = 256 * 1024;
  std::string via;  // pseudonym for the Via header; empty: no Via
  // What the policy says about one request's origin (each request of the
  // connection may go elsewhere).
  struct RequestPolicy {
    std::string block;  // non-empty: refuse with `status` and this reason
    int status = 403;
    // The rule that decided (for this request's exchange), its hook
    // selection, and whether the exchange is archived.
    std::string rule;
    std::optional<std::vector<std::string>> hooks;
    bool archive = false;
    std::string challenge;  // with `block`: 407 with this Proxy-Authenticate value instead
    // ICAP services apply, but this path cannot hold messages for them
    // (docs/icap.md): `refuse` (a fail-closed service applies: nothing
    // uninspected may pass) answers 403; `skip` relays unadapted and calls
    // on_icap_skip.
    enum class Icap { none, skip, refuse } icap = Icap::none;
    bool icap_reqmod = false, icap_respmod = false;  // which methods apply
  };
  // `proxy_authorization`: the request's header value, empty when absent.
  std::function<RequestPolicy(const net::HostPort& origin, std::string_view proxy_authorization)>
      decide;  // absent: allow all
  std::function<void()> on_icap_skip;
  const net::DestinationCheck* destinations = nullptr;  // addresses never connected to
};

class PlainHttpProxy final : public http::Relay, public net::UpstreamConn::Owner {
 public:
  PlainHttpProxy(http::RelayIo& io, exchange::Consumer& consumer,
                 std::shared_ptr<const exchange::ConnectionInfo> connection,
                 PlainHttpSettings settings, net::UpstreamPool& pool, uv_loop_t* loop,
                 std::span<char> read_buffer);
  ~PlainHttpProxy() override;

  void on_data(http::Side from, std::span<const char> data) override;
  void on_end(http::Side from, bool clean) override;
  void on_writable(http::Side to) override;
  bool awaiting_origin() const override;

  void on_upstream_connected(net::UpstreamConn& c, int status, const std::string& error) override;
  void on_upstream_data(net::UpstreamConn& c, std::span<const char> data) override;
  void on_upstream_closed(net::UpstreamConn& c, const std::string& reason) override;
  void on_upstream_drained(net::UpstreamConn& c) override;

 private:
  struct Ex;
  class RequestHandler;
  class ResponseHandler;

  bool select_upstream(const std::string& host, std::uint16_t port);
  void release_upstream(bool reusable);
  void send_upstream(std::span<const char> data);
  void answer(int status, const std::string& reason, bool close_after, std::string_view extra_headers = {});
  void finish_exchange();
  void maybe_end_client();

  http::RelayIo& io_;
  exchange::Consumer& consumer_;
  std::shared_ptr<const exchange::ConnectionInfo> connection_;
  PlainHttpSettings settings_;
  net::UpstreamPool& pool_;
  uv_loop_t* loop_;
  std::span<char> read_buffer_;

  std::unique_ptr<RequestHandler> req_handler_;
  std::unique_ptr<ResponseHandler> resp_handler_;
  http::H1Parser requests_;
  std::unique_ptr<http::H1Parser> responses_;  // one per origin connection
  std::shared_ptr<net::UpstreamConn> up_;
  std::string outbox_;  // request bytes waiting for the connection
  std::deque<std::shared_ptr<Ex>> awaiting_;  // requests sent or being sent, in order
  std::shared_ptr<Ex> current_request_;
  bool skip_request_head_ = false;   // next on_forward is the raw head we rewrote
  bool skip_response_head_ = false;
  bool client_eof_ = false;
  bool ending_ = false;
  bool upstream_reusable_ = true;
};

}  // namespace sightline::proxy
