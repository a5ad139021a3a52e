// One JSON log line per finished or aborted exchange: the proxy's access log.
#pragma once

#include "exchange/exchange.h"

namespace sightline::exchange {

class AccessLog final : public Consumer {
 public:
  void on_request_head(const Exchange&, const Head&) override {}
  void on_body(const Exchange&, Direction, std::span<const char>) override {}
  void on_request_end(const Exchange&, const Headers&) override {}
  void on_response_head(const Exchange&, const Head&) override {}
  void on_response_end(const Exchange& ex, const Headers& trailers) override;
  void on_abort(const Exchange& ex, std::string_view reason) override;
  bool wants_headers(const ConnectionInfo&) const override { return false; }
};

}  // namespace sightline::exchange
