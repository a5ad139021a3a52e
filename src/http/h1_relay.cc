#include "http/h1_relay.h"

#include "core/log.h"

#include <algorithm>
#include <chrono>
#include <utility>

namespace sightline::http {

using exchange::Clock;

struct H1Relay::State {
  exchange::Exchange ex;
  bool request_done = false;
  bool response_head_forwarded = false;
  bool awaiting_head_forward = false;  // on_forward for the head comes next
  exchange::Head req_head;  // kept for RESPMOD (the ICAP server sees the URL)
  // The response is held for RESPMOD: its end is reported with the verdict.
  bool end_pending = false;
  exchange::Headers trailers;
  // The client asked to close after this exchange; the origin was not told
  // (keep_origin): the client leg ends after the response.
  bool client_close = false;
};

exchange::Head to_event_head(const MessageHead& head, bool request, bool with_headers) {
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
  if (!with_headers) return out;
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

// A request head as validated, with "close" taken out of its Connection
// options (the header goes when nothing else is listed).
std::string head_without_close(const MessageHead& h) {
  std::string out;
  out.reserve(256 + h.headers.size() * 48);
  out.append(h.method).append(" ").append(h.target).append(" HTTP/1.1\r\n");
  for (const auto& f : h.headers) {
    if (iequals(f.name, "proxy-connection")) continue;  // hop-by-hop, and never the origin's business
    if (!iequals(f.name, "connection")) {
      out.append(f.name).append(": ").append(f.value).append("\r\n");
      continue;
    }
    std::string kept = list_without(f.value, "close");
    if (!kept.empty()) out.append(f.name).append(": ").append(kept).append("\r\n");
  }
  out.append("\r\n");
  return out;
}

// A response head as validated, telling the client the connection closes.
std::string head_with_close(const MessageHead& h) {
  std::string out;
  out.reserve(256 + h.headers.size() * 48);
  out.append(h.version_minor == 0 ? "HTTP/1.0 " : "HTTP/1.1 ")
      .append(std::to_string(h.status)).append(" ").append(h.reason).append("\r\n");
  for (const auto& f : h.headers)
    if (!iequals(f.name, "connection") && !iequals(f.name, "keep-alive"))
      out.append(f.name).append(": ").append(f.value).append("\r\n");
  out.append("Connection: close\r\n\r\n");
  return out;
}

}  // namespace

class H1Relay::RequestHandler final : public H1Parser::Handler {
 public:
  explicit RequestHandler(H1Relay& r) : r_(r) {}

