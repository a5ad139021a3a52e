#include "exchange/access_log.h"

#include "core/log.h"

namespace sightline::exchange {
namespace {

// Microseconds between two points, or -1 when either did not happen.
double micros(Clock::time_point from, Clock::time_point to) {
  if (from == Clock::time_point{} || to == Clock::time_point{} || to < from) return -1;
  return static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(to - from).count()) / 1e3;
}

log::Line line(log::Level level, const Exchange& ex) {
  const Timing& t = ex.timing;
  log::Line l(level, "exchange");
  l.num("id", ex.id)
      .num("conn", ex.connection ? ex.connection->id : std::uint64_t{0})
      .str("client", ex.connection ? std::string_view(ex.connection->client) : std::string_view())
      .str("user", ex.connection ? std::string_view(ex.connection->user) : std::string_view())
      .str("protocol", ex.protocol)
      .num("stream", static_cast<std::uint64_t>(ex.stream))
      .str("method", ex.method)
      .str("authority", ex.authority)
      .str("target", ex.target)
      .num("status", ex.status)
      .num("request_body_bytes", ex.request_body_bytes)
      .num("response_body_bytes", ex.response_body_bytes)
      .fixed3("request_held_us", micros(t.request_head_in, t.request_head_out))
      .fixed3("response_held_us", micros(t.response_head_in, t.response_head_out))
      .fixed3("duration_ms",
              micros(t.request_head_in, t.end == Clock::time_point{} ? Clock::now() : t.end) / 1e3);
  if (ex.connection && !ex.connection->groups.empty()) l.json("groups", ex.connection->groups);
  if (!ex.icap_reqmod.empty()) l.str("icap_reqmod", ex.icap_reqmod).fixed3("icap_reqmod_ms", ex.icap_reqmod_ms);
  if (!ex.icap_respmod.empty()) l.str("icap_respmod", ex.icap_respmod).fixed3("icap_respmod_ms", ex.icap_respmod_ms);
  return l;
}

}  // namespace

void AccessLog::on_response_end(const Exchange& ex, const Headers&) {
  if (!log::enabled(log::Level::info)) return;
  log::emit(line(log::Level::info, ex).str("outcome", "complete"));
}

void AccessLog::on_abort(const Exchange& ex, std::string_view reason) {
  if (!log::enabled(log::Level::warn)) return;
  log::emit(line(log::Level::warn, ex).str("outcome", "aborted").str("reason", reason));
}

}  // namespace sightline::exchange
