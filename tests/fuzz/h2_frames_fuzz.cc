// libFuzzer target for the HTTP/2 relay (src/http/h2_relay.cc): nghttp2 on
// both legs and our callbacks between them (header blocks, body forwarding,
// end-to-end flow control, stream bookkeeping, ICAP holds, errors).
//
// The harness drives the relay the way the session does (src/proxy/
// session.cc): a fake RelayIo takes what the relay sends and reports it as
// queued until drained; nothing is fed from a side that stopped reading or
// ended; a fail() or both legs ended and closed tears the relay down. The
// fuzzer plays both peers. The client's connection preface and an empty
// SETTINGS frame from each peer are sent first, so inputs start at frames.
//
// Input: a configuration byte, then operations.
//   config bit 0  ICAP REQMOD on       bit 4  refusal: the origin failed
//          bit 1  ICAP RESPMOD on             verification, the relay answers
//          bit 2  ICAP services unavailable: every call is answered at once
//                 (an error, or skipped when fail-open)
//          bit 3  small windows, header list and output watermark, and
//                 queues drain only when told (operations 4, 5)
//          bit 5  the consumer reads header fields
//          bit 6  ICAP max_body 64 bytes (else 16 KiB)
//          bit 7  ICAP services are fail-open
//   operation: [op][length: 2 bytes, big-endian][length bytes]
//     op % 8  0: bytes from the client   1: bytes from the origin
//             2: the client's leg ends   3: the origin's leg ends
//                (op bit 3: with close_notify)
//             4: the queue toward the client drains (on_writable)
//             5: the same toward the origin
//             6: the oldest pending ICAP call answers: the bytes are a kind
//                (0 unchanged, 1 modified, 2 respond, 3 error), a flags byte
//                (bit 0: failed open, bit 1: has a body), then an HTTP/1.1
//                head as the ICAP server encapsulated it, then the body
//             7: nothing happens (a separator that mutations may use)
//
// Besides crashes, leaks and sanitizer findings, checked:
//   - exchange events follow the order of exchange.h (exchange::
//     RecordingConsumer): request head first, nothing after the ending, and
//     every exchange ended by the time the relay is gone; body byte counters
//     equal the bytes reported;
//   - flow control: the connection-level WINDOW_UPDATEs sent to a peer never
//     give back more than the DATA it sent plus the window the relay opened
//     at start (double credits would let a peer overrun the proxy's buffers);
//   - ICAP verdicts arriving after the relay is gone are ignored.
#include "core/log.h"
#include "exchange/recording.h"
#include "fuzz_check.h"
#include "http/h2_relay.h"
#include "icap/icap_chain.h"
#include "icap/icap_message.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <string_view>

using namespace sightline;
using http::Side;
using sightline::fuzz::as_text;

namespace {

constexpr std::uint32_t kDefaultConnectionWindow = 65535;  // RFC 9113 6.9.2

// Walks the frames of one direction: DATA lengths (flow-controlled bytes,
// padding included) and the increments of WINDOW_UPDATEs on the connection.
class FrameScanner {
 public:
  explicit FrameScanner(std::size_t preface) : skip_(preface) {}
  void feed(std::string_view bytes) {
    while (!bytes.empty()) {
      if (skip_ > 0) {  // the client connection preface
        const std::size_t n = std::min(skip_, bytes.size());
        skip_ -= n;
        bytes.remove_prefix(n);
      } else if (left_ > 0) {  // a frame's payload
        const std::size_t n = std::min(left_, bytes.size());
        if (type_ == 8 && stream_ == 0 && payload_.size() < 4) {
          payload_.append(bytes.substr(0, std::min(n, 4 - payload_.size())));
          if (payload_.size() == 4) window_increments += u32(payload_, 0) & 0x7fffffffu;
        }
        left_ -= n;
        bytes.remove_prefix(n);
      } else {  // a frame header
        const std::size_t n = std::min(9 - header_.size(), bytes.size());
        header_.append(bytes.substr(0, n));
        bytes.remove_prefix(n);
        if (header_.size() < 9) return;
        left_ = u32(header_, 0) >> 8;
        type_ = static_cast<std::uint8_t>(header_[3]);
        stream_ = u32(header_, 5) & 0x7fffffffu;
        if (type_ == 0) data_bytes += left_;
        header_.clear();
        payload_.clear();
      }
    }
  }
  std::uint64_t data_bytes = 0;
  std::uint64_t window_increments = 0;

