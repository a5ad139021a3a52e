#include "hooks/bus.h"

#include "core/log.h"
#include "metrics/registry.h"

#include <algorithm>

namespace sightline::hooks {

Channel::Channel(std::unique_ptr<Sink> sink, ChannelOptions opts)
    : sink_(std::move(sink)), opts_(opts), wants_(sink_->wants()) {}

Channel::~Channel() { stop(); }

void Channel::start(metrics::Registry* registry, unsigned shard, const metrics::HistogramId* latency) {
  registry_ = registry;
  shard_ = shard;
  latency_ = latency;
  thread_ = std::thread([this] { run(); });
}

void Channel::stop() {
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
}

std::size_t Channel::cost(const ExchangeRecord& rec) {
  std::size_t n = 512 + rec.request_body.size() + rec.response_body.size();
  for (const auto* h : {&rec.request, &rec.response}) {
    n += h->target.size() + h->authority.size();
    for (const auto& f : h->headers) n += f.name.size() + f.value.size() + 32;
  }
  return n;
}

std::size_t Channel::cost(const ConnectionRecord& rec) {
  return 512 + rec.close_reason.size() + rec.policy.size() + rec.upstream_reason.size();
}

Publish Channel::publish(StreamEvent ev) {
  const std::size_t c = cost(ev);
  return enqueue(std::move(ev), c, true);
}

Publish Channel::publish(std::shared_ptr<const ExchangeRecord> rec) {
  const std::size_t c = cost(*rec);
  return enqueue(std::move(rec), c, false);
}

Publish Channel::publish(std::shared_ptr<const ConnectionRecord> rec) {
  const std::size_t c = cost(*rec);
  return enqueue(std::move(rec), c, false);
}

Publish Channel::enqueue(Payload ev, std::size_t c, bool may_pause) {
  bool wake = false;
  Publish result = Publish::queued;
  {
    std::lock_guard lock(mu_);
    if (stopping_) return Publish::dropped;
    std::size_t now = queued_bytes_.load(std::memory_order_relaxed);
    if (now + c > opts_.max_queue_bytes) {
      // Records cannot pause a connection: block mode lets them overshoot to
      // twice the cap, which still bounds the queue.
      bool drop = opts_.on_overflow == Overflow::drop ||
                  (!may_pause && now + c > 2 * opts_.max_queue_bytes);
      if (drop) {
        dropped_.fetch_add(1, std::memory_order_relaxed);
        result = Publish::dropped;
      } else if (may_pause) {
        over_limit_.fetch_add(1, std::memory_order_relaxed);
        result = Publish::over_limit;
      }
    }
    if (result != Publish::dropped) {
      queue_.push_back(Item{std::move(ev), std::chrono::steady_clock::now(), c});
      queued_bytes_.store(now + c, std::memory_order_relaxed);
      wake = consumer_waiting_;
      consumer_waiting_ = false;
    }
  }
  if (wake) cv_.notify_one();
  if (result == Publish::dropped) {
    // One warning per consumer per 10 s, whatever the drop rate.
    auto secs = std::chrono::duration_cast<std::chrono::seconds>(
                    std::chrono::steady_clock::now().time_since_epoch()).count();
    auto last = last_drop_log_.load(std::memory_order_relaxed);
    if (secs - last >= 10 && last_drop_log_.compare_exchange_strong(last, secs))
      log::emit(log::Line(log::Level::warn, "hook_overflow")
                    .str("consumer", name())
                    .num("dropped_total", dropped())
                    .str("msg", "queue full: events dropped (on_overflow = \"drop\")"));
  }
  return result;
}

void Channel::when_drained(std::function<void()> fn) {
  {
    std::lock_guard lock(mu_);
    if (queued_bytes_.load(std::memory_order_relaxed) > opts_.max_queue_bytes / 2 && !stopping_) {
      drained_waiters_.push_back(std::move(fn));
      return;
    }
  }
  fn();
}

void Channel::run() {
  using namespace std::chrono;
  std::deque<Item> batch;
  auto next_tick = steady_clock::now() + seconds(1);
  for (;;) {
    std::vector<std::function<void()>> waiters;
    bool stop_now = false;
    {
      std::unique_lock lock(mu_);
      if (queue_.empty() && !stopping_) {
        consumer_waiting_ = true;
        cv_.wait_until(lock, next_tick, [this] { return !queue_.empty() || stopping_; });
        consumer_waiting_ = false;
        // Woken by a publisher: let a batch gather (publishers do not wake
        // us meanwhile), unless stopping or a blocking queue is filling up.
        if (!queue_.empty() && !stopping_ && opts_.batch_delay.count() > 0 &&
            queued_bytes_.load(std::memory_order_relaxed) < opts_.max_queue_bytes / 2) {
          lock.unlock();
          std::this_thread::sleep_for(opts_.batch_delay);
          lock.lock();
        }
      }
      batch.swap(queue_);
      stop_now = stopping_ && batch.empty();
    }
    std::size_t done_bytes = 0;
    for (auto& item : batch) {
      if (auto* ev = std::get_if<StreamEvent>(&item.ev)) sink_->on_stream(*ev);
      else if (auto* ex = std::get_if<std::shared_ptr<const ExchangeRecord>>(&item.ev)) sink_->on_exchange(**ex);
      else sink_->on_connection(*std::get<std::shared_ptr<const ConnectionRecord>>(item.ev));
      done_bytes += item.cost;
      events_.fetch_add(1, std::memory_order_relaxed);
      if (registry_ && latency_)
        registry_->observe(shard_, *latency_,
                           duration<double>(steady_clock::now() - item.queued_at).count());
    }
    batch.clear();
    if (done_bytes) {
      std::lock_guard lock(mu_);
      std::size_t left = queued_bytes_.load(std::memory_order_relaxed) - done_bytes;
      queued_bytes_.store(left, std::memory_order_relaxed);
      if (left <= opts_.max_queue_bytes / 2) waiters.swap(drained_waiters_);
    }
    for (auto& w : waiters) w();
    auto now = steady_clock::now();
    if (now >= next_tick) {
      sink_->on_tick(WallClock::now());
      next_tick = now + seconds(1);
    }
    if (stop_now) break;
  }
  std::vector<std::function<void()>> waiters;
  {
    std::lock_guard lock(mu_);
    waiters.swap(drained_waiters_);
  }
  for (auto& w : waiters) w();  // nobody stays paused on a stopped consumer
  sink_->on_stop();
}

void Bus::add(std::unique_ptr<Sink> sink, ChannelOptions opts) {
  channels_.push_back(std::make_unique<Channel>(std::move(sink), opts));
  const Wants& w = channels_.back()->wants();
  wants_exchanges_ = wants_exchanges_ || w.exchanges;
  wants_connections_ = wants_connections_ || w.connections;
  if (w.exchanges) body_cap_ = std::max(body_cap_, w.body_cap);
}

int Bus::find(std::string_view name) const {
  for (std::size_t i = 0; i < channels_.size(); ++i)
    if (channels_[i]->name() == name) return static_cast<int>(i);
  return -1;
}

void Bus::stop() {
  for (auto& c : channels_) c->stop();
}

}  // namespace sightline::hooks
