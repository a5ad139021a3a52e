#include "app/server.h"

#include "app/worker.h"
#include "core/log.h"
#include "core/uv_handle.h"
#include "exchange/access_log.h"
#include "sightline_build.h"
#include "tls/contexts.h"

#include <csignal>
#include <memory>
#include <thread>

namespace sightline::app {
namespace {

bool build_context(const Config& cfg, proxy::ProxyContext& ctx, std::string* error) {
  auto& s = ctx.settings;
  s.connect_timeout = cfg.connect_timeout;
  s.handshake_timeout = cfg.handshake_timeout;
  s.idle_timeout = cfg.idle_timeout;
  s.max_request_head = cfg.max_request_head;
  s.max_client_hello = cfg.max_client_hello;
  s.relay_high_watermark = cfg.relay_high_watermark;
  s.on_invalid = cfg.on_invalid;
  s.refuse_with_alert = cfg.refuse_with_alert;
  s.upstream_alpn = cfg.upstream_alpn;
  s.h1.max_head = cfg.max_http_head;
  s.h1.max_trailers = cfg.max_http_head;
  s.via = cfg.via;
  s.h2.max_concurrent_streams = cfg.h2_max_concurrent_streams;
  s.h2.initial_window_size = cfg.h2_initial_window_size;
  s.h2.connection_window_size = cfg.h2_connection_window_size;
  s.h2.max_header_list_size = cfg.h2_max_header_list_size;
  s.h2.header_table_size = cfg.h2_header_table_size;

  auto fanout = std::make_shared<exchange::Fanout>();
  if (cfg.log_exchanges) fanout->add(std::make_shared<exchange::AccessLog>());
  ctx.exchanges = fanout;

  auto ca = tls::load_issuing_ca(cfg.ca_cert, cfg.ca_key, error);
  if (!ca) return false;
  ctx.ca = std::move(*ca);
  auto untrusted = tls::make_untrusted_ca(error);
  if (!untrusted) return false;
  ctx.untrusted_ca = std::move(*untrusted);

  tls::ContextOptions opts;
  opts.client_min_tls13 = cfg.client_min_tls13;
  opts.upstream_ca_file = cfg.upstream_ca_file;
  opts.upstream_crl_file = cfg.upstream_crl_file;
  opts.upstream_min_tls13 = cfg.upstream_min_tls13;
  if (!tls::build_contexts(opts, ctx.tls, error)) return false;

  ctx.leaf_keys = std::make_unique<tls::LeafKeyPool>(cfg.leaf_key_lifetime);
  if (!ctx.leaf_keys->start(error)) return false;
  ctx.cert_cache = std::make_unique<tls::CertCache>(cfg.cert_cache_entries);
  return true;
}

struct StopState {
  std::vector<std::unique_ptr<Worker>>* workers = nullptr;
  int signals = 0;
};

}  // namespace

int run_server(const Config& cfg) {
  proxy::ProxyContext ctx;
  std::string error;
  if (!build_context(cfg, ctx, &error)) {
    log::emit(log::Level::error, {{"event", "startup_failed"}, {"msg", error}});
    return 1;
  }

  unsigned n = cfg.workers ? cfg.workers : std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::unique_ptr<Worker>> workers;
  for (unsigned i = 0; i < n; ++i) {
    workers.push_back(std::make_unique<Worker>(i, ctx));
    if (!workers.back()->bind(cfg.listeners, &error)) {
      log::emit(log::Level::error, {{"event", "startup_failed"}, {"msg", error}});
      return 1;
    }
  }

  uv_loop_t main_loop;
  uv_loop_init(&main_loop);
  StopState stop;
  stop.workers = &workers;
  std::vector<core::UvHandle<uv_signal_t>> signals;
  for (int signum : {SIGINT, SIGTERM}) {
    core::UvHandle<uv_signal_t> sig;
    sig.init(uv_signal_init, &main_loop);
    sig.get()->data = &stop;
    uv_signal_start(sig.get(), [](uv_signal_t* h, int signo) {
      auto* st = static_cast<StopState*>(h->data);
      if (++st->signals > 1) {
        log::emit(log::Level::warn, {{"event", "shutdown"}, {"msg", "second signal: exiting now"}});
        log::stop();
        std::_Exit(0);
      }
      log::emit(log::Level::info, {{"event", "shutdown"}, {"signal", signo}});
      for (auto& w : *st->workers) w->stop();
      uv_stop(h->loop);
    }, signum);
    signals.push_back(std::move(sig));
  }

  for (auto& w : workers) w->start_thread();
  for (const auto& l : cfg.listeners)
    log::emit(log::Level::info, {{"event", "listening"}, {"address", l.address},
                                 {"mode", "explicit"}, {"workers", n},
                                 {"version", SIGHTLINE_VERSION}, {"ca", ctx.ca.subject}});

  uv_run(&main_loop, UV_RUN_DEFAULT);
  for (auto& w : workers) w->join();
  workers.clear();
  signals.clear();
  uv_run(&main_loop, UV_RUN_NOWAIT);  // let the signal handles' close callbacks run
  uv_loop_close(&main_loop);
  ctx.leaf_keys->stop();
  log::emit(log::Level::info, {{"event", "stopped"}});
  return 0;
}

}  // namespace sightline::app
