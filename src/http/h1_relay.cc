#include "http/h1_relay.h"

#include <algorithm>
#include <chrono>

namespace sightline::http {

using exchange::Clock;

struct H1Relay::State {
  exchange::Exchange ex;
  bool request_done = false;
  bool response_head_forwarded = false;
  bool awaiting_head_forward = false;  // on_forward for the head comes next
};

exchange::Head to_event_head(const MessageHead& head, bool request) {
  exchange::Head out;
  out.version = head.version_minor == 0 ? "HTTP/1.0" : "HTTP/1.1";
  if (request) {
    out.method = head.method;
    out.target = head.target;
    out.scheme = "https";
    if (const std::string* host = head.find("host")) out.authority = *host;
  } else {
    out.status = head.status;
    out.reason = head.reason;
  }
  out.headers.reserve(head.headers.size());
  for (const auto& h : head.headers) out.headers.push_back({h.name, h.value});
  return out;
}

namespace {
exchange::Headers to_event_headers(const HeaderList& list) {
  exchange::Headers out;
  out.reserve(list.size());
  for (const auto& h : list) out.push_back({h.name, h.value});
  return out;
}
}  // namespace

class H1Relay::RequestHandler final : public H1Parser::Handler {
 public:
  explicit RequestHandler(H1Relay& r) : r_(r) {}

  void on_head(const MessageHead& head, Framing, std::uint64_t, std::string_view) override {
    auto st = std::make_shared<State>();
    st->ex.id = exchange::next_exchange_id(r_.connection_->worker);
    st->ex.connection = r_.connection_;
    st->ex.timing.request_head_in = Clock::now();
    st->awaiting_head_forward = true;
    r_.responses_.expect_response_to(head.method);
    exchange::Head ev = to_event_head(head, true);
    st->ex.protocol = ev.version;
    st->ex.method = ev.method;
    st->ex.authority = ev.authority;
    st->ex.target = ev.target;
    r_.current_request_ = st;
    r_.awaiting_response_.push_back(st);
    r_.consumer_.on_request_head(st->ex, ev);
    if (r_.refusal_) r_.answer_and_close(r_.refusal_->status, r_.refusal_->reason);
  }
  void on_body(std::span<const char> data) override {
    if (!r_.current_request_) return;
    r_.current_request_->ex.request_body_bytes += data.size();
    r_.consumer_.on_body(r_.current_request_->ex, exchange::Direction::request, data);
  }
  void on_forward(std::span<const char> wire) override {
    if (r_.closing_) return;
    r_.io_.send(Side::upstream, wire);
    if (r_.current_request_ && r_.current_request_->awaiting_head_forward) {
      r_.current_request_->awaiting_head_forward = false;
      r_.current_request_->ex.timing.request_head_out = Clock::now();
    }
  }
  void on_trailers(const HeaderList& trailers) override { trailers_ = to_event_headers(trailers); }
  void on_message_end() override {
    if (!r_.current_request_) return;
    r_.current_request_->request_done = true;
    r_.consumer_.on_request_end(r_.current_request_->ex, trailers_);
    trailers_.clear();
    r_.current_request_.reset();
  }

 private:
  H1Relay& r_;
  exchange::Headers trailers_;
};

class H1Relay::ResponseHandler final : public H1Parser::Handler {
 public:
  explicit ResponseHandler(H1Relay& r) : r_(r) {}

  void on_head(const MessageHead& head, Framing framing, std::uint64_t, std::string_view) override {
    if (r_.awaiting_response_.empty()) {
      unsolicited_ = true;  // answered below, once the head is known to be whole
      return;
    }
    State& st = *r_.awaiting_response_.front();
    informational_ = head.status < 200 && head.status != 101;
    if (!informational_) {
      st.ex.timing.response_head_in = Clock::now();
      st.ex.status = head.status;
    }
    st.awaiting_head_forward = !informational_;
    r_.consumer_.on_response_head(st.ex, to_event_head(head, false));
    if (framing == Framing::tunnel) r_.tunnel_ = true;
  }
  void on_body(std::span<const char> data) override {
    if (r_.awaiting_response_.empty()) return;
    State& st = *r_.awaiting_response_.front();
    st.ex.response_body_bytes += data.size();
    r_.consumer_.on_body(st.ex, exchange::Direction::response, data);
  }
  void on_forward(std::span<const char> wire) override {
    if (unsolicited_) {
      unsolicited_ = false;
      r_.response_failed("origin sent a response to no request");
      return;
    }
    r_.io_.send(Side::client, wire);
    if (r_.awaiting_response_.empty()) return;
    State& st = *r_.awaiting_response_.front();
    if (st.awaiting_head_forward) {
      st.awaiting_head_forward = false;
      st.response_head_forwarded = true;
      st.ex.timing.response_head_out = Clock::now();
      // After 101 or a 2xx to CONNECT the exchange is over; what follows is
      // an opaque stream.
      if (r_.tunnel_) finish_front();
    }
  }
  void on_trailers(const HeaderList& trailers) override { trailers_ = to_event_headers(trailers); }
  void on_message_end() override {
    if (r_.awaiting_response_.empty()) return;
    if (informational_) {
      informational_ = false;  // the final response to the same request follows
      return;
    }
    finish_front();
  }

 private:
  void finish_front() {
    auto st = r_.awaiting_response_.front();
    r_.awaiting_response_.pop_front();
    st->ex.timing.end = Clock::now();
    r_.consumer_.on_response_end(st->ex, trailers_);
    trailers_.clear();
    if (r_.awaiting_response_.empty() && r_.deferred_status_ != 0)
      r_.answer_and_close(r_.deferred_status_, r_.deferred_reason_);
  }

