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
#include <functional>
#include <memory>
#include <string>

namespace sightline::http {

class H1Relay final : public Relay {
 public:
  // `keep_origin`: the origin connection may outlive the client's
  // (upstream.reuse). A client's "Connection: close" then applies to the
  // client leg only (it is a hop-by-hop option, RFC 9110 7.6.1): the
  // request goes to the origin without it, the response comes back with
  // it, and the proxy ends the client leg after that response.
  H1Relay(RelayIo& io, exchange::Consumer& consumer,
          std::shared_ptr<const exchange::ConnectionInfo> connection, H1Limits limits,
          std::optional<Refusal> refusal = std::nullopt, IcapOptions icap = {},
          bool keep_origin = false);
  ~H1Relay() override;

  void on_data(Side from, std::span<const char> data) override;
  void on_end(Side from, bool clean) override;
  bool origin_idle() const override;
  bool awaiting_origin() const override;
  void trim() override {
    requests_.trim();
    responses_.trim();
  }
  void rebind_connection(std::shared_ptr<const exchange::ConnectionInfo> info) override {
    connection_ = std::move(info);
    headers_wanted_ = consumer_.wants_headers(*connection_);
  }

 private:
  struct State;  // one exchange in flight
  class RequestHandler;
  class ResponseHandler;

  // Output toward one side: ready bytes and messages held for ICAP, in order.
  struct Segment {
    std::string data;
    bool ready = true;
    bool end_after = false;  // end that side once this is sent
    bool end_clean = true;
    bool dropped = false;    // the queue was discarded: a late verdict is ignored
  };
  struct OutQueue {
    std::deque<std::shared_ptr<Segment>> segs;
    std::size_t bytes = 0;
    bool paused_source = false;
  };
  // A message being received while it is held for ICAP.
  struct Hold {
    std::shared_ptr<Segment> seg;
    std::shared_ptr<State> st;
    MessageHead head;
    std::string body;
    bool active = false;
  };

  OutQueue& out(Side to) { return out_[to == Side::client ? 0 : 1]; }
  void emit(Side to, std::span<const char> data);
  void end_side(Side to, bool clean);
  void flush(Side to);
  void drop_queues();
  void start_hold(Side to, const std::shared_ptr<State>& st, const MessageHead& head);
  void hold_body(Side to, std::span<const char> data);
  void give_up_hold(Side to);
  void send_reqmod();
  void send_respmod();
  void reqmod_done(const std::shared_ptr<Segment>& seg, const std::shared_ptr<State>& st,
                   const MessageHead& orig, icap::Result r);
  void respmod_done(const std::shared_ptr<Segment>& seg, const std::shared_ptr<State>& st,
                    icap::Result r);
  void respond_instead(const std::shared_ptr<Segment>& seg, const std::shared_ptr<State>& st,
                       const exchange::Head& head, std::string response);
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
  bool keep_origin_ = false;
  bool origin_keep_alive_ = true;  // no exchange so far asked the origin to close
  bool origin_pinned_ = false;     // connection-bound authentication seen: never shared
  bool headers_wanted_ = true;     // some consumer reads head fields (exchange::Consumer::wants_headers)
  bool client_done_ = false;       // the client leg was ended after a "close" request
  bool requests_closed_ = false;   // a request with "close" was received: no more are taken
  // A request error that must wait for earlier responses (pipelining order).
  int deferred_status_ = 0;
  std::string deferred_reason_;
  // An ICAP answer (block page) that must wait for earlier responses.
  std::string deferred_answer_;
  IcapOptions icap_;
  OutQueue out_[2];  // [0] toward the client, [1] toward the origin
  Hold req_hold_, resp_hold_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  // for ICAP callbacks
};

// "HTTP/1.1 <status> <phrase>" error page with Connection: close.
std::string error_response(int status, std::string_view reason);

// Converts a parsed HTTP/1 head into the protocol-neutral event head.
// `with_headers` false: the request line or status only (no consumer reads the fields).
exchange::Head to_event_head(const MessageHead& head, bool request, bool with_headers = true);

}  // namespace sightline::http
