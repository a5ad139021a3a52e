// Feeds HTTP exchange events into the metrics: exchanges by protocol and
// status class, exchange duration, the time each head was held by the
// proxy, and open HTTP/2 streams. Stateless: it only reads the Exchange.
#pragma once

#include "exchange/exchange.h"
#include "metrics/proxy_metrics.h"

namespace sightline::metrics {

class ExchangeMetrics final : public exchange::Consumer {
 public:
  explicit ExchangeMetrics(ProxyMetrics& m) : m_(m) {}

  void on_request_head(const exchange::Exchange& ex, const exchange::Head&) override;
  void on_body(const exchange::Exchange&, exchange::Direction, std::span<const char>) override {}
  void on_request_end(const exchange::Exchange&, const exchange::Headers&) override {}
  void on_response_head(const exchange::Exchange&, const exchange::Head&) override {}
  void on_response_end(const exchange::Exchange& ex, const exchange::Headers&) override;
  void on_abort(const exchange::Exchange& ex, std::string_view reason) override;
  bool wants_headers(const exchange::ConnectionInfo&) const override { return false; }

 private:
  void finish(const exchange::Exchange& ex, bool aborted);
  ProxyMetrics& m_;
};

}  // namespace sightline::metrics