 private:
  static std::uint32_t u32(const std::string& s, std::size_t at) {
    std::uint32_t v = 0;
    for (std::size_t i = at; i < at + 4; ++i) v = (v << 8) | static_cast<std::uint8_t>(s[i]);
    return v;
  }

  std::size_t skip_;
  std::size_t left_ = 0;
  std::uint8_t type_ = 0;
  std::uint32_t stream_ = 0;
  std::string header_, payload_;
};

int slot(Side s) { return s == Side::client ? 0 : 1; }

// H2_FUZZ_TRACE=1 prints the exchange events and why the relay closed, to
// see what a seed or a reproducer does.
bool g_trace = false;
void trace(const char* what, std::string_view detail) {
  if (g_trace) std::fprintf(stderr, "h2_frames: %s %.*s\n", what, static_cast<int>(detail.size()), detail.data());
}

struct FakeIo final : http::RelayIo {
  void send(Side to, std::span<const char> data) override {
    if (write_shut[slot(to)]) return;  // dropped, as the session does after end()
    queued_bytes[slot(to)] += data.size();
    out[slot(to)].feed(std::string_view(data.data(), data.size()));
  }
  std::size_t queued(Side to) const override { return queued_bytes[slot(to)]; }
  void end(Side to, bool) override { write_shut[slot(to)] = true; }
  void stop_reading(Side from) override { read_done[slot(from)] = true; }
  void pause_reading(Side, bool) override {}
  void fail(std::string reason) override {
    FUZZ_CHECK(!reason.empty());
    trace("fail", reason);
    failed = true;
  }
  void set_close_reason(std::string reason) override { trace("close reason", reason); }

  // What the relay sent toward the client (no preface) and the origin (the
  // 24-byte client preface first).
  FrameScanner out[2] = {FrameScanner(0), FrameScanner(24)};
  std::size_t queued_bytes[2] = {0, 0};
  bool write_shut[2] = {false, false};
  bool read_done[2] = {false, false};
  bool failed = false;
};

// Checks the event contract of exchange.h (RecordingConsumer, the tests'
// checker), that the body counters match what was reported, and which
// exchanges still owe their ending.
struct CheckingConsumer final : exchange::Consumer {
  struct State {
    bool ended = false;
    std::uint64_t request_bytes = 0, response_bytes = 0;
  };
  State& known(const exchange::Exchange& ex) {
    auto it = exchanges.find(ex.id);
    FUZZ_CHECK(it != exchanges.end());
    return it->second;
  }
  void check() const {
    if (g_trace && !rec.events.empty()) std::fprintf(stderr, "h2_frames: %s\n", rec.events.back().c_str());
    if (!rec.violations.empty()) std::fprintf(stderr, "h2_frames: %s\n", rec.violations.front().c_str());
    FUZZ_CHECK(rec.violations.empty());
  }
  void on_request_head(const exchange::Exchange& ex, const exchange::Head& head) override {
    rec.on_request_head(ex, head);
    check();
    FUZZ_CHECK(exchanges.emplace(ex.id, State{}).second);
  }
  void on_body(const exchange::Exchange& ex, exchange::Direction dir, std::span<const char> data) override {
    rec.on_body(ex, dir, data);
    check();
    State& s = known(ex);
    if (dir == exchange::Direction::request) {
      s.request_bytes += data.size();
      FUZZ_CHECK(s.request_bytes == ex.request_body_bytes);
    } else {
      s.response_bytes += data.size();
      FUZZ_CHECK(s.response_bytes == ex.response_body_bytes);
    }
  }
  void on_request_end(const exchange::Exchange& ex, const exchange::Headers& trailers) override {
    rec.on_request_end(ex, trailers);
    check();
  }
  void on_response_head(const exchange::Exchange& ex, const exchange::Head& head) override {
    rec.on_response_head(ex, head);
    check();
  }
  void on_response_end(const exchange::Exchange& ex, const exchange::Headers& trailers) override {
    rec.on_response_end(ex, trailers);
    check();
    known(ex).ended = true;
  }
  void on_abort(const exchange::Exchange& ex, std::string_view reason) override {
    rec.on_abort(ex, reason);
    check();
    known(ex).ended = true;
  }
  bool wants_headers(const exchange::ConnectionInfo&) const override { return headers; }

