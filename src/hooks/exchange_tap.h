// Exchange and connection records for the hook bus (the JSON event feed).
//
// ExchangeTap is an exchange::Consumer in the server's Fanout, present only
// when some consumer wants exchange records. It keeps what the exchange
// feed streams past (heads, the first bytes of each body if a consumer asked
// for bodies) until the exchange ends, then publishes one ExchangeRecord to
// the consumers the connection's policy rule selects.
//
// Thread safety: every event of one exchange comes from the worker owning its
// connection, and exchange ids carry that worker's index in their top byte,
// so state lives in one shard per worker; the shard's mutex is never
// contended in practice and only keeps the type honest.
//
// Bounds: at most `max_open` exchanges tracked per worker (beyond that an
// exchange's record is built from its summary alone: no headers, no bodies)
// and at most `body_budget` captured body bytes per worker (beyond that
// bodies are captured no further, flagged truncated).
#pragma once

#include "exchange/exchange.h"
#include "hooks/bus.h"

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace sightline::hooks {

// Fills `rec` with what the exchange's summary says when it ends: ids,
// byte counts, held times, outcome, ICAP. `tracked`: the caller already
// set the heads, bodies and start time it captured; else they come from
// the summary (no headers, no bodies).
void fill_from_exchange(ExchangeRecord& rec, const exchange::Exchange& ex, bool complete,
                        std::string_view reason, bool tracked);

// What the exchange feed streams past for the exchanges being recorded:
// heads, the first bytes of each body, the start time. One shard per worker
// (exchange ids carry the worker index in their top byte), so its mutex is
// never contended in practice and only keeps the type honest.
class ExchangeCapture {
 public:
  struct Limits {
    std::size_t max_open = SIZE_MAX;     // tracked exchanges per worker
    std::size_t body_cap = 0;            // captured bytes per body
    std::size_t body_budget = SIZE_MAX;  // captured body bytes per worker
  };
  explicit ExchangeCapture(Limits limits) : limits_(limits) {}

  // False when the worker's table is full (the exchange is not tracked).
  bool start(const exchange::Exchange& ex, const exchange::Head& head);
  void body(const exchange::Exchange& ex, exchange::Direction dir, std::span<const char> data);
  void response_head(const exchange::Exchange& ex, const exchange::Head& head);
  // The ended exchange's record: what was captured (nothing when it was not
  // tracked) and its summary (fill_from_exchange).
  std::shared_ptr<ExchangeRecord> finish(const exchange::Exchange& ex, bool complete, std::string_view reason);

 private:
  struct Shard {
    std::mutex mu;
    std::unordered_map<std::uint64_t, ExchangeRecord> open;
    std::size_t body_bytes = 0;
  };
  Shard& shard(std::uint64_t id) { return shards_[(id >> 56) & 0xff]; }

  Limits limits_;
  std::array<Shard, 256> shards_;
};

struct ExchangeTapOptions {
  std::size_t max_open = 16384;           // per worker
  std::size_t body_budget = 64ull << 20;  // captured bytes per worker
};

class ExchangeTap final : public exchange::Consumer {
 public:
  // `bus` must outlive the tap and be fully built (its channels are read to
  // select consumers).
  ExchangeTap(const Bus& bus, ExchangeTapOptions opts = {});

  void on_request_head(const exchange::Exchange& ex, const exchange::Head& head) override;
  void on_body(const exchange::Exchange& ex, exchange::Direction dir, std::span<const char> data) override {
    capture_.body(ex, dir, data);
  }
  void on_request_end(const exchange::Exchange&, const exchange::Headers&) override {}
  void on_response_head(const exchange::Exchange& ex, const exchange::Head& head) override {
    capture_.response_head(ex, head);
  }
  void on_response_end(const exchange::Exchange& ex, const exchange::Headers& trailers) override;
  void on_abort(const exchange::Exchange& ex, std::string_view reason) override;

  // Exchanges whose record lacks headers and bodies (tracking table full).
  std::uint64_t untracked() const { return untracked_.load(std::memory_order_relaxed); }

 private:
  void finish(const exchange::Exchange& ex, bool complete, std::string_view reason);

  const Bus& bus_;
  ExchangeCapture capture_;
  std::atomic<std::uint64_t> untracked_{0};
};

}  // namespace sightline::hooks
