#include "metrics/registry.h"

#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <limits>
#include <map>
#include <stdexcept>

namespace sightline::metrics {

enum class Kind { counter, gauge, histogram, callback_gauge, callback_counter };

struct Registry::Series {
  Kind kind;
  std::string name, help;
  Labels labels;
  std::uint32_t index = 0;  // into counters/gauges/hists
  std::function<double()> read;
};

// One histogram: per shard, bucket counts (the last is +Inf) and a sum.
struct Registry::Hist {
  std::vector<double> bounds;
  std::unique_ptr<std::atomic<std::uint64_t>[]> counts;  // shards * (bounds + 1)
  std::unique_ptr<std::atomic<double>[]> sums;           // shards
};

const std::vector<double>& latency_buckets() {
  static const std::vector<double> b = {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                        0.005,   0.01,   0.025,   0.05,   0.1,   0.25,
                                        0.5,     1,      2.5,     5,      10,    30};
  return b;
}

Registry::Registry(unsigned shards) : shards_(std::max(1u, shards)) {}
Registry::~Registry() = default;

CounterId Registry::counter(const std::string& name, const std::string& help, Labels labels) {
  series_.push_back({Kind::counter, name, help, std::move(labels), counter_count_, {}});
  return {counter_count_++};
}

GaugeId Registry::gauge(const std::string& name, const std::string& help, Labels labels) {
  series_.push_back({Kind::gauge, name, help, std::move(labels), gauge_count_, {}});
  return {gauge_count_++};
}

HistogramId Registry::histogram(const std::string& name, const std::string& help, Labels labels,
                                std::vector<double> bounds) {
  auto index = static_cast<std::uint32_t>(hists_.size());
  series_.push_back({Kind::histogram, name, help, std::move(labels), index, {}});
  Hist h;
  h.bounds = std::move(bounds);
  hists_.push_back(std::move(h));
  return {index};
}

void Registry::callback_gauge(const std::string& name, const std::string& help, Labels labels,
                              std::function<double()> read) {
  series_.push_back({Kind::callback_gauge, name, help, std::move(labels), 0, std::move(read)});
}

void Registry::callback_counter(const std::string& name, const std::string& help, Labels labels,
                                std::function<double()> read) {
  series_.push_back({Kind::callback_counter, name, help, std::move(labels), 0, std::move(read)});
}

void Registry::freeze() {
  counters_ = std::make_unique<std::atomic<std::uint64_t>[]>(std::size_t{shards_} * counter_count_);
  gauges_ = std::make_unique<std::atomic<std::int64_t>[]>(std::size_t{shards_} * gauge_count_);
  for (auto& h : hists_) {
    h.counts = std::make_unique<std::atomic<std::uint64_t>[]>(std::size_t{shards_} * (h.bounds.size() + 1));
    h.sums = std::make_unique<std::atomic<double>[]>(shards_);
  }
  frozen_ = true;
}

void Registry::observe(unsigned s, HistogramId id, double value) {
  Hist& h = hists_[id.index];
  std::size_t n = h.bounds.size();
  std::size_t b = static_cast<std::size_t>(std::lower_bound(h.bounds.begin(), h.bounds.end(), value) - h.bounds.begin());
  auto& c = h.counts[std::size_t{s} * (n + 1) + b];
  c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  auto& sum = h.sums[s];
  sum.store(sum.load(std::memory_order_relaxed) + value, std::memory_order_relaxed);
}

std::uint64_t Registry::counter_value(CounterId id) const {
  std::uint64_t v = 0;
  for (unsigned s = 0; s < shards_; ++s)
    v += counters_[std::size_t{s} * counter_count_ + id.index].load(std::memory_order_relaxed);
  return v;
}

std::int64_t Registry::gauge_value(GaugeId id) const {
  std::int64_t v = 0;
  for (unsigned s = 0; s < shards_; ++s)
    v += gauges_[std::size_t{s} * gauge_count_ + id.index].load(std::memory_order_relaxed);
  return v;
}

std::uint64_t Registry::histogram_count(HistogramId id) const {
  const Hist& h = hists_[id.index];
  std::uint64_t v = 0;
  for (unsigned s = 0; s < shards_; ++s)
    for (std::size_t b = 0; b <= h.bounds.size(); ++b)
      v += h.counts[std::size_t{s} * (h.bounds.size() + 1) + b].load(std::memory_order_relaxed);
  return v;
}

std::string Registry::scrape() const {
  // Families keep registration order; series of one name share a family.
  std::vector<prometheus::MetricFamily> families;
  std::map<std::string, std::size_t> by_name;
  for (const auto& s : series_) {
    auto [it, fresh] = by_name.emplace(s.name, families.size());
    if (fresh) {
      prometheus::MetricFamily f;
      f.name = s.name;
      f.help = s.help;
      switch (s.kind) {
        case Kind::counter:
        case Kind::callback_counter: f.type = prometheus::MetricType::Counter; break;
        case Kind::gauge:
        case Kind::callback_gauge: f.type = prometheus::MetricType::Gauge; break;
        case Kind::histogram: f.type = prometheus::MetricType::Histogram; break;
      }
      families.push_back(std::move(f));
    }
    prometheus::ClientMetric m;
    for (const auto& [k, v] : s.labels) m.label.push_back({k, v});
    switch (s.kind) {
      case Kind::counter:
        m.counter.value = static_cast<double>(counter_value({s.index}));
        break;
      case Kind::gauge:
        m.gauge.value = static_cast<double>(gauge_value({s.index}));
        break;
      case Kind::callback_gauge:
        m.gauge.value = s.read();
        break;
      case Kind::callback_counter:
        m.counter.value = s.read();
        break;
      case Kind::histogram: {
        const Hist& h = hists_[s.index];
        std::size_t n = h.bounds.size();
        std::vector<std::uint64_t> per_bucket(n + 1, 0);
        double sum = 0;
        for (unsigned sh = 0; sh < shards_; ++sh) {
          for (std::size_t b = 0; b <= n; ++b)
            per_bucket[b] += h.counts[std::size_t{sh} * (n + 1) + b].load(std::memory_order_relaxed);
          sum += h.sums[sh].load(std::memory_order_relaxed);
        }
        std::uint64_t cumulative = 0;
        for (std::size_t b = 0; b <= n; ++b) {
          cumulative += per_bucket[b];
          m.histogram.bucket.push_back(
              {cumulative, b < n ? h.bounds[b] : std::numeric_limits<double>::infinity()});
        }
        m.histogram.sample_count = cumulative;
        m.histogram.sample_sum = sum;
        break;
      }
    }
    families[it->second].metric.push_back(std::move(m));
  }
  prometheus::TextSerializer serializer;
  return serializer.Serialize(families);
}

}  // namespace sightline::metrics