  bool headers = false;
  exchange::RecordingConsumer rec;
  std::map<std::uint64_t, State> exchanges;
};

// ICAP calls the relay made and that have not been answered yet.
struct PendingCall {
  icap::ChainStep step;
  icap::StepReport report;
  bool respmod = false;
  icap::Callback done;
};

struct IcapFake {
  bool unavailable = false;
  std::deque<PendingCall> pending;
};
IcapFake* g_icap = nullptr;

void answer(PendingCall& call, icap::Result r) {
  if (call.report) call.report(call.step, r);
  icap::Callback done = std::move(call.done);
  done(std::move(r));
}

// An ICAP server's verdict as the ICAP client would hand it over: heads
// come from icap::parse_http_head, as in the real client.
icap::Result verdict(const PendingCall& call, std::string_view bytes) {
  icap::Result r;
  const std::uint8_t kind = bytes.empty() ? 0 : static_cast<std::uint8_t>(bytes[0]) % 4;
  const std::uint8_t flags = bytes.size() < 2 ? 0 : static_cast<std::uint8_t>(bytes[1]);
  bytes.remove_prefix(std::min<std::size_t>(2, bytes.size()));
  r.kind = static_cast<icap::Result::Kind>(kind);
  r.failed_open = (flags & 1) != 0;
  r.has_body = (flags & 2) != 0;
  r.sent = true;
  r.icap_status = r.kind == icap::Result::Kind::unchanged ? 204 : 200;
  if (r.kind == icap::Result::Kind::error) {
    r.error = "fuzzed ICAP failure";
    return r;
  }
  if (r.kind == icap::Result::Kind::unchanged) return r;
  const std::size_t head_end = bytes.find("\r\n\r\n");
  const std::string_view head = head_end == std::string_view::npos ? bytes : bytes.substr(0, head_end + 4);
  const bool request = r.kind == icap::Result::Kind::modified && !call.respmod;
  std::string why;
  if (!icap::parse_http_head(head, request, r.head, &why)) {
    r.head = {};
    if (request) {
      r.head.method = "GET";
      r.head.target = "/";
    } else {
      r.head.status = 403;
    }
    r.head.version = "HTTP/1.1";
  }
  if (head_end != std::string_view::npos) r.body = std::string(bytes.substr(head_end + 4));
  return r;
}

}  // namespace

// Replaces src/icap/icap_chain.cc in this target: the relay's ICAP calls are
// answered by the input, later (operation 6) or at once as for an
// unavailable service, which is the only case run_chain answers inside the
// call.
namespace sightline::icap {

void run_chain(std::vector<ChainStep> steps, const ServiceLookup&, StepReport report, exchange::Head,
               std::optional<exchange::Head> response, std::string, Callback done) {
  FUZZ_CHECK(g_icap && !steps.empty());
  PendingCall call{steps.front(), std::move(report), response.has_value(), std::move(done)};
  if (!g_icap->unavailable) {
    g_icap->pending.push_back(std::move(call));
    return;
  }
  Result r;
  r.error = "ICAP service not available";
  if (call.report) call.report(call.step, r);
  if (!call.step.fail_closed) {  // skipped: the message goes on unadapted
    r = Result{};
    r.kind = Result::Kind::unchanged;
    r.failed_open = true;
  }
  Callback cb = std::move(call.done);
  cb(std::move(r));
}

}  // namespace sightline::icap

namespace {

std::string settings_frame() { return std::string("\0\0\0\x04\0\0\0\0\0", 9); }

struct Run {
  FakeIo io;
  CheckingConsumer consumer;
  IcapFake icap_fake;
  FrameScanner in[2] = {FrameScanner(0), FrameScanner(0)};  // what each peer sent
  std::unique_ptr<http::H2Relay> relay;
  http::H2Settings settings;
  bool manual_drain = false;
  bool refused = false;

  bool over() const {
    return io.failed || (io.read_done[0] && io.read_done[1] && io.write_shut[0] && io.write_shut[1]);
  }

  void check_windows() const {
    const std::uint64_t opened = settings.connection_window_size > kDefaultConnectionWindow
                                     ? settings.connection_window_size - kDefaultConnectionWindow
                                     : 0;
    for (int s = 0; s < 2; ++s) FUZZ_CHECK(io.out[s].window_increments <= in[s].data_bytes + opened);
  }

  void data(Side from, std::string_view bytes) {
    if (io.read_done[slot(from)] || (refused && from == Side::upstream)) return;
    in[slot(from)].feed(bytes);
    relay->on_data(from, std::span<const char>(bytes.data(), bytes.size()));
  }