  void on_head(const MessageHead& head, Framing framing, std::uint64_t content_length,
               std::string_view) override {
    // After a request with "Connection: close" the client may send nothing
    // more: with keep_origin the origin was not told, so a pipelined request
    // would run there with its response thrown away.
    if (r_.requests_closed_) return;
    auto st = std::make_shared<State>();
    st->ex.id = exchange::next_exchange_id(r_.connection_->worker);
    st->ex.connection = r_.connection_;
    st->ex.timing.request_head_in = Clock::now();
    st->awaiting_head_forward = true;
    r_.responses_.expect_response_to(head.method);
    // ICAP's RESPMOD shows the request head to the service.
    exchange::Head ev = to_event_head(head, true, r_.headers_wanted_ || r_.icap_.respmod);
    st->ex.protocol = ev.version;
    st->ex.method = ev.method;
    st->ex.authority = ev.authority;
    st->ex.target = ev.target;
    r_.current_request_ = st;
    r_.awaiting_response_.push_back(st);
    r_.consumer_.on_request_head(st->ex, ev);
    if (r_.refusal_) {
      r_.answer_and_close(r_.refusal_->status, r_.refusal_->reason);
      return;
    }
    if (connection_bound_auth(head, true)) r_.origin_pinned_ = true;
    bool close = connection_close(head);
    bool upgrade = head.find("upgrade") != nullptr;
    if (close && r_.keep_origin_ && head.version_minor == 1 && !upgrade &&
        framing != Framing::tunnel && !iequals(head.method, "CONNECT")) {
      st->client_close = true;
      head_out_ = head_without_close(head);
    } else if (close || upgrade || head.version_minor == 0) {
      r_.origin_keep_alive_ = false;
    }
    if (r_.icap_.respmod) st->req_head = ev;
    if (!r_.icap_.reqmod || framing == Framing::tunnel || iequals(head.method, "CONNECT")) return;
    if (framing == Framing::content_length && content_length > r_.icap_.max_body) {
      // Decided before holding anything: the body streams through unadapted.
      r_.icap_.report_too_large(st->ex, icap::Method::reqmod);
      return;
    }
    r_.start_hold(Side::upstream, st, head);
    // The client may wait for 100 Continue before sending the body we need;
    // only answer it when no earlier response can still be interleaved.
    const std::string* expect = head.find("expect");
    if (expect && iequals(*expect, "100-continue") && r_.awaiting_response_.size() == 1 &&
        r_.out(Side::client).segs.empty())
      r_.io_.send(Side::client, std::string_view("HTTP/1.1 100 Continue\r\n\r\n"));
  }
  void on_body(std::span<const char> data) override {
    if (!r_.current_request_) return;
    r_.current_request_->ex.request_body_bytes += data.size();
    r_.consumer_.on_body(r_.current_request_->ex, exchange::Direction::request, data);
    if (r_.req_hold_.active) r_.hold_body(Side::upstream, data);
  }
  void on_forward(std::span<const char> wire) override {
    // The head comes as one call right after on_head: a rewritten one
    // replaces it.
    std::string head = std::exchange(head_out_, std::string());
    if (!head.empty()) wire = head;
    if (r_.closing_ || (r_.requests_closed_ && !r_.current_request_)) return;
    if (r_.req_hold_.active) {
      r_.req_hold_.seg->data.append(wire.data(), wire.size());
      r_.out(Side::upstream).bytes += wire.size();
      return;  // the head's forwarding time is taken at release
    }
    r_.emit(Side::upstream, wire);
    if (r_.current_request_ && r_.current_request_->awaiting_head_forward) {
      r_.current_request_->awaiting_head_forward = false;
      r_.current_request_->ex.timing.request_head_out = Clock::now();
    }
  }
  void on_trailers(const HeaderList& trailers) override { trailers_ = to_event_headers(trailers); }
  void on_message_end() override {
    if (!r_.current_request_) return;
    if (r_.current_request_->client_close) r_.requests_closed_ = true;
    r_.current_request_->request_done = true;
    r_.consumer_.on_request_end(r_.current_request_->ex, trailers_);
    trailers_.clear();
    r_.current_request_.reset();
    if (r_.req_hold_.active) r_.send_reqmod();
  }

 private:
  H1Relay& r_;
  exchange::Headers trailers_;
  std::string head_out_;  // a rewritten head to forward instead of the received one
};

class H1Relay::ResponseHandler final : public H1Parser::Handler {
 public:
  explicit ResponseHandler(H1Relay& r) : r_(r) {}

  void on_head(const MessageHead& head, Framing framing, std::uint64_t content_length,
               std::string_view) override {
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
    r_.consumer_.on_response_head(st.ex, to_event_head(head, false, r_.headers_wanted_));
    if (framing == Framing::tunnel) r_.tunnel_ = true;
    if (connection_bound_auth(head, false)) r_.origin_pinned_ = true;
    if (!informational_) {
      bool close = connection_close(head);
      if (close || head.version_minor == 0 || framing == Framing::until_close)
        r_.origin_keep_alive_ = false;
      if (st.client_close && !close) head_out_ = head_with_close(head);
    }
    // RESPMOD applies to responses with a body of known end (a body that
    // ends with the connection would have to be held until the close).
    bool has_body = (framing == Framing::content_length && content_length > 0) ||
                    framing == Framing::chunked;
    if (informational_ || !r_.icap_.respmod || !has_body) return;
    if (framing == Framing::content_length && content_length > r_.icap_.max_body) {
      r_.icap_.report_too_large(st.ex, icap::Method::respmod);
      return;
    }
    r_.start_hold(Side::client, r_.awaiting_response_.front(), head);
  }
  void on_body(std::span<const char> data) override {
    if (r_.awaiting_response_.empty()) return;
    State& st = *r_.awaiting_response_.front();
    st.ex.response_body_bytes += data.size();
    r_.consumer_.on_body(st.ex, exchange::Direction::response, data);
    if (r_.resp_hold_.active) r_.hold_body(Side::client, data);
  }
  void on_forward(std::span<const char> wire) override {
    std::string head = std::exchange(head_out_, std::string());
    if (!head.empty()) wire = head;
    if (unsolicited_) {
      unsolicited_ = false;
      r_.response_failed("origin sent a response to no request");
      return;
    }
    if (r_.resp_hold_.active) {
      r_.resp_hold_.seg->data.append(wire.data(), wire.size());
      r_.out(Side::client).bytes += wire.size();
    } else {
      r_.emit(Side::client, wire);
    }
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
    // A response held for RESPMOD reaches the client only with the verdict:
    // its exchange ends then (respmod_done), with the ICAP outcome on it.
    bool held = r_.resp_hold_.active;
    finish_front(!held);
    if (held) r_.send_respmod();
  }

