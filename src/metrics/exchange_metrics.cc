#include "metrics/exchange_metrics.h"

namespace sightline::metrics {
namespace {

double seconds(exchange::Clock::time_point from, exchange::Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}
bool set(exchange::Clock::time_point t) { return t != exchange::Clock::time_point{}; }

}  // namespace

void ExchangeMetrics::on_request_head(const exchange::Exchange& ex, const exchange::Head&) {
  if (ex.stream != 0) m_.registry.add(ex.connection->worker, m_.h2_active_streams, 1);
}

void ExchangeMetrics::on_response_end(const exchange::Exchange& ex, const exchange::Headers&) {
  finish(ex, false);
}

void ExchangeMetrics::on_abort(const exchange::Exchange& ex, std::string_view) { finish(ex, true); }

void ExchangeMetrics::finish(const exchange::Exchange& ex, bool aborted) {
  unsigned s = ex.connection ? ex.connection->worker : m_.registry.main_shard();
  Proto proto = ex.protocol == "HTTP/2" ? Proto::http2 : Proto::http1;
  if (ex.stream != 0) m_.registry.add(s, m_.h2_active_streams, -1);
  m_.registry.inc(s, m_.exchanges[idx(proto)][idx(status_class(ex.status, aborted))]);
  const auto& t = ex.timing;
  if (set(t.request_head_in) && set(t.request_head_out))
    m_.registry.observe(s, m_.request_head_held, seconds(t.request_head_in, t.request_head_out));
  if (set(t.response_head_in) && set(t.response_head_out))
    m_.registry.observe(s, m_.response_head_held, seconds(t.response_head_in, t.response_head_out));
  if (!aborted && set(t.request_head_in) && set(t.end))
    m_.registry.observe(s, m_.exchange_duration[idx(proto)], seconds(t.request_head_in, t.end));
}

}  // namespace sightline::metrics
