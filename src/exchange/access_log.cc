#include "exchange/access_log.h"

#include "core/log.h"

namespace sightline::exchange {
namespace {

// Microseconds between two points, or -1 when either did not happen.
double micros(Clock::time_point from, Clock::time_point to) {
  if (from == Clock::time_point{} || to == Clock::time_point{} || to < from) return -1;
  return static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(to - from).count()) / 1e3;
}

nlohmann::json line(const Exchange& ex) {
  const Timing& t = ex.timing;
  return {{"event", "exchange"},
          {"id", ex.id},
          {"conn", ex.connection ? ex.connection->id : 0},
          {"client", ex.connection ? ex.connection->client : ""},
          {"protocol", ex.protocol},
          {"stream", ex.stream},
          {"method", ex.method},
          {"authority", ex.authority},
          {"target", ex.target},
          {"status", ex.status},
          {"request_body_bytes", ex.request_body_bytes},
          {"response_body_bytes", ex.response_body_bytes},
          {"request_held_us", micros(t.request_head_in, t.request_head_out)},
          {"response_held_us", micros(t.response_head_in, t.response_head_out)},
          {"duration_ms", micros(t.request_head_in, t.end == Clock::time_point{} ? Clock::now() : t.end) / 1e3}};
}

}  // namespace

void AccessLog::on_response_end(const Exchange& ex, const Headers&) {
  auto j = line(ex);
  j["outcome"] = "complete";
  log::emit(log::Level::info, std::move(j));
}

void AccessLog::on_abort(const Exchange& ex, std::string_view reason) {
  auto j = line(ex);
  j["outcome"] = "aborted";
  j["reason"] = reason;
  log::emit(log::Level::warn, std::move(j));
}

}  // namespace sightline::exchange
