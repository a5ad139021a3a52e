// HTTP/1.1 between an intercepted client and its origin: both directions go
// through the strict parser, validated bytes are forwarded as they arrive
// (heads unchanged, bodies streamed), and every exchange is reported to the
// exchange-event consumer. Requests that the parser rejects (smuggling
// attempts included) never reach the origin; the client gets an error
// response and the connection ends.
#pragma once

#include "exchange/exchange.h"
#include "http/h1_parser.h"
#include "http/relay.h"

#include <deque>
#include <memory>
#include <string>

namespace sightline::http {

class H1Relay final : public Relay {
 public:
  H1Relay(RelayIo& io, exchange::Consumer& consumer,
          std::shared_ptr<const exchange::ConnectionInfo> connection, H1Limits limits,
          std::optional<Refusal> refusal = std::nullopt);
  ~H1Relay() override;

  void on_data(Side from, std::span<const char> data) override;
  void on_end(Side from, bool clean) override;

 private:
  struct State;  // one exchange in flight
  class RequestHandler;
  class ResponseHandler;

  void request_failed(const H1Parser::Error& err);
  void response_failed(std::string reason);
  void abort_all(std::string_view reason);
  void answer_and_close(int status, std::string_view reason);

  RelayIo& io_;
  exchange::Consumer& consumer_;
  std::shared_ptr<const exchange::ConnectionInfo> connection_;
  std::unique_ptr<RequestHandler> req_handler_;
  std::unique_ptr<ResponseHandler> resp_handler_;
  H1Parser requests_;
  H1Parser responses_;
  std::deque<std::shared_ptr<State>> awaiting_response_;  // in request order
  std::shared_ptr<State> current_request_;                // request being received
  std::optional<Refusal> refusal_;
  bool tunnel_ = false;
  bool closing_ = false;
  // A request error that must wait for earlier responses (pipelining order).
  int deferred_status_ = 0;
  std::string deferred_reason_;
};

// Converts a parsed HTTP/1 head into the protocol-neutral event head.
exchange::Head to_event_head(const MessageHead& head, bool request);

}  // namespace sightline::http
