// The hook bus: workers publish stream events; each consumer (Sink) gets them
// on its own thread through its own bounded queue, so a slow consumer costs
// its own queue, never an event loop.
//
// A full queue either drops the event (counted, logged at most once per
// interval) or, for consumers configured with on_overflow = "block", accepts
// it and tells the publisher to stop reading from that connection until the
// queue has drained below half: back-pressure instead of loss. The queue can
// then exceed its cap by what connections had already read (bounded by one
// read per connection).
//
// Exchange and connection records cannot pause anything (they are published
// when an exchange or connection ends): in block mode they are still queued
// up to twice the cap, then dropped like in drop mode.
#pragma once

#include "hooks/events.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <variant>
#include <vector>

namespace sightline::metrics {
class Registry;
struct HistogramId;
}  // namespace sightline::metrics

namespace sightline::hooks {

enum class Overflow { drop, block };

struct ChannelOptions {
  std::size_t max_queue_bytes = 64u << 20;
  Overflow on_overflow = Overflow::drop;
  // After a wake-up the consumer waits this long before taking the queue, so
  // one wake-up (a futex call and two context switches) serves a batch of
  // events instead of one: at 20,000 requests/s, per-event wake-ups cost
  // more CPU than writing the PCAP. Zero: take events as they come.
  std::chrono::microseconds batch_delay{2000};
};

enum class Publish { queued, dropped, over_limit };

class Channel {
 public:
  Channel(std::unique_ptr<Sink> sink, ChannelOptions opts);
  ~Channel();
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  std::string_view name() const { return sink_->name(); }
  const ChannelOptions& options() const { return opts_; }
  const Wants& wants() const { return wants_; }

  // Starts the consumer thread. `latency` (optional) receives each event's
  // time from publish to handled, recorded from `shard` of `registry`.
  void start(metrics::Registry* registry, unsigned shard, const metrics::HistogramId* latency);
  // Handles everything queued, then Sink::on_stop(), then joins.
  void stop();

  // Any thread. over_limit: queued, but the publisher should pause the
  // connection and call when_drained() (block mode only).
  Publish publish(StreamEvent ev);
  // Records are shared by every consumer they go to; never over_limit.
  Publish publish(std::shared_ptr<const ExchangeRecord> rec);
  Publish publish(std::shared_ptr<const ConnectionRecord> rec);
  // Runs `fn` (on the consumer thread) once the queue is below half its cap;
  // at once if it already is.
  void when_drained(std::function<void()> fn);

  std::uint64_t events() const { return events_.load(std::memory_order_relaxed); }
  std::uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }
  // Publications that crossed the limit of a blocking consumer (each pauses a connection).
  std::uint64_t over_limit() const { return over_limit_.load(std::memory_order_relaxed); }
  std::size_t queued_bytes() const { return queued_bytes_.load(std::memory_order_relaxed); }

 private:
  using Payload = std::variant<StreamEvent, std::shared_ptr<const ExchangeRecord>,
                               std::shared_ptr<const ConnectionRecord>>;
  struct Item {
    Payload ev;
    std::chrono::steady_clock::time_point queued_at;
    std::size_t cost = 0;
  };
  void run();
  Publish enqueue(Payload ev, std::size_t cost, bool may_pause);
  static std::size_t cost(const StreamEvent& ev) { return ev.bytes.size() + 128; }
  static std::size_t cost(const ExchangeRecord& rec);
  static std::size_t cost(const ConnectionRecord& rec);

  std::unique_ptr<Sink> sink_;
  ChannelOptions opts_;
  Wants wants_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  std::vector<std::function<void()>> drained_waiters_;
  bool stopping_ = false;
  bool consumer_waiting_ = false;
  std::atomic<std::size_t> queued_bytes_{0};
  std::atomic<std::uint64_t> events_{0}, dropped_{0}, over_limit_{0};
  std::atomic<std::int64_t> last_drop_log_{0};
  metrics::Registry* registry_ = nullptr;
  unsigned shard_ = 0;
  const metrics::HistogramId* latency_ = nullptr;
  std::thread thread_;
};

// All configured consumers. Built at startup, fixed afterwards.
class Bus {
 public:
  void add(std::unique_ptr<Sink> sink, ChannelOptions opts);
  std::vector<std::unique_ptr<Channel>>& channels() { return channels_; }
  // Channels are thread-safe to publish to, hence usable from a const Bus.
  const std::vector<std::unique_ptr<Channel>>& channels() const { return channels_; }
  bool empty() const { return channels_.empty(); }
  // Whether any consumer wants exchange / connection records, and the
  // largest body capture any of them asked for.
  bool wants_exchanges() const { return wants_exchanges_; }
  bool wants_connections() const { return wants_connections_; }
  std::size_t body_cap() const { return body_cap_; }
  // Index of the consumer called `name`, or -1.
  int find(std::string_view name) const;
  void stop();

 private:
  std::vector<std::unique_ptr<Channel>> channels_;
  bool wants_exchanges_ = false;
  bool wants_connections_ = false;
  std::size_t body_cap_ = 0;
};

}  // namespace sightline::hooks
