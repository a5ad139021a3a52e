// One worker thread: its own libuv loop, its own SO_REUSEPORT listeners, and
// the sessions accepted on them. Nothing here is shared with other workers
// except the read-only ProxyContext and its thread-safe cache and key pool.
#pragma once

#include "app/config.h"
#include "core/uv_handle.h"
#include "proxy/context.h"
#include "proxy/session.h"

#include <uv.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace sightline::app {

class Worker final : public proxy::SessionHost {
 public:
  Worker(unsigned index, const proxy::ProxyContext& ctx);
  ~Worker() override;
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Creates the loop and binds the listeners on the calling thread, so bind
  // errors are reported before any thread starts.
  bool bind(const std::vector<ListenerConfig>& listeners, std::string* error);
  void start_thread();
  // Thread-safe: closes listeners and sessions; the thread then ends.
  void stop();
  // Thread-safe: stops accepting; the thread ends when the last session does.
  void drain();
  void join();
  // Called on the worker thread as it ends (e.g. to wake the main loop).
  void set_on_exit(std::function<void()> fn) { on_exit_ = std::move(fn); }
  bool finished() const { return finished_.load(std::memory_order_acquire); }
  std::size_t sessions() const { return session_count_.load(std::memory_order_relaxed); }

  uv_loop_t* loop() override { return &loop_; }
  std::span<char> read_buffer() override { return {read_buf_.get(), kReadBuffer}; }
  std::span<char> plain_buffer() override { return {plain_buf_.get(), kPlainBuffer}; }
  void post(std::function<void()> fn) override;
  void session_closed(std::uint64_t id) override;
  net::UpstreamPool& upstream_pool() override { return *pool_; }
  proxy::OriginPool& origin_pool() override { return *origins_; }
  tls::UpstreamSessionCache& upstream_sessions() override { return tls_sessions_; }
  icap::IcapService* icap_service(std::size_t index) override;

 private:
  static constexpr std::size_t kReadBuffer = 64 * 1024;
  static constexpr std::size_t kPlainBuffer = 16 * 1024;
  static constexpr std::size_t kPoolBuffer = 16 * 1024 + 512;

  static void on_connection(uv_stream_t* server, int status);
  void on_async();
  void shutdown_on_loop();
  void finish_on_loop();
  void close_icap();

  unsigned index_;
  const proxy::ProxyContext& ctx_;
  uv_loop_t loop_{};
  bool loop_ready_ = false;
  core::UvHandle<uv_async_t> async_;
  struct ListenerSlot {
    Worker* worker;
    proxy::ListenerInfo info;
  };
  std::vector<core::UvHandle<uv_tcp_t>> listeners_;
  std::vector<std::unique_ptr<ListenerSlot>> listener_slots_;
  std::unordered_map<std::uint64_t, std::shared_ptr<proxy::Session>> sessions_;
  std::uint64_t next_id_ = 0;
  std::unique_ptr<char[]> read_buf_;
  std::unique_ptr<char[]> plain_buf_;
  std::unique_ptr<net::UpstreamPool> pool_;
  std::unique_ptr<proxy::OriginPool> origins_;
  std::unique_ptr<char[]> pool_buf_;  // parked origins' reads (TLS housekeeping only)
  tls::UpstreamSessionCache tls_sessions_{4096};
  // Created lazily on this loop; shut down and released before the loop
  // closes (their pooled connections and timers would keep it running).
  std::vector<std::unique_ptr<icap::IcapService>> icap_services_;  // by service index
  bool icap_closed_ = false;

  std::mutex post_mu_;  // this worker's inbox only
  std::vector<std::function<void()>> inbox_;
  bool stop_requested_ = false;
  bool drain_requested_ = false;
  bool stopped_ = false;
  bool draining_ = false;  // loop thread only
  std::function<void()> on_exit_;
  std::atomic<bool> finished_{false};
  std::atomic<std::size_t> session_count_{0};
  std::thread thread_;
};

}  // namespace sightline::app
