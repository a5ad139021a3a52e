// Metrics recorded without contention: every series has one slot per
// recording thread (each worker, plus one for the main thread), written
// only by that thread with relaxed atomics; a scrape sums the slots and
// serializes the result with prometheus-cpp's text serializer. Series are
// all registered at startup (label values are a fixed, bounded set), so
// recording is an array index, never a lookup or an allocation.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace sightline::metrics {

using Labels = std::vector<std::pair<std::string, std::string>>;

struct CounterId { std::uint32_t index = UINT32_MAX; };
struct GaugeId { std::uint32_t index = UINT32_MAX; };
struct HistogramId { std::uint32_t index = UINT32_MAX; };

// Latency buckets from 50 µs to 30 s.
const std::vector<double>& latency_buckets();

class Registry {
 public:
  // `shards`: number of recording threads (workers + 1 for the main thread).
  explicit Registry(unsigned shards);
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Registration: before freeze(), single-threaded.
  CounterId counter(const std::string& name, const std::string& help, Labels labels = {});
  // A gauge whose slots hold deltas (inc/dec from each thread), summed.
  GaugeId gauge(const std::string& name, const std::string& help, Labels labels = {});
  HistogramId histogram(const std::string& name, const std::string& help, Labels labels,
                        std::vector<double> bounds);
  // A value read at scrape time (cache sizes, build info, totals kept elsewhere).
  void callback_gauge(const std::string& name, const std::string& help, Labels labels,
                      std::function<double()> read);
  void callback_counter(const std::string& name, const std::string& help, Labels labels,
                        std::function<double()> read);
  // Allocates the slots; registration is over.
  void freeze();

  // Recording, from shard `s` only (a worker's index, or main_shard()).
  void inc(unsigned s, CounterId id, std::uint64_t v = 1) {
    auto& a = counters_[static_cast<std::size_t>(s) * counter_count_ + id.index];
    a.store(a.load(std::memory_order_relaxed) + v, std::memory_order_relaxed);
  }
  void add(unsigned s, GaugeId id, std::int64_t delta) {
    auto& a = gauges_[static_cast<std::size_t>(s) * gauge_count_ + id.index];
    a.store(a.load(std::memory_order_relaxed) + delta, std::memory_order_relaxed);
  }
  void observe(unsigned s, HistogramId id, double value);

  unsigned main_shard() const { return shards_ - 1; }
  unsigned shards() const { return shards_; }

  // Prometheus text exposition format (version 0.0.4).
  std::string scrape() const;

  // Sum of a counter or gauge over all shards (tests, /status).
  std::uint64_t counter_value(CounterId id) const;
  std::int64_t gauge_value(GaugeId id) const;
  std::uint64_t histogram_count(HistogramId id) const;

 private:
  struct Series;
  struct Hist;
  unsigned shards_;
  std::vector<Series> series_;  // registration order, for exposition
  std::vector<Hist> hists_;
  std::uint32_t counter_count_ = 0, gauge_count_ = 0;
  std::unique_ptr<std::atomic<std::uint64_t>[]> counters_;
  std::unique_ptr<std::atomic<std::int64_t>[]> gauges_;
  bool frozen_ = false;
};

}  // namespace sightline::metrics
