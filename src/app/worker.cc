#include "app/worker.h"

#include "core/log.h"
#include "net/listener.h"

namespace sightline::app {

Worker::Worker(unsigned index, const proxy::ProxyContext& ctx)
    : index_(index),
      ctx_(ctx),
      read_buf_(std::make_unique<char[]>(kReadBuffer)),
      plain_buf_(std::make_unique<char[]>(kPlainBuffer)) {}

Worker::~Worker() {
  join();
  if (loop_ready_) {
    // Close whatever is left (a failed bind leaves listeners) and let the
    // close callbacks run before the loop goes.
    listeners_.clear();
    async_.reset();
    pool_.reset();
    origins_.reset();
    close_icap();
    uv_run(&loop_, UV_RUN_DEFAULT);
    uv_loop_close(&loop_);
  }
}

bool Worker::bind(const std::vector<ListenerConfig>& listeners, std::string* error) {
  if (uv_loop_init(&loop_) != 0) {
    if (error) *error = "uv_loop_init failed";
    return false;
  }
  loop_ready_ = true;
  pool_ = std::make_unique<net::UpstreamPool>(&loop_, std::chrono::seconds(30), 8, 256);
  std::function<void(proxy::PoolEvent)> on_pool_event;
  if (metrics::ProxyMetrics* m = ctx_.metrics) {
    unsigned shard = index_;
    on_pool_event = [m, shard](proxy::PoolEvent e) {
      m->registry.inc(shard, m->origin_pool_events[metrics::idx(e)]);
      if (e == proxy::PoolEvent::parked) m->registry.add(shard, m->origin_pool_idle, 1);
      else if (e != proxy::PoolEvent::full) m->registry.add(shard, m->origin_pool_idle, -1);
    };
  }
  pool_buf_ = std::make_unique<char[]>(kPoolBuffer);
  origins_ = std::make_unique<proxy::OriginPool>(&loop_, ctx_.settings.origin_pool,
                                                 std::span<char>(pool_buf_.get(), kPoolBuffer),
                                                 std::move(on_pool_event));
  if (int rc = async_.init(uv_async_init, &loop_, [](uv_async_t* a) {
        static_cast<Worker*>(a->data)->on_async();
      });
      rc != 0) {
    if (error) *error = std::string("uv_async_init: ") + uv_strerror(rc);
    return false;
  }
  async_.get()->data = this;
  for (const auto& l : listeners) {
    std::string why;
    auto slot = std::make_unique<ListenerSlot>();
    slot->worker = this;
    slot->info.address = l.address;
    if (l.mode == ListenerMode::static_target) {
      slot->info.kind = proxy::ListenerKind::static_target;
      slot->info.static_target = true;
      slot->info.target = *net::parse_host_port(l.target);
    } else if (l.mode == ListenerMode::redirect) {
      slot->info.kind = proxy::ListenerKind::redirect;
    } else if (l.mode == ListenerMode::tproxy) {
      slot->info.kind = proxy::ListenerKind::tproxy;
    }
    slot->info.spoof_source = l.spoof_source;
    slot->info.proxy_protocol = l.proxy_protocol;
    auto h = net::listen_reuseport(&loop_, l.addr, 1024, on_connection, slot.get(), &why,
                                   l.mode == ListenerMode::tproxy);
    listener_slots_.push_back(std::move(slot));
    if (!h) {
      if (error) *error = "listen on " + l.address + ": " + why;
      return false;
    }
    listeners_.push_back(std::move(h));
  }
  return true;
}

void Worker::start_thread() {
  thread_ = std::thread([this] {
    uv_run(&loop_, UV_RUN_DEFAULT);
    finished_.store(true, std::memory_order_release);
    if (on_exit_) on_exit_();
  });
}

void Worker::stop() {
  {
    std::lock_guard lock(post_mu_);
    if (stopped_ || stop_requested_) return;
    stop_requested_ = true;
  }
  uv_async_send(async_.get());
}

void Worker::drain() {
  {
    std::lock_guard lock(post_mu_);
    if (stopped_ || drain_requested_) return;
    drain_requested_ = true;
  }
  uv_async_send(async_.get());
}

void Worker::join() {
  if (thread_.joinable()) thread_.join();
}

void Worker::post(std::function<void()> fn) {
  {
    std::lock_guard lock(post_mu_);
    if (stopped_) return;
    inbox_.push_back(std::move(fn));
  }
  uv_async_send(async_.get());
}

void Worker::on_async() {
  std::vector<std::function<void()>> tasks;
  bool stopping, draining;
  {
    std::lock_guard lock(post_mu_);
    tasks.swap(inbox_);
    stopping = stop_requested_ && !stopped_;
    if (stopping) stopped_ = true;
    draining = drain_requested_ && !draining_ && !stopped_;
  }
  for (auto& t : tasks) t();
  if (stopping) {
    shutdown_on_loop();
  } else if (draining) {
    // Stop accepting; sessions in flight finish on their own.
    draining_ = true;
    listeners_.clear();
    origins_->clear(true);  // nothing parked may keep the loop running
    if (sessions_.empty()) finish_on_loop();
  }
}

void Worker::finish_on_loop() {
  {
    std::lock_guard lock(post_mu_);
    stopped_ = true;
  }
  listeners_.clear();
  pool_->clear();
  origins_->clear(true);
  close_icap();
  async_.reset();
}

void Worker::shutdown_on_loop() {
  listeners_.clear();
  pool_->clear();
  origins_->clear(true);
  // Copy: aborting a session may release it from the map.
  std::vector<std::shared_ptr<proxy::Session>> live;
  live.reserve(sessions_.size());
  for (auto& [id, s] : sessions_) live.push_back(s);
  for (auto& s : live) s->abort("proxy shutting down");
  close_icap();
  async_.reset();
}

icap::IcapService* Worker::icap_service(std::size_t index) {
  const auto& services = ctx_.icap.services;
  if (icap_closed_ || index >= services.size()) return nullptr;
  if (icap_services_.size() < services.size()) icap_services_.resize(services.size());
  auto& svc = icap_services_[index];
  if (!svc) svc = std::make_unique<icap::IcapService>(&loop_, services[index].config);
  return svc.get();
}

void Worker::close_icap() {
  icap_closed_ = true;
  for (auto& svc : icap_services_) {
    if (!svc) continue;
    svc->shutdown();  // callbacks of sessions still open get an error
    svc.reset();
  }
}

void Worker::on_connection(uv_stream_t* server, int status) {
  auto* slot = static_cast<ListenerSlot*>(server->data);
  auto* self = slot->worker;
  if (status < 0) {
    log::emit(log::Level::warn, {{"event", "accept_error"}, {"worker", self->index_},
                                 {"msg", uv_strerror(status)}});
    return;
  }
  std::uint64_t id = (static_cast<std::uint64_t>(self->index_) << 56) | ++self->next_id_;
  auto session = std::make_shared<proxy::Session>(*self, self->ctx_, id, self->index_);
  self->sessions_.emplace(id, session);
  self->session_count_.store(self->sessions_.size(), std::memory_order_relaxed);
  session->start(server, slot->info);
}

void Worker::session_closed(std::uint64_t id) {
  // Deferred: the session may be on the call stack that reported its close.
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  auto keep = std::move(it->second);
  sessions_.erase(it);
  session_count_.store(sessions_.size(), std::memory_order_relaxed);
  if (draining_ && sessions_.empty() && !stopped_) finish_on_loop();
  // Destroyed when the last callback holding it returns.
  (void)keep;
}

}  // namespace sightline::app
