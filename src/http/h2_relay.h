// HTTP/2 between an intercepted client and its origin, with nghttp2 on both
// legs: a server session toward the client, a client session toward the
// origin, and each client stream mapped to one origin stream.
//
// Flow control is coupled end to end: automatic WINDOW_UPDATEs are off, and
// the proxy hands window back to a sender only for bytes it has passed on to
// the other side, so a slow reader slows the writer through HTTP/2's own
// windows and the proxy never buffers more than the windows it advertised.
// RST_STREAM and GOAWAY are passed on; trailers are relayed; the origin is
// told not to push (SETTINGS_ENABLE_PUSH = 0), so nothing is pushed to the
// client.
//
// ICAP (IcapOptions) holds per stream: a request or response that goes to
// ICAP is kept (head, body up to max_body, trailers) until its verdict, while
// the other streams of the connection go on. Held DATA is credited back to the
// sender (window) only up to max_body per stream and 2 x max_body per
// connection and direction, so holds are bounded (docs/icap.md).
#pragma once

#include "exchange/exchange.h"
#include "http/relay.h"

#include <nghttp2/nghttp2.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>

namespace sightline::http {

struct H2Settings {
  std::uint32_t max_concurrent_streams = 100;      // advertised to the client
  std::uint32_t initial_window_size = 256 * 1024;  // per stream, both legs
  std::uint32_t connection_window_size = 1024 * 1024;
  std::uint32_t max_header_list_size = 64 * 1024;
  std::uint32_t header_table_size = 4096;          // HPACK dynamic table
};

class H2Relay final : public Relay {
 public:
  H2Relay(RelayIo& io, exchange::Consumer& consumer,
          std::shared_ptr<const exchange::ConnectionInfo> connection, H2Settings settings,
          std::size_t output_high_watermark, std::optional<Refusal> refusal = std::nullopt,
          IcapOptions icap = {});
  ~H2Relay() override;
  H2Relay(const H2Relay&) = delete;
  H2Relay& operator=(const H2Relay&) = delete;

  // Creates both sessions and queues their SETTINGS. False (with the reason
  // reported through RelayIo::fail) if nghttp2 cannot be set up.
  bool start();

  void on_data(Side from, std::span<const char> data) override;
  void on_end(Side from, bool clean) override;
  void on_writable(Side to) override;
  bool awaiting_origin() const override;

  struct Stream;

 private:
  struct Callbacks;

  nghttp2_session* session(Side s) const { return s == Side::client ? down_ : up_; }
  Side side_of(nghttp2_session* s) const { return s == down_ ? Side::client : Side::upstream; }
  Stream* by_down(std::int32_t id);
  Stream* by_up(std::int32_t id);

  void give_back(Side sender, const Stream& st, std::size_t n);
  void credit(Side sender, Stream& st, std::size_t n);
  void hold_data(Side sender, Stream& st, std::size_t n);
  void give_up_hold(Side sender, Stream& st);
  void bypass_too_large(Stream& st, icap::Method m);
  std::size_t held_budget() const;
  std::size_t held_paid(Side sender) const;
  Stream* oldest_receiving(Side sender) const;
  void settle(Side sender, Stream& st);
  void wake_held();
  void send_reqmod(Stream& st);
  void send_respmod(Stream& st);
  void send_to_icap(Stream& st, std::optional<exchange::Head> response, std::string body);
  void reqmod_done(std::int32_t down_id, icap::Result r);
  void respmod_done(std::int32_t down_id, icap::Result r);
  void after_callback();
  void flush();
  void check_done();
  void release_if_closed(Stream* st);
  void submit_request(Stream& st);
  void submit_response(Stream& st);
  void answer_error(Stream& st, int status, const std::string& reason);

  RelayIo& io_;
  exchange::Consumer& consumer_;
  std::shared_ptr<const exchange::ConnectionInfo> connection_;
  H2Settings settings_;
  std::size_t high_watermark_;
  std::optional<Refusal> refusal_;
  nghttp2_session* down_ = nullptr;  // owned; toward the client (server role)
  nghttp2_session* up_ = nullptr;    // owned; toward the origin (client role)
  std::unordered_map<std::int32_t, std::unique_ptr<Stream>> streams_;  // by client stream id
  std::unordered_map<std::int32_t, Stream*> up_index_;
  bool client_ended_ = false;
  bool upstream_ended_ = false;
  bool headers_wanted_ = true;  // some consumer reads head fields (exchange::Consumer::wants_headers)
  bool failed_ = false;
  std::int32_t last_down_stream_ = 0;
  IcapOptions icap_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  // for ICAP callbacks
};

}  // namespace sightline::http
