#include "app/server.h"

#include "app/worker.h"
#include "core/log.h"
#include "core/uv_handle.h"
#include "exchange/access_log.h"
#include "sightline_build.h"
#include "tls/contexts.h"

#include <algorithm>
#include <csignal>
#include <filesystem>
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

  std::vector<std::string> policy_files = cfg.policy_files;
  if (!cfg.policy_files_configured && policy_files.empty() &&
      std::filesystem::exists("policies/default.toml"))
    policy_files.push_back("policies/default.toml");
  if (!policy_files.empty()) {
    ctx.policies = std::make_unique<policy::PolicyStore>(policy_files);
    policy::PolicyError perr;
    if (!ctx.policies->reload(perr)) {
      if (error) *error = "policy: " + perr.message;
      return false;
    }
    auto pol = ctx.policies->current();
    log::emit(log::Level::info, {{"event", "policy_loaded"}, {"files", policy_files},
                                 {"rules", pol->rules().size()}, {"names", pol->name_count()},
                                 {"default", policy::to_string(pol->default_action())}});
  } else {
    log::warn("policy", "no policy files configured: every connection is inspected");
  }
  ctx.auto_bypass = std::make_unique<policy::AutoBypass>(cfg.auto_bypass_ttl, cfg.auto_bypass_entries);

  ctx.leaf_keys = std::make_unique<tls::LeafKeyPool>(cfg.leaf_key_lifetime);
  if (!ctx.leaf_keys->start(error)) return false;
  ctx.cert_cache = std::make_unique<tls::CertCache>(cfg.cert_cache_entries);
  return true;
}

struct StopState {
  std::vector<std::unique_ptr<Worker>>* workers = nullptr;
  int signals = 0;
};

// Reloads the policy files; the previous policy stays in force on error.
void reload_policies(policy::PolicyStore& store, const char* trigger) {
  policy::PolicyError err;
  if (store.reload(err)) {
    auto pol = store.current();
    log::emit(log::Level::info, {{"event", "policy_reload"}, {"result", "ok"}, {"trigger", trigger},
                                 {"generation", store.generation()}, {"rules", pol->rules().size()},
                                 {"names", pol->name_count()}});
  } else {
    log::emit(log::Level::error, {{"event", "policy_reload"}, {"result", "error"},
                                  {"trigger", trigger}, {"msg", err.message}});
  }
}

// Watches the directories of every policy and list file (editors replace
// files by renaming, which a watch on the file itself would miss) and
// reloads once things have been quiet for a moment.
class PolicyWatcher {
 public:
  PolicyWatcher(uv_loop_t* loop, policy::PolicyStore& store) : loop_(loop), store_(store) {
    debounce_.init(uv_timer_init, loop_);
    debounce_.get()->data = this;
    rewatch();
  }

  void rewatch() {
    watches_.clear();
    names_.clear();
    std::vector<std::string> dirs;
    auto pol = store_.current();
    if (!pol) return;
    for (const auto& src : pol->sources()) {
      std::filesystem::path p(src.path);
      names_.push_back(p.filename().string());
      std::string dir = p.parent_path().empty() ? "." : p.parent_path().string();
      if (std::find(dirs.begin(), dirs.end(), dir) == dirs.end()) dirs.push_back(dir);
    }
    for (const auto& d : dirs) {
      core::UvHandle<uv_fs_event_t> w;
      if (w.init(uv_fs_event_init, loop_) != 0) continue;
      w.get()->data = this;
      if (uv_fs_event_start(w.get(), on_event, d.c_str(), 0) != 0) continue;
      watches_.push_back(std::move(w));
    }
  }

 private:
  static void on_event(uv_fs_event_t* h, const char* filename, int, int) {
    auto* self = static_cast<PolicyWatcher*>(h->data);
    if (filename && std::find(self->names_.begin(), self->names_.end(), filename) == self->names_.end())
      return;
    uv_timer_start(self->debounce_.get(), [](uv_timer_t* t) {
      auto* w = static_cast<PolicyWatcher*>(t->data);
      reload_policies(w->store_, "file change");
      w->rewatch();
    }, 200, 0);
  }

  uv_loop_t* loop_;
  policy::PolicyStore& store_;
  core::UvHandle<uv_timer_t> debounce_;
  std::vector<core::UvHandle<uv_fs_event_t>> watches_;
  std::vector<std::string> names_;
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

  core::UvHandle<uv_signal_t> hup;
  std::unique_ptr<PolicyWatcher> watcher;
  if (ctx.policies) {
    hup.init(uv_signal_init, &main_loop);
    hup.get()->data = ctx.policies.get();
    uv_signal_start(hup.get(), [](uv_signal_t* h, int) {
      reload_policies(*static_cast<policy::PolicyStore*>(h->data), "SIGHUP");
    }, SIGHUP);
    watcher = std::make_unique<PolicyWatcher>(&main_loop, *ctx.policies);
  } else {
    // Nothing to reload; SIGHUP must still not kill the process.
    hup.init(uv_signal_init, &main_loop);
    uv_signal_start(hup.get(), [](uv_signal_t*, int) {
      log::info("reload", "SIGHUP: no policy files configured, nothing to reload");
    }, SIGHUP);
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
  watcher.reset();
  hup.reset();
  uv_run(&main_loop, UV_RUN_NOWAIT);  // let the signal handles' close callbacks run
  uv_loop_close(&main_loop);
  ctx.leaf_keys->stop();
  log::emit(log::Level::info, {{"event", "stopped"}});
  return 0;
}

}  // namespace sightline::app