 private:
  void finish_front(bool report = true) {
    auto st = r_.awaiting_response_.front();
    r_.awaiting_response_.pop_front();
    if (report) {
      st->ex.timing.end = Clock::now();
      r_.consumer_.on_response_end(st->ex, trailers_);
    } else {
      st->end_pending = true;
      st->trailers = trailers_;
    }
    trailers_.clear();
    if (st->client_close && !r_.client_done_) {
      // The client asked to close: its leg ends after this response (its
      // close_notify is still read, so nothing it sent is answered with a
      // reset); the origin's may be kept.
      r_.client_done_ = true;
      r_.end_side(Side::client, true);
    }
    if (r_.awaiting_response_.empty() && !r_.deferred_answer_.empty()) {
      r_.emit(Side::client, std::exchange(r_.deferred_answer_, std::string()));
      r_.end_side(Side::client, true);
      r_.io_.end(Side::upstream, true);
      r_.closing_ = true;
    }
    if (r_.awaiting_response_.empty() && r_.deferred_status_ != 0)
      r_.answer_and_close(r_.deferred_status_, r_.deferred_reason_);
  }

  H1Relay& r_;
  exchange::Headers trailers_;
  bool unsolicited_ = false;
  bool informational_ = false;
  std::string head_out_;  // a rewritten head to forward instead of the received one
};

H1Relay::H1Relay(RelayIo& io, exchange::Consumer& consumer,
                 std::shared_ptr<const exchange::ConnectionInfo> connection, H1Limits limits,
                 std::optional<Refusal> refusal, IcapOptions icap, bool keep_origin)
    : io_(io),
      consumer_(consumer),
      connection_(std::move(connection)),
      req_handler_(std::make_unique<RequestHandler>(*this)),
      resp_handler_(std::make_unique<ResponseHandler>(*this)),
      requests_(H1Parser::Kind::request, *req_handler_, limits),
      responses_(H1Parser::Kind::response, *resp_handler_, limits),
      refusal_(std::move(refusal)),
      keep_origin_(keep_origin),
      headers_wanted_(consumer_.wants_headers(*connection_)),
      icap_(std::move(icap)) {
  // A rule's `hooks` list selects ICAP like any hook (absent: all traffic).
  const auto& hooks = connection_->hooks;
  if (refusal_ || !icap_.service ||
      (hooks && std::find(hooks->begin(), hooks->end(), "icap") == hooks->end()))
    icap_.reqmod = icap_.respmod = false;
}

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
    if (client_done_) return;  // after "Connection: close" nothing more is taken
    if (tunnel_) {
      emit(Side::upstream, data);
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
    if (client_done_) {
      end_side(Side::upstream, clean);
      return;
    }
    if (!tunnel_ && !requests_.finish()) {
      if (current_request_) consumer_.on_abort(current_request_->ex, "client closed mid-request");
      current_request_.reset();
      io_.set_close_reason("client closed mid-request");
      io_.end(Side::upstream, false);
      return;
    }
    if (!clean) io_.set_close_reason("client closed without close_notify");
    // After whatever is still held for ICAP toward the origin.
    end_side(Side::upstream, clean);
    return;
  }
  // Upstream ended: completes a body delimited by the close.
  bool whole = tunnel_ || responses_.finish();
  if (!whole || !awaiting_response_.empty()) {
    io_.note_failure(core::FailureCause::upstream_reset);
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
  end_side(Side::client, clean);
}

bool H1Relay::awaiting_origin() const { return !awaiting_response_.empty(); }

bool H1Relay::origin_idle() const {
  return keep_origin_ && origin_keep_alive_ && !origin_pinned_ && !tunnel_ && !closing_ && !refusal_ &&
         awaiting_response_.empty() && !current_request_ && requests_.idle() && responses_.idle() &&
         out_[1].segs.empty() && !req_hold_.active && !resp_hold_.active && deferred_status_ == 0 &&
         deferred_answer_.empty();
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
  io_.note_failure(core::FailureCause::client_bad_request);
  if (awaiting_response_.empty()) {
    answer_and_close(err.status, err.reason);
  } else {
    // Earlier pipelined responses go out first, in order.
    deferred_status_ = err.status;
    deferred_reason_ = err.reason;
  }
}

void H1Relay::response_failed(std::string reason) {
  io_.note_failure(core::FailureCause::upstream_protocol);
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
  drop_queues();
  io_.set_close_reason(std::string(reason));
  io_.send(Side::client, error_response(status, reason));
  io_.stop_reading(Side::client);
  io_.stop_reading(Side::upstream);
  io_.end(Side::client, true);
  io_.end(Side::upstream, true);
}

std::string error_response(int status, std::string_view reason) {
  const char* phrase = status == 400   ? "Bad Request"
                       : status == 403 ? "Forbidden"
                       : status == 413 ? "Content Too Large"
                       : status == 431 ? "Request Header Fields Too Large"
                       : status == 501 ? "Not Implemented"
                       : status == 505 ? "HTTP Version Not Supported"
                                       : "Bad Gateway";
  std::string body = "sightline: " + std::string(reason) + "\n";
  return "HTTP/1.1 " + std::to_string(status) + " " + phrase +
         "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: " +
         std::to_string(body.size()) +
         "\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n" + body;
}


// ---- ICAP: ordered output queues and held messages ----

namespace {
// Beyond a held message, this much more may wait behind it before the
// source side is paused (back-pressure while the ICAP server thinks).
constexpr std::size_t kBacklog = 1 << 20;

bool framing_field(std::string_view name, bool closing) {
  return iequals(name, "content-length") || iequals(name, "transfer-encoding") ||
         (closing && (iequals(name, "connection") || iequals(name, "keep-alive")));
}

// An adapted head re-framed from its new body: Content-Length (when a body
// is sent) replaces whatever framing the ICAP server echoed.
std::string serialize(const exchange::Head& h, bool request, std::string_view target,
                      bool with_length, std::size_t length, bool close) {
  std::string out;
  std::string version = h.version.empty() || h.version == "HTTP/2" ? "HTTP/1.1" : h.version;
  if (request)
    out = h.method + " " + std::string(target) + " " + version + "\r\n";
  else
    out = "HTTP/1.1 " + std::to_string(h.status) + " " + h.reason + "\r\n";
  for (const auto& f : h.headers) {
    if (framing_field(f.name, close)) continue;
    out += f.name + ": " + f.value + "\r\n";
  }
  if (with_length) out += "Content-Length: " + std::to_string(length) + "\r\n";
  if (close) out += "Connection: close\r\n";
  out += "\r\n";
  return out;
}

// ICAP servers see absolute-form targets (docs/icap.md); the origin gets
// the form the client used.
std::string origin_target(const std::string& adapted, const std::string& original) {
  auto scheme_end = adapted.find("://");
  bool absolute = scheme_end != std::string::npos && adapted.find('/') > scheme_end;
  if (!absolute || original.find("://") != std::string::npos) return adapted;
  auto path = adapted.find('/', scheme_end + 3);
  return path == std::string::npos ? "/" : adapted.substr(path);
}
}  // namespace

void H1Relay::emit(Side to, std::span<const char> data) {
  OutQueue& q = out(to);
  if (q.segs.empty()) {
    io_.send(to, data);
    return;
  }
  if (!q.segs.back()->ready || q.segs.back()->end_after) q.segs.push_back(std::make_shared<Segment>());
  q.segs.back()->data.append(data.data(), data.size());
  q.bytes += data.size();
  if (!q.paused_source && q.bytes > icap_.max_body + kBacklog) {
    q.paused_source = true;
    io_.pause_reading(other(to), true);
  }
}

void H1Relay::end_side(Side to, bool clean) {
  OutQueue& q = out(to);
  if (q.segs.empty()) {
    io_.end(to, clean);
    return;
  }
  auto seg = std::make_shared<Segment>();
  seg->end_after = true;
  seg->end_clean = clean;
  q.segs.push_back(std::move(seg));
}

void H1Relay::flush(Side to) {
  OutQueue& q = out(to);
  while (!q.segs.empty() && q.segs.front()->ready) {
    auto seg = q.segs.front();
    q.segs.pop_front();
    q.bytes -= std::min(q.bytes, seg->data.size());
    if (!seg->data.empty()) io_.send(to, seg->data);
    if (seg->end_after) {
      for (auto& rest : q.segs) rest->dropped = true;
      q.segs.clear();
      q.bytes = 0;
      io_.end(to, seg->end_clean);
      break;
    }
  }
  if (q.paused_source && q.segs.empty()) {
    q.paused_source = false;
    io_.pause_reading(other(to), false);
  }
}

void H1Relay::drop_queues() {
  for (auto& q : out_) {
    for (auto& seg : q.segs) seg->dropped = true;
    q.segs.clear();
    q.bytes = 0;
  }
  req_hold_ = {};
  resp_hold_ = {};
}

void H1Relay::start_hold(Side to, const std::shared_ptr<State>& st, const MessageHead& head) {
  Hold& h = to == Side::upstream ? req_hold_ : resp_hold_;
  h = {};
  h.seg = std::make_shared<Segment>();
  h.seg->ready = false;
  h.st = st;
  h.head = head;
  h.active = true;
  out(to).segs.push_back(h.seg);
}

void H1Relay::hold_body(Side to, std::span<const char> data) {
  Hold& h = to == Side::upstream ? req_hold_ : resp_hold_;
  h.body.append(data.data(), data.size());
  // A chunked body can outgrow the cap (or tiny chunks its wire form):
  // what is held goes out as it is and the rest streams unadapted.
  if (h.body.size() > icap_.max_body || h.seg->data.size() > 2 * icap_.max_body + 65536)
    give_up_hold(to);
}

void H1Relay::give_up_hold(Side to) {
  Hold& h = to == Side::upstream ? req_hold_ : resp_hold_;
  bool req = to == Side::upstream;
  icap_.report_too_large(h.st->ex, req ? icap::Method::reqmod : icap::Method::respmod);
  auto seg = h.seg;
  auto st = h.st;
  h = {};
  seg->ready = true;
  if (req && st->awaiting_head_forward) {
    st->awaiting_head_forward = false;
    st->ex.timing.request_head_out = Clock::now();
  }
  flush(to);
}

void H1Relay::send_reqmod() {
  Hold h = std::move(req_hold_);
  req_hold_ = {};
  std::weak_ptr<bool> alive = alive_;
  auto done = [this, alive, seg = h.seg, st = h.st, orig = h.head](icap::Result r) {
    if (alive.expired() || seg->dropped) return;
    reqmod_done(seg, st, orig, std::move(r));
    io_.flush_sends();
  };
  icap_.adapt(h.st->ex.id, to_event_head(h.head, true), std::nullopt, std::move(h.body), std::move(done));
}

void H1Relay::send_respmod() {
  Hold h = std::move(resp_hold_);
  resp_hold_ = {};
  std::weak_ptr<bool> alive = alive_;
  auto done = [this, alive, seg = h.seg, st = h.st](icap::Result r) {
    if (alive.expired()) return;
    if (seg->dropped) {
      if (st->end_pending) {
        st->end_pending = false;
        consumer_.on_abort(st->ex, "connection ended while the response was with ICAP");
      }
      return;
    }
    respmod_done(seg, st, std::move(r));
    io_.flush_sends();
  };
  icap_.adapt(h.st->ex.id, h.st->req_head, to_event_head(h.head, false), std::move(h.body), std::move(done));
}

void H1Relay::reqmod_done(const std::shared_ptr<Segment>& seg, const std::shared_ptr<State>& st,
                          const MessageHead& orig, icap::Result r) {
  icap_.report(&st->ex, icap::Method::reqmod, r);
  using K = icap::Result::Kind;
  switch (r.kind) {
    case K::unchanged:
      break;
    case K::modified: {
      bool had_body = orig.find("content-length") || orig.find("transfer-encoding");
      bool with_length = r.has_body || !r.body.empty() || had_body;
      std::size_t old = seg->data.size();
      seg->data = serialize(r.head, true, origin_target(r.head.target, orig.target), with_length,
                            r.body.size(), false) + r.body;
      // The adapted head is the ICAP server's: when it still asks the origin
      // to close, the origin connection cannot be kept.
      for (const auto& f : r.head.headers)
        if (iequals(f.name, "connection") && list_has(f.value, "close"))
          origin_keep_alive_ = false;
      OutQueue& q = out(Side::upstream);
      q.bytes = q.bytes - std::min(q.bytes, old) + seg->data.size();
      break;
    }
    case K::respond: {
      bool head_only = iequals(orig.method, "HEAD");
      std::string resp = serialize(r.head, false, {}, true, r.body.size(), true);
      if (!head_only) resp += r.body;
      log::emit(log::Line(log::Level::info, "icap_respond").num("exchange", st->ex.id)
                    .num("status", r.head.status));
      respond_instead(seg, st, r.head, std::move(resp));
      return;
    }
    case K::error: {  // a fail-closed service failed
      exchange::Head h;
      h.status = 502;
      h.reason = "Bad Gateway";
      h.version = "HTTP/1.1";
      respond_instead(seg, st, h, error_response(502, "ICAP service failed: " + r.error));
      return;
    }
  }
  seg->ready = true;
  if (st->awaiting_head_forward) {
    st->awaiting_head_forward = false;
    st->ex.timing.request_head_out = Clock::now();
  }
  flush(Side::upstream);
}

void H1Relay::respond_instead(const std::shared_ptr<Segment>& seg, const std::shared_ptr<State>& st,
                              const exchange::Head& head, std::string response) {
  // The request never reaches the origin; neither does anything pipelined
  // behind it (the connection closes after the answer).
  OutQueue& q = out(Side::upstream);
  auto it = std::find(q.segs.begin(), q.segs.end(), seg);
  for (auto j = it; j != q.segs.end(); ++j) (*j)->dropped = true;
  q.segs.erase(it, q.segs.end());
  q.bytes = 0;
  for (auto& s2 : q.segs) q.bytes += s2->data.size();
  req_hold_ = {};
  io_.stop_reading(Side::client);
  auto pos = std::find(awaiting_response_.begin(), awaiting_response_.end(), st);
  bool front = pos == awaiting_response_.begin();
  if (pos != awaiting_response_.end()) {
    for (auto j = std::next(pos); j != awaiting_response_.end(); ++j)
      consumer_.on_abort((*j)->ex, "dropped after an ICAP answer");
    awaiting_response_.erase(pos, awaiting_response_.end());
  }
  current_request_.reset();
  // The exchange ends with the answer the client gets.
  auto now = Clock::now();
  st->ex.status = head.status;
  st->ex.timing.response_head_in = st->ex.timing.response_head_out = st->ex.timing.end = now;
  consumer_.on_response_head(st->ex, head);
  consumer_.on_response_end(st->ex, {});
  io_.set_close_reason("answered by ICAP");
  if (front) {
    emit(Side::client, response);
    end_side(Side::client, true);
    if (q.segs.empty()) io_.end(Side::upstream, true);
    else end_side(Side::upstream, true);
    closing_ = true;
  } else {
    deferred_answer_ = std::move(response);  // sent after the earlier responses
  }
}

void H1Relay::respmod_done(const std::shared_ptr<Segment>& seg, const std::shared_ptr<State>& st,
                           icap::Result r) {
  icap_.report(&st->ex, icap::Method::respmod, r);
  using K = icap::Result::Kind;
  OutQueue& q = out(Side::client);
  std::size_t old = seg->data.size();
  switch (r.kind) {
    case K::unchanged:
      break;
    case K::modified:
    case K::respond: {
      bool no_body = r.head.status == 204 || r.head.status == 304 || r.head.status < 200;
      seg->data = serialize(r.head, false, {}, !no_body, r.body.size(), false);
      if (!no_body) seg->data += r.body;
      break;
    }
    case K::error:
      // A fail-closed service failed: the origin's response is replaced;
      // nothing after it is relayed.
      seg->data = error_response(502, "ICAP service failed: " + r.error);
      seg->end_after = true;
      st->ex.status = 502;
      io_.set_close_reason("ICAP failed (fail closed)");
      io_.stop_reading(Side::client);
      io_.stop_reading(Side::upstream);
      io_.end(Side::upstream, true);
      abort_all("ICAP failed (fail closed)");
      closing_ = true;
      break;
  }
  q.bytes = q.bytes - std::min(q.bytes, old) + seg->data.size();
  seg->ready = true;
  if (st->end_pending) {
    st->end_pending = false;
    st->ex.timing.response_head_out = st->ex.timing.end = Clock::now();
    consumer_.on_response_end(st->ex, st->trailers);
  }
  flush(Side::client);
}

}  // namespace sightline::http
