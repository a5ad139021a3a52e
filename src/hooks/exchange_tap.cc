#include "hooks/exchange_tap.h"

#include "hooks/tap.h"

#include <algorithm>

namespace sightline::hooks {
namespace {

// Microseconds between two points, or -1 when either did not happen.
double micros(exchange::Clock::time_point from, exchange::Clock::time_point to) {
  if (from == exchange::Clock::time_point{} || to == exchange::Clock::time_point{} || to < from) return -1;
  return static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(to - from).count()) / 1e3;
}

// The consumers that want `kind` and that the connection's rule selects.
std::vector<Channel*> selected(const Bus& bus, const std::optional<std::vector<std::string>>* hooks,
                               Kind kind) {
  return select_channels(bus, hooks && *hooks ? &**hooks : nullptr, kind);
}

template <typename Record>
void publish_to(const std::vector<Channel*>& channels, std::shared_ptr<const Record> rec) {
  for (Channel* c : channels) (void)c->publish(rec);
}

}  // namespace

bool ExchangeCapture::start(const exchange::Exchange& ex, const exchange::Head& head) {
  Shard& s = shard(ex.id);
  std::lock_guard lock(s.mu);
  if (s.open.size() >= limits_.max_open) return false;
  ExchangeRecord& rec = s.open[ex.id];
  rec.request = head;
  rec.start = WallClock::now();
  rec.bodies_captured = limits_.body_cap > 0;
  return true;
}

void ExchangeCapture::body(const exchange::Exchange& ex, exchange::Direction dir, std::span<const char> data) {
  if (limits_.body_cap == 0 || data.empty()) return;
  Shard& s = shard(ex.id);
  std::lock_guard lock(s.mu);
  auto it = s.open.find(ex.id);
  if (it == s.open.end()) return;
  std::string& body = dir == exchange::Direction::request ? it->second.request_body : it->second.response_body;
  if (body.size() >= limits_.body_cap) return;
  std::size_t room = std::min(limits_.body_cap - body.size(),
                              limits_.body_budget - std::min(limits_.body_budget, s.body_bytes));
  std::size_t n = std::min(room, data.size());
  body.append(data.data(), n);
  s.body_bytes += n;
}

void ExchangeCapture::response_head(const exchange::Exchange& ex, const exchange::Head& head) {
  // Interim (1xx) heads are not kept; 101 (protocol switch) is final.
  if (head.status >= 100 && head.status < 200 && head.status != 101) return;
  Shard& s = shard(ex.id);
  std::lock_guard lock(s.mu);
  auto it = s.open.find(ex.id);
  if (it == s.open.end()) return;
  it->second.has_response = true;
  it->second.response = head;
}

std::shared_ptr<ExchangeRecord> ExchangeCapture::finish(const exchange::Exchange& ex, bool complete,
                                                        std::string_view reason) {
  auto rec = std::make_shared<ExchangeRecord>();
  bool tracked = false;
  {
    Shard& s = shard(ex.id);
    std::lock_guard lock(s.mu);
    auto it = s.open.find(ex.id);
    if (it != s.open.end()) {
      *rec = std::move(it->second);
      s.body_bytes -= std::min(s.body_bytes, rec->request_body.size() + rec->response_body.size());
      s.open.erase(it);
      tracked = true;
    }
  }
  fill_from_exchange(*rec, ex, complete, reason, tracked);
  return rec;
}

ExchangeTap::ExchangeTap(const Bus& bus, ExchangeTapOptions opts)
    : bus_(bus), capture_({opts.max_open, bus.body_cap(), opts.body_budget}) {}

void ExchangeTap::on_request_head(const exchange::Exchange& ex, const exchange::Head& head) {
  // A rule whose `hooks` option leaves out every exchange consumer costs nothing more.
  if (!ex.connection || selected(bus_, &ex.connection->hooks, Kind::exchanges).empty()) return;
  if (!capture_.start(ex, head)) untracked_.fetch_add(1, std::memory_order_relaxed);
}

void ExchangeTap::on_response_end(const exchange::Exchange& ex, const exchange::Headers&) {
  finish(ex, true, {});
}

void ExchangeTap::on_abort(const exchange::Exchange& ex, std::string_view reason) {
  finish(ex, false, reason);
}

void ExchangeTap::finish(const exchange::Exchange& ex, bool complete, std::string_view reason) {
  auto rec = capture_.finish(ex, complete, reason);
  if (!ex.connection) return;
  auto channels = selected(bus_, &ex.connection->hooks, Kind::exchanges);
  if (channels.empty()) return;
  publish_to<ExchangeRecord>(channels, std::move(rec));
}

void fill_from_exchange(ExchangeRecord& rec, const exchange::Exchange& ex, bool complete,
                        std::string_view reason, bool tracked) {
  rec.id = ex.id;
  rec.connection = ex.connection;
  rec.stream = ex.stream;
  rec.protocol = ex.protocol;
  rec.end = WallClock::now();
  if (!tracked) {
    // Not tracked: what the exchange summary knows.
    rec.request.method = ex.method;
    rec.request.authority = ex.authority;
    rec.request.target = ex.target;
    rec.request.version = ex.protocol;
    if (ex.status) {
      rec.has_response = true;
      rec.response.status = ex.status;
      rec.response.version = ex.protocol;
    }
    rec.start = rec.end;
    if (ex.timing.request_head_in != exchange::Clock::time_point{})
      rec.start -= std::chrono::duration_cast<WallClock::duration>(exchange::Clock::now() -
                                                                   ex.timing.request_head_in);
  }
  rec.request_body_bytes = ex.request_body_bytes;
  rec.response_body_bytes = ex.response_body_bytes;
  rec.request_held_us = micros(ex.timing.request_head_in, ex.timing.request_head_out);
  rec.response_held_us = micros(ex.timing.response_head_in, ex.timing.response_head_out);
  rec.complete = complete;
  rec.abort_reason = std::string(reason);
  rec.icap_reqmod = ex.icap_reqmod;
  rec.icap_respmod = ex.icap_respmod;
  rec.icap_reqmod_ms = ex.icap_reqmod_ms;
  rec.icap_respmod_ms = ex.icap_respmod_ms;
}

}  // namespace sightline::hooks