  H1Relay& r_;
  exchange::Headers trailers_;
  bool unsolicited_ = false;
  bool informational_ = false;
};

H1Relay::H1Relay(RelayIo& io, exchange::Consumer& consumer,
                 std::shared_ptr<const exchange::ConnectionInfo> connection, H1Limits limits,
                 std::optional<Refusal> refusal)
    : io_(io),
      consumer_(consumer),
      connection_(std::move(connection)),
      req_handler_(std::make_unique<RequestHandler>(*this)),
      resp_handler_(std::make_unique<ResponseHandler>(*this)),
      requests_(H1Parser::Kind::request, *req_handler_, limits),
      responses_(H1Parser::Kind::response, *resp_handler_, limits),
      refusal_(std::move(refusal)) {}

// Exchanges still open when the connection goes are aborted, so every
// request_head has its ending.
H1Relay::~H1Relay() {
  if (current_request_ &&
      std::find(awaiting_response_.begin(), awaiting_response_.end(), current_request_) ==
          awaiting_response_.end())
    consumer_.on_abort(current_request_->ex, "connection closed");
  abort_all("connection closed");
}

void H1Relay::on_data(Side from, std::span<const char> data) {
  if (closing_) return;
  if (from == Side::client) {
    if (tunnel_) {
      io_.send(Side::upstream, data);
      return;
    }
    if (!requests_.feed(data)) request_failed(requests_.error());
  } else {
    if (!responses_.feed(data)) response_failed(responses_.error().reason);
  }
}

void H1Relay::on_end(Side from, bool clean) {
  if (closing_) return;
  if (from == Side::client && refusal_) {
    // No origin to wait for: the proxy answers, so it also ends the client.
    io_.end(Side::client, clean);
    return;
  }
  if (from == Side::client) {
    if (!tunnel_ && !requests_.finish()) {
      if (current_request_) consumer_.on_abort(current_request_->ex, "client closed mid-request");
      current_request_.reset();
      io_.set_close_reason("client closed mid-request");
      io_.end(Side::upstream, false);
      return;
    }
    if (!clean) io_.set_close_reason("client closed without close_notify");
    io_.end(Side::upstream, clean);
    return;
  }
  // Upstream ended: completes a body delimited by the close.
  bool whole = tunnel_ || responses_.finish();
  if (!whole || !awaiting_response_.empty()) {
    auto& front = awaiting_response_.empty() ? current_request_ : awaiting_response_.front();
    if (front && !front->response_head_forwarded) {
      answer_and_close(502, "origin closed the connection before responding");
      return;
    }
    abort_all("origin closed the connection mid-response");
    io_.set_close_reason("origin closed the connection mid-response");
    io_.end(Side::client, false);
    return;
  }
  if (!clean) io_.set_close_reason("upstream closed without close_notify");
  io_.end(Side::client, clean);
}

void H1Relay::request_failed(const H1Parser::Error& err) {
  // The bad request (and anything after it) never reaches the origin.
  if (current_request_) {
    consumer_.on_abort(current_request_->ex, err.reason);
    for (auto it = awaiting_response_.begin(); it != awaiting_response_.end(); ++it)
      if (*it == current_request_) {
        // Its head already went upstream: its response can no longer be
        // told apart from garbage, so nothing after it is relayed.
        awaiting_response_.erase(it, awaiting_response_.end());
        break;
      }
    current_request_.reset();
  }
  io_.stop_reading(Side::client);
  if (awaiting_response_.empty()) {
    answer_and_close(err.status, err.reason);
  } else {
    // Earlier pipelined responses go out first, in order.
    deferred_status_ = err.status;
    deferred_reason_ = err.reason;
  }
}

void H1Relay::response_failed(std::string reason) {
  reason = "invalid response from origin: " + reason;
  if (!awaiting_response_.empty() && !awaiting_response_.front()->response_head_forwarded) {
    answer_and_close(502, reason);
    return;
  }
  abort_all(reason);
  io_.fail(reason);
  closing_ = true;
}

void H1Relay::abort_all(std::string_view reason) {
  for (auto& st : awaiting_response_) consumer_.on_abort(st->ex, reason);
  awaiting_response_.clear();
  current_request_.reset();
}

void H1Relay::answer_and_close(int status, std::string_view reason) {
  if (closing_) return;
  closing_ = true;
  // The exchange the proxy answers records the status the client got.
  if (!awaiting_response_.empty()) awaiting_response_.front()->ex.status = status;
  abort_all(reason);
  const char* phrase = status == 400   ? "Bad Request"
                       : status == 403 ? "Forbidden"
                       : status == 413 ? "Content Too Large"
                       : status == 431 ? "Request Header Fields Too Large"
                       : status == 501 ? "Not Implemented"
                       : status == 505 ? "HTTP Version Not Supported"
                                       : "Bad Gateway";
  std::string body = "sightline: " + std::string(reason) + "\n";
  std::string resp = "HTTP/1.1 " + std::to_string(status) + " " + phrase +
                     "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: " +
                     std::to_string(body.size()) +
                     "\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n" + body;
  io_.set_close_reason(std::string(reason));
  io_.send(Side::client, resp);
  io_.stop_reading(Side::client);
  io_.stop_reading(Side::upstream);
  io_.end(Side::client, true);
  io_.end(Side::upstream, true);
}

}  // namespace sightline::http