  void end(Side from, bool clean) {
    if (io.read_done[slot(from)] || (refused && from == Side::upstream)) return;
    io.read_done[slot(from)] = true;  // the session stops reading a leg at its end
    relay->on_end(from, clean);
  }

  void drain(Side to) {
    io.queued_bytes[slot(to)] = 0;
    if (!io.write_shut[slot(to)]) relay->on_writable(to);
  }

  void answer_icap(std::string_view bytes) {
    if (icap_fake.pending.empty()) return;
    PendingCall call = std::move(icap_fake.pending.front());
    icap_fake.pending.pop_front();
    answer(call, verdict(call, bytes));
  }
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  g_trace = std::getenv("H2_FUZZ_TRACE") != nullptr;
  // The relay's lines (ICAP errors and bypasses, warn and info) would bury
  // libFuzzer's output; queued to a writer thread, they would also look
  // like leaks to libFuzzer, which then runs each such input twice. The
  // level is kept after stop(), with no thread left.
  sightline::log::Options opts;
  opts.file = "/dev/null";
  opts.level = sightline::log::Level::error;
  std::string err;
  if (sightline::log::start(opts, &err)) sightline::log::stop();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::uint8_t config = data[0];
  std::string_view ops = as_text(data + 1, size - 1);

  Run run;
  g_icap = &run.icap_fake;
  run.icap_fake.unavailable = (config & 4) != 0;
  run.manual_drain = (config & 8) != 0;
  run.refused = (config & 16) != 0;
  run.consumer.headers = (config & 32) != 0;
  std::size_t watermark = 256 * 1024;
  if (run.manual_drain) {
    run.settings.initial_window_size = 16 * 1024;
    run.settings.max_header_list_size = 1024;
    run.settings.max_concurrent_streams = 4;
    run.settings.connection_window_size = kDefaultConnectionWindow;
    watermark = 4 * 1024;
  }

  http::IcapOptions icap;
  icap.reqmod = (config & 1) != 0;
  icap.respmod = (config & 2) != 0;
  const icap::ChainStep step{0, "fuzz", (config & 128) == 0};
  icap.reqmod_chain = {step};
  icap.respmod_chain = {step};
  icap.service = [](std::size_t) -> icap::IcapService* { return nullptr; };  // run_chain is faked
  icap.max_body = (config & 64) != 0 ? 64 : 16 * 1024;

  auto connection = std::make_shared<exchange::ConnectionInfo>();
  connection->alpn = "h2";
  std::optional<http::Refusal> refusal;
  if (run.refused) refusal = http::Refusal{502, "fuzz: origin certificate not trusted"};
  run.relay = std::make_unique<http::H2Relay>(run.io, run.consumer, connection, run.settings, watermark, refusal,
                                              std::move(icap));
  if (run.relay->start()) {
    run.data(Side::client, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings_frame());
    if (!run.over()) run.data(Side::upstream, settings_frame());
  }

  while (!ops.empty() && !run.over()) {
    const auto byte = [&](std::size_t i) -> std::uint8_t {
      return i < ops.size() ? static_cast<std::uint8_t>(ops[i]) : std::uint8_t{0};
    };
    const std::uint8_t op = byte(0);
    const std::size_t len = (std::size_t{byte(1)} << 8) | byte(2);
    ops.remove_prefix(std::min<std::size_t>(3, ops.size()));
    const std::string_view bytes = ops.substr(0, std::min(len, ops.size()));
    ops.remove_prefix(bytes.size());
    switch (op % 8) {
      case 0: run.data(Side::client, bytes); break;
      case 1: run.data(Side::upstream, bytes); break;
      case 2: run.end(Side::client, (op & 8) != 0); break;
      case 3: run.end(Side::upstream, (op & 8) != 0); break;
      case 4: run.drain(Side::client); break;
      case 5: run.drain(Side::upstream); break;
      case 6: run.answer_icap(bytes); break;
      default: break;
    }
    if (!run.manual_drain && !run.over()) {
      for (Side s : {Side::client, Side::upstream})
        if (run.io.queued_bytes[slot(s)] > 0) run.drain(s);
    }
    run.check_windows();
  }

  // The session goes, and its relay with it; every exchange must have ended.
  run.relay.reset();
  for (const auto& [id, state] : run.consumer.exchanges) FUZZ_CHECK(state.ended);
  // Verdicts that come after the relay is gone must be ignored.
  while (!run.icap_fake.pending.empty()) run.answer_icap("\x01\x02HTTP/1.1 200 OK\r\n\r\nlate");
  g_icap = nullptr;
  return 0;
}
