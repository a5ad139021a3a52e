// For connections without ALPN: HTTP/1.1 is the usual protocol, but not the
// only one (IMAP, SMTP, custom protocols also run over TLS). The first bytes
// decide: a client that starts with an HTTP method and a space gets the
// HTTP/1.1 codec; anything else, or a server that speaks first, is relayed
// opaquely (stream-level consumers still see it).
#pragma once

#include "http/relay.h"

#include <functional>
#include <memory>
#include <string>

namespace sightline::http {

class SniffRelay final : public Relay {
 public:
  using Factory = std::function<std::unique_ptr<Relay>()>;
  SniffRelay(RelayIo& io, Factory make_http, std::function<void(bool http)> decided)
      : io_(io), make_http_(std::move(make_http)), decided_(std::move(decided)) {}

  void on_data(Side from, std::span<const char> data) override {
    if (inner_) {
      inner_->on_data(from, data);
      return;
    }
    if (from == Side::upstream) {
      decide(false);
      inner_->on_data(from, data);
      return;
    }
    held_.append(data.data(), data.size());
    int verdict = looks_like_http(held_);
    if (verdict < 0) return;  // need more bytes
    decide(verdict == 1);
    std::string held;
    held.swap(held_);
    inner_->on_data(Side::client, held);
  }

  void on_end(Side from, bool clean) override {
    if (!inner_) {
      decide(false);
      if (!held_.empty()) {
        std::string held;
        held.swap(held_);
        inner_->on_data(Side::client, held);
      }
    }
    inner_->on_end(from, clean);
  }

  bool origin_idle() const override { return inner_ && inner_->origin_idle(); }
  bool awaiting_origin() const override { return inner_ && inner_->awaiting_origin(); }
  void trim() override {
    if (inner_) inner_->trim();
  }
  void rebind_connection(std::shared_ptr<const exchange::ConnectionInfo> info) override {
    if (inner_) inner_->rebind_connection(std::move(info));
  }
  void on_writable(Side to) override {
    if (inner_) inner_->on_writable(to);
  }

  // 1: an HTTP request line starts here; 0: not HTTP; -1: undecided yet.
  static int looks_like_http(std::string_view s) {
    constexpr std::size_t kMaxMethod = 20;
    for (std::size_t i = 0; i < s.size() && i <= kMaxMethod; ++i) {
      char c = s[i];
      if (c == ' ') return i > 0 ? 1 : 0;
      if (c < 'A' || c > 'Z') return 0;
    }
    return s.size() > kMaxMethod ? 0 : -1;
  }

 private:
  void decide(bool http) {
    inner_ = http ? make_http_() : std::make_unique<OpaqueRelay>(io_);
    if (decided_) decided_(http);
  }

  RelayIo& io_;
  Factory make_http_;
  std::function<void(bool)> decided_;
  std::unique_ptr<Relay> inner_;
  std::string held_;  // at most kMaxMethod + 1 bytes
};

}  // namespace sightline::http
