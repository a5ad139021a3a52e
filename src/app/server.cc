#include "app/server.h"

#include "app/hooks.h"
#include "app/privileges.h"
#include "archive/keys.h"
#include "archive/tap.h"
#include "hooks/exchange_tap.h"
#include "app/worker.h"
#include "core/log.h"
#include "core/uv_handle.h"
#include "exchange/access_log.h"
#include "metrics/admin_server.h"
#include "metrics/exchange_metrics.h"
#include "metrics/proxy_metrics.h"
#include "net/address.h"
#include "sightline_build.h"
#include "tls/contexts.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <csignal>
#include <filesystem>
#include <memory>
#include <thread>

namespace sightline::app {
namespace {

// The compliance archive: opens (and recovers) it before any traffic, and
// adds its tap to the exchange feed.
bool start_archive(const Config& cfg, proxy::ProxyContext& ctx, exchange::Fanout& fanout, std::string* error) {
  const ArchiveConfig& ac = cfg.archive;
  std::string why;
  auto key = archive::load_signing_key(ac.key, &why);
  if (!key) {
    if (error) *error = "archive.key: " + why;
    return false;
  }
  archive::ServiceOptions so;
  so.writer.dir = ac.dir;
  so.writer.writer_id = ac.writer_id;
  if (so.writer.writer_id.empty()) {
    char host[256] = {};
    gethostname(host, sizeof host - 1);
    for (char* p = host; *p; ++p)
      if (!std::isalnum(static_cast<unsigned char>(*p)) && *p != '_' && *p != '.') *p = '_';
    so.writer.writer_id = *host ? host : "sightline";
  }
  so.writer.max_bytes = ac.max_segment_bytes;
  so.writer.max_age = std::chrono::duration_cast<std::chrono::seconds>(ac.max_segment_age);
  so.writer.sync = *archive::parse_sync_mode(ac.sync);  // checked when parsed
  so.writer.sync_interval = ac.sync_interval;
  so.commit_delay = ac.commit_delay;
  so.queue_bytes = static_cast<std::size_t>(ac.queue_bytes);
  so.fail_open = ac.on_failure == "open";
  so.retention_days = static_cast<unsigned>(ac.retention_days);
  so.writer.compression = ac.compression < 0 ? archive::Compression{} : archive::Compression::zlib(ac.compression);
  so.writer.compression.min_bytes = static_cast<std::size_t>(ac.compress_min_bytes);
  if (ac.s3.enabled()) {
    const ArchiveS3Config& sc = ac.s3;
    archive::ShipperOptions sh;
    sh.ship.dir = ac.dir;
    sh.ship.node_id = sc.node_id.empty() ? so.writer.writer_id : sc.node_id;
    if (sc.lock_mode == "none") sh.ship.lock_mode.reset();
    else if (sc.lock_mode == "governance") sh.ship.lock_mode = archive::s3::LockMode::governance;
    sh.ship.retention = sc.retention.count() > 0
                            ? std::chrono::duration_cast<std::chrono::seconds>(sc.retention)
                            : std::chrono::seconds(static_cast<std::int64_t>(ac.retention_days) * 86400);
    sh.ship.legal_hold = sc.legal_hold;
    sh.ship.multipart_threshold = sc.multipart_threshold;
    sh.ship.part_size = sc.part_size;
    sh.client.target = *archive::s3::parse_target(sc.url, sc.virtual_host, &why);  // checked when parsed
    auto creds = archive::s3::resolve_credentials(sc.access_key, sc.secret_key, sc.credentials_file, &why);
    if (!creds) {
      if (error) *error = "archive.s3: " + why;
      return false;
    }
    sh.client.credentials = std::move(*creds);
    sh.client.region = sc.region;
    sh.client.ca_file = sc.ca_file;
    sh.interval = sc.interval;
    sh.backoff_max = sc.backoff_max;
    sh.ready_backlog_bytes = sc.ready_backlog_bytes;
    sh.ready_backlog_age = std::chrono::duration_cast<std::chrono::seconds>(sc.ready_backlog_age);
    if (sc.delete_local_after.count() > 0)
      sh.delete_local_after = std::chrono::duration_cast<std::chrono::seconds>(sc.delete_local_after);
    // Retention moves to the shipper: nothing unshipped is ever deleted.
    sh.retention_days = so.retention_days;
    so.retention_days = 0;
    sh.signing_key = tls::up_ref(key.get());
    ctx.archive_shipper = archive::ArchiveShipper::start(std::move(sh), &why);
    if (!ctx.archive_shipper) {
      if (error) *error = "archive.s3: " + why;
      return false;
    }
    so.on_sealed = [s = ctx.archive_shipper.get()] { s->poke(); };
    so.writer.ship_journal = ctx.archive_shipper->journal_path();
    log::emit(log::Line(log::Level::info, "archive_s3_enabled")
                  .str("url", archive::s3::to_string(*archive::s3::parse_target(sc.url, sc.virtual_host, &why)))
                  .str("node", sc.node_id.empty() ? so.writer.writer_id : sc.node_id)
                  .str("lock_mode", sc.lock_mode));
  }
  ctx.archive = archive::ArchiveService::start(so, std::move(key), &why);
  if (!ctx.archive) {
    if (error) *error = "archive: " + why;
    return false;
  }
  ctx.archive_all = ac.all;
  fanout.add(std::make_shared<archive::ArchiveTap>(*ctx.archive,
                                                   archive::TapOptions{static_cast<std::size_t>(ac.max_body)}));
  log::emit(log::Line(log::Level::info, "archive_enabled")
                .str("dir", ac.dir)
                .str("writer", so.writer.writer_id)
                .str("sync", ac.sync)
                .str("on_failure", ac.on_failure)
                .boolean("all", ac.all)
                .num("max_body", ac.max_body)
                .num("retention_days", ac.retention_days));
  return true;
}

// What the identity files hold (counts only: never a name or a hash).
void log_identity(const identity::IdentityStore& store, std::string_view event, const char* trigger) {
  auto dir = store.current();
  log::Line l(log::Level::info, event);
  if (trigger) l.str("result", "ok").str("trigger", trigger);
  if (dir->credentials) l.str("credentials", store.files().credentials).num("users", dir->credentials->size());
  if (dir->user_map) l.str("user_map", store.files().user_map).num("user_map_entries", dir->user_map->size());
  if (dir->groups) l.str("groups", store.files().groups).num("group_count", dir->groups->group_count());
  log::emit(l);
}

bool build_context(const Config& cfg, proxy::ProxyContext& ctx, [[maybe_unused]] metrics::ProxyMetrics& m,
                   std::string* error) {
#if SIGHTLINE_METRICS
  ctx.metrics = &m;
#endif
  auto& s = ctx.settings;
  s.connect_timeout = cfg.connect_timeout;
  s.handshake_timeout = cfg.handshake_timeout;
  s.idle_timeout = cfg.idle_timeout;
  s.first_byte_timeout = cfg.first_byte_timeout;
  for (const auto& l : cfg.listeners) ctx.own_addresses.push_back(l.addr);
  if (auto admin = net::parse_listen_address(cfg.admin_listen)) ctx.own_addresses.push_back(*admin);
  {
    std::string why;
    auto rules = policy::AccessRules::build(cfg.access, why);
    if (!rules) {
      if (error) *error = "access: " + why;
      return false;
    }
    rules->add_own_endpoints(ctx.own_addresses);
    ctx.access = std::make_unique<policy::AccessRules>(std::move(*rules));
  }
  if (cfg.max_connections != 0 || cfg.max_connections_per_client != 0)
    ctx.limits = std::make_unique<net::ConnectionLimits>(cfg.max_connections, cfg.max_connections_per_client);
  s.max_request_head = cfg.max_request_head;
  s.max_client_hello = cfg.max_client_hello;
  s.relay_high_watermark = cfg.relay_high_watermark;
  s.on_invalid = cfg.on_invalid;
  s.refuse_with_alert = cfg.refuse_with_alert;
  s.upstream_alpn = cfg.upstream_alpn;
  s.upstream_reuse = cfg.upstream_reuse;
  s.origin_pool.idle_timeout = cfg.upstream_reuse_idle;
  s.origin_pool.per_origin = cfg.upstream_reuse_per_origin;
  s.release_idle_after = cfg.upstream_release_idle ? cfg.upstream_release_idle_after
                                                   : std::chrono::milliseconds(0);
  s.h1.max_head = cfg.max_http_head;
  s.h1.max_trailers = cfg.max_http_head;
  s.via = cfg.via;
  s.h2.max_concurrent_streams = cfg.h2_max_concurrent_streams;
  s.h2.initial_window_size = cfg.h2_initial_window_size;
  s.h2.connection_window_size = cfg.h2_connection_window_size;
  s.h2.max_header_list_size = cfg.h2_max_header_list_size;
  s.h2.header_table_size = cfg.h2_header_table_size;

  auto fanout = std::make_shared<exchange::Fanout>();
#if SIGHTLINE_METRICS
  fanout->add(std::make_shared<metrics::ExchangeMetrics>(m));
#endif
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
  if (cfg.client_tickets) opts.client_ticket_lifetime = cfg.client_ticket_lifetime;
  opts.upstream_ca_file = cfg.upstream_ca_file;
  opts.upstream_crl_file = cfg.upstream_crl_file;
  opts.upstream_min_tls13 = cfg.upstream_min_tls13;
  if (!tls::build_contexts(opts, ctx.tls, error)) return false;

  std::vector<std::string> policy_files = cfg.policy_files;
  if (!cfg.policy_files_configured && policy_files.empty() &&
      std::filesystem::exists("policies/default.toml"))
    policy_files.push_back("policies/default.toml");
  if (!policy_files.empty()) {
    // A rule naming an ICAP service that does not exist would silently
    // skip inspection: refuse the policy instead.
    std::vector<std::string> icap_names;
    for (const auto& c : cfg.icap.all_services()) icap_names.push_back(c.name);
    auto validate = [icap_names](const policy::Policy& p, policy::PolicyError& err) {
      for (const auto& rule : p.rules())
        for (const auto& name : rule.options.icap.value_or(std::vector<std::string>{}))
          if (std::find(icap_names.begin(), icap_names.end(), name) == icap_names.end()) {
            err.message = rule.file + ":" + std::to_string(rule.line) + ": rule \"" + rule.name +
                          "\" names ICAP service \"" + name + "\", which is not configured";
            return false;
          }
      return true;
    };
    ctx.policies = std::make_unique<policy::PolicyStore>(policy_files, std::move(validate));
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
  if (cfg.identity.enabled()) {
    const auto& ic = cfg.identity;
    ctx.identity = std::make_unique<identity::IdentityStore>(
        identity::IdentityFiles{ic.credentials, ic.user_map, ic.groups}, ic.realm, ic.cache_ttl);
    std::vector<std::string> errors;
    if (!ctx.identity->reload(errors)) {
      if (error) *error = "identity: " + errors.front();
      return false;
    }
    log_identity(*ctx.identity, "identity_loaded", nullptr);
  }
  ctx.auto_bypass = std::make_unique<policy::AutoBypass>(cfg.auto_bypass_ttl, cfg.auto_bypass_entries,
                                                        cfg.auto_bypass_threshold, cfg.auto_bypass_window);

  ctx.leaf_keys = std::make_unique<tls::LeafKeyPool>(cfg.leaf_key_lifetime);
  if (!ctx.leaf_keys->start(error)) return false;
  ctx.cert_cache = std::make_unique<tls::CertCache>(cfg.cert_cache_entries);
  if (!build_hooks(cfg, ctx, error)) return false;
  if (cfg.icap.enabled()) {
    ctx.icap.max_body = cfg.icap.max_body;
    for (const auto& c : cfg.icap.all_services()) {
      proxy::IcapServiceSettings svc;
      svc.name = c.name;
      svc.method = c.method == "reqmod" ? icap::Method::reqmod : icap::Method::respmod;
      svc.fail_closed = c.fail == "closed";
      svc.config.url = *icap::parse_service_url(c.url, nullptr);  // checked when parsed
      svc.config.connect_timeout = cfg.icap.connect_timeout;
      svc.config.response_timeout = cfg.icap.response_timeout;
      svc.config.max_body = static_cast<std::size_t>(cfg.icap.max_body);
      // An adapted body may be somewhat larger than what was sent.
      svc.config.limits.max_body =
          std::max<std::size_t>(svc.config.limits.max_body, svc.config.max_body + (1u << 20));
      if (ctx.metrics) ctx.metrics->add_icap_service(c.name, c.method);
      log::emit(log::Line(log::Level::info, "icap_enabled")
                    .str("service", c.name)
                    .str("method", c.method)
                    .str("url", c.url)
                    .str("fail", c.fail)
                    .num("max_body", cfg.icap.max_body));
      ctx.icap.services.push_back(std::move(svc));
    }
  }
  if (cfg.archive.enabled() && !start_archive(cfg, ctx, *fanout, error)) return false;
  // Exchange records are assembled only when a hook consumer wants them.
  if (ctx.hooks.wants_exchanges()) fanout->add(std::make_shared<hooks::ExchangeTap>(ctx.hooks));
  return true;
}

struct StopState {
  std::vector<std::unique_ptr<Worker>>* workers = nullptr;
  int signals = 0;
  bool draining = false;
  core::UvHandle<uv_timer_t> drain_timer;
  std::chrono::milliseconds drain_timeout{30'000};
};

std::string status_json(const proxy::ProxyContext& ctx, const std::vector<std::unique_ptr<Worker>>& workers,
                        std::chrono::steady_clock::time_point started, bool draining) {
  std::size_t active = 0;
  for (const auto& w : workers) active += w->sessions();
  nlohmann::json j = {
      {"version", SIGHTLINE_VERSION},
      {"uptime_seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count()},
      {"workers", workers.size()},
      {"active_connections", active},
      {"draining", draining},
      {"ca", ctx.ca.subject},
      {"cert_cache_entries", ctx.cert_cache->size()},
      {"auto_bypass_entries", ctx.auto_bypass ? ctx.auto_bypass->size() : 0},
      {"archive", {{"state", "disabled"}}},
  };
  if (const auto* a = ctx.archive.get()) {
    const auto& st = a->stats();
    j["archive"] = {{"state", a->failing() ? "failing" : "ok"},
                    {"dir", a->dir()},
                    {"on_failure", a->fail_open() ? "open" : "closed"},
                    {"written", st.written.load()},
                    {"queued", st.queued.load()},
                    {"queued_bytes", st.queued_bytes.load()},
                    {"failures", st.failures.load()},
                    {"dropped", st.dropped.load()}};
    if (a->failing()) j["archive"]["error"] = a->failure();
  }
  if (ctx.policies) {
    auto pol = ctx.policies->current();
    nlohmann::json files = nlohmann::json::array();
    for (const auto& src : pol->sources())
      files.push_back({{"path", src.path}, {"sha256", src.sha256}, {"names", src.names}});
    j["policy"] = {{"generation", ctx.policies->generation()}, {"rules", pol->rules().size()},
                   {"default", policy::to_string(pol->default_action())}, {"files", files}};
  } else {
    j["policy"] = nullptr;
  }
  return j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

metrics::ProxyMetrics* g_metrics = nullptr;  // main-thread use only (reloads)

// Reloads the policy files; the previous policy stays in force on error.
void reload_policies(policy::PolicyStore& store, const char* trigger) {
  policy::PolicyError err;
  bool ok = store.reload(err);
  if (g_metrics)
    g_metrics->registry.inc(g_metrics->registry.main_shard(),
                            ok ? g_metrics->policy_reload_ok : g_metrics->policy_reload_error);
  if (ok) {
    auto pol = store.current();
    log::emit(log::Level::info, {{"event", "policy_reload"}, {"result", "ok"}, {"trigger", trigger},
                                 {"generation", store.generation()}, {"rules", pol->rules().size()},
                                 {"names", pol->name_count()}});
  } else {
    log::emit(log::Level::error, {{"event", "policy_reload"}, {"result", "error"},
                                  {"trigger", trigger}, {"msg", err.message}});
  }
}

// Reloads the identity files; each file that fails keeps its previous version.
void reload_identity(identity::IdentityStore& store, const char* trigger) {
  std::vector<std::string> errors;
  bool ok = store.reload(errors);
  if (g_metrics)
    g_metrics->registry.inc(g_metrics->registry.main_shard(),
                            ok ? g_metrics->identity_reload_ok : g_metrics->identity_reload_error);
  if (ok) log_identity(store, "identity_reload", trigger);
  for (const auto& e : errors)
    log::emit(log::Line(log::Level::error, "identity_reload").str("result", "error").str("trigger", trigger).str("msg", e));
}

// SIGHUP reloads everything that reloads.
void on_sighup(uv_signal_t* h, int) {
  auto& ctx = *static_cast<proxy::ProxyContext*>(h->data);
  if (ctx.policies) reload_policies(*ctx.policies, "SIGHUP");
  if (ctx.identity) reload_identity(*ctx.identity, "SIGHUP");
  if (!ctx.policies && !ctx.identity) log::info("reload", "SIGHUP: no policy or identity files configured, nothing to reload");
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

  // Watches stay on directories that are still needed, so no change made
  // while a reload was reading the files can slip between two watches.
  void rewatch() {
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
    std::erase_if(watches_, [&](const Watch& w) {
      return std::find(dirs.begin(), dirs.end(), w.dir) == dirs.end();
    });
    for (const auto& d : dirs) {
      if (std::any_of(watches_.begin(), watches_.end(), [&](const Watch& w) { return w.dir == d; }))
        continue;
      Watch w{d, {}};
      if (w.handle.init(uv_fs_event_init, loop_) != 0) continue;
      w.handle.get()->data = this;
      if (uv_fs_event_start(w.handle.get(), on_event, d.c_str(), 0) != 0) continue;
      watches_.push_back(std::move(w));
    }
  }

 private:
  static void on_event(uv_fs_event_t* h, const char* filename, int, int) {
    auto* self = static_cast<PolicyWatcher*>(h->data);
    // Kubernetes updates a mounted ConfigMap by swapping its "..data" link:
    // that event names no policy file but changes all of them.
    if (filename && std::string_view(filename) != "..data" &&
        std::find(self->names_.begin(), self->names_.end(), filename) == self->names_.end())
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
  struct Watch {
    std::string dir;
    core::UvHandle<uv_fs_event_t> handle;
  };
  std::vector<Watch> watches_;
  std::vector<std::string> names_;
};

}  // namespace

// An intercepted connection holds two descriptors; the soft limit (often
// 1024) goes up to the hard one, and a limit that cannot hold
// limits.max_connections is said at startup rather than found as accept
// errors under load.
void raise_fd_limit(const Config& cfg) {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
  }
  std::uint64_t want = cfg.max_connections * 2 + 1024;
  if (cfg.max_connections != 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want)
    log::emit(log::Level::warn, {{"event", "fd_limit"}, {"limit", static_cast<std::uint64_t>(rl.rlim_cur)},
                                 {"max_connections", cfg.max_connections}, {"wanted", want},
                                 {"msg", "the descriptor limit (LimitNOFILE) cannot hold limits.max_connections"}});
}

int run_server(const Config& cfg) {
  const auto started = std::chrono::steady_clock::now();
  raise_fd_limit(cfg);
  unsigned n = cfg.workers ? cfg.workers : std::max(1u, std::thread::hardware_concurrency());
  metrics::ProxyMetrics m(n, hook_consumer_count(cfg));
  proxy::ProxyContext ctx;
  std::string error;
  if (!build_context(cfg, ctx, m, &error)) {
    log::emit(log::Level::error, {{"event", "startup_failed"}, {"msg", error}});
    return 1;
  }
  // Values that live elsewhere, read at scrape time.
  m.registry.callback_gauge("sightline_cert_cache_entries", "Forged certificates cached.", {},
                            [&ctx] { return static_cast<double>(ctx.cert_cache->size()); });
  m.registry.callback_gauge("sightline_auto_bypass_entries", "Pinned (client, name) pairs bypassed now.", {},
                            [&ctx] { return static_cast<double>(ctx.auto_bypass->size()); });
  m.registry.callback_gauge("sightline_policy_rules", "Rules in the policy in force.", {}, [&ctx] {
    return ctx.policies ? static_cast<double>(ctx.policies->current()->rules().size()) : 0.0;
  });
  m.registry.callback_gauge("sightline_workers", "Worker threads.", {},
                            [n] { return static_cast<double>(n); });
  m.registry.callback_counter("sightline_log_lines_dropped_total",
                              "Log lines dropped because a thread's log queue was full.", {},
                              [] { return static_cast<double>(log::dropped_lines()); });
  register_hook_metrics(ctx, ctx.metrics);
  if (const auto* a = ctx.archive.get()) {
    const auto& st = a->stats();
    auto counter = [&m](const char* name, const char* help, const std::atomic<std::uint64_t>& v) {
      m.registry.callback_counter(name, help, {}, [&v] { return static_cast<double>(v.load()); });
    };
    counter("sightline_archive_exchanges_total", "Exchanges written to the compliance archive.", st.written);
    counter("sightline_archive_bytes_total", "HTTP bytes (heads and captured bodies) written to the archive.",
            st.bytes);
    counter("sightline_archive_failures_total", "Archive write, sync or seal attempts that failed.", st.failures);
    counter("sightline_archive_pruned_total", "Sealed segments deleted by archive.retention_days.", st.pruned);
    counter("sightline_archive_dropped_total",
            "Exchanges not archived: on_failure = \"open\" while failing, or unwritable at shutdown.", st.dropped);
    m.registry.callback_gauge("sightline_archive_queue_depth", "Exchanges waiting to be written to the archive.", {},
                              [&st] { return static_cast<double>(st.queued.load()); });
    m.registry.callback_gauge("sightline_archive_queue_bytes", "Bytes waiting to be written to the archive.", {},
                              [&st] { return static_cast<double>(st.queued_bytes.load()); });
    m.registry.callback_gauge("sightline_archive_failing", "1 while archive writes fail.", {},
                              [a] { return a->failing() ? 1.0 : 0.0; });
  }
  if (const auto* sh = ctx.archive_shipper.get()) {
    const auto& ss = sh->stats();
    auto counter = [&m](const char* name, const char* help, const std::atomic<std::uint64_t>& v) {
      m.registry.callback_counter(name, help, {}, [&v] { return static_cast<double>(v.load()); });
    };
    counter("sightline_archive_s3_segments_total", "Sealed segments shipped to S3 and confirmed.", ss.segments);
    counter("sightline_archive_s3_files_total", "Segment files uploaded (or adopted) and confirmed.", ss.files);
    counter("sightline_archive_s3_bytes_total", "Bytes of confirmed segment files.", ss.bytes);
    counter("sightline_archive_s3_adopted_total",
            "Files found already in the store after a crash, journaled without a second upload.", ss.adopted);
    counter("sightline_archive_s3_failed_passes_total", "Shipping passes that left segments behind.", ss.failures);
    counter("sightline_archive_s3_local_deleted_total",
            "Local segments deleted once shipped (delete_local_after, or retention_days).", ss.local_deleted);
    m.registry.callback_gauge("sightline_archive_s3_backlog_segments", "Sealed segments not yet shipped.", {},
                              [&ss] { return static_cast<double>(ss.backlog_segments.load()); });
    m.registry.callback_gauge("sightline_archive_s3_backlog_bytes", "Bytes of sealed segments not yet shipped.", {},
                              [&ss] { return static_cast<double>(ss.backlog_bytes.load()); });
    m.registry.callback_gauge("sightline_archive_s3_backlog_age_seconds",
                              "Seconds since the oldest unshipped segment was sealed.", {},
                              [&ss] { return static_cast<double>(ss.backlog_age_s.load()); });
    m.registry.callback_gauge("sightline_archive_s3_last_success_timestamp_seconds",
                              "Unix time of the last shipping pass that left nothing behind.", {},
                              [&ss] { return static_cast<double>(ss.last_success_unix.load()); });
  }
  m.registry.freeze();
  g_metrics = &m;
  start_hooks(ctx, ctx.metrics);

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
  stop.drain_timeout = cfg.drain_timeout;

  // Worker threads wake the main loop as they end; it stops when all have.
  core::UvHandle<uv_async_t> workers_done;
  workers_done.init(uv_async_init, &main_loop, [](uv_async_t* a) {
    auto* st = static_cast<StopState*>(a->data);
    for (auto& w : *st->workers)
      if (!w->finished()) return;
    uv_stop(a->loop);
  });
  workers_done.get()->data = &stop;
  for (auto& w : workers) {
    uv_async_t* a = workers_done.get();
    w->set_on_exit([a] { uv_async_send(a); });
  }

  // SIGTERM/SIGINT: stop accepting and let connections in flight finish,
  // up to drain_timeout; then close the rest. A second signal exits at once.
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
      std::size_t active = 0;
      for (auto& w : *st->workers) active += w->sessions();
      log::emit(log::Level::info, {{"event", "shutdown"}, {"signal", signo}, {"draining", active},
                                   {"drain_timeout_ms", st->drain_timeout.count()}});
      st->draining = true;
      for (auto& w : *st->workers) w->drain();
      st->drain_timer.init(uv_timer_init, h->loop);
      st->drain_timer.get()->data = st;
      uv_timer_start(st->drain_timer.get(), [](uv_timer_t* t) {
        auto* s2 = static_cast<StopState*>(t->data);
        log::emit(log::Level::warn, {{"event", "shutdown"}, {"msg", "drain timeout: closing the remaining connections"}});
        for (auto& w : *s2->workers) w->stop();
      }, static_cast<std::uint64_t>(st->drain_timeout.count()), 0);
      uv_unref(st->drain_timer.handle());
    }, signum);
    signals.push_back(std::move(sig));
  }

  metrics::AdminServer admin(&main_loop);
  if (!cfg.admin_listen.empty()) {
    admin.route("/metrics", [&m] {
      return metrics::AdminServer::Response{200, "text/plain; version=0.0.4; charset=utf-8", m.registry.scrape()};
    });
    admin.route("/healthz", [] { return metrics::AdminServer::Response{200, "text/plain; charset=utf-8", "ok\n"}; });
    admin.route("/readyz", [&ctx, &workers, &stop] {
      std::string why;
      if (stop.draining) why += "draining\n";
      for (auto& w : workers)
        if (w->finished()) why += "worker stopped\n";
      if (ctx.policies && !ctx.policies->current()) why += "no policy loaded\n";
      if (ctx.archive_shipper) why += ctx.archive_shipper->not_ready();
      if (!why.empty()) return metrics::AdminServer::Response{503, "text/plain; charset=utf-8", why};
      return metrics::AdminServer::Response{200, "text/plain; charset=utf-8", "ready\n"};
    });
    admin.route("/status", [&ctx, &workers, &stop, started] {
      return metrics::AdminServer::Response{200, "application/json", status_json(ctx, workers, started, stop.draining)};
    });
    auto addr = net::parse_listen_address(cfg.admin_listen);
    std::string why;
    if (!addr || !admin.listen(*addr, &why)) {
      log::emit(log::Level::error, {{"event", "startup_failed"}, {"msg", "admin listener " + cfg.admin_listen + ": " + why}});
      for (auto& w : workers) w->stop();
      return 1;
    }
  }

  // SIGHUP must not kill the process even when nothing reloads.
  core::UvHandle<uv_signal_t> hup;
  hup.init(uv_signal_init, &main_loop);
  hup.get()->data = &ctx;
  uv_signal_start(hup.get(), on_sighup, SIGHUP);
  std::unique_ptr<PolicyWatcher> watcher;
  if (ctx.policies) watcher = std::make_unique<PolicyWatcher>(&main_loop, *ctx.policies);
  // Ticket keys past their use are wiped even when no client connects.
  core::UvHandle<uv_timer_t> ticket_key_expiry;
  if (ctx.tls.client_ticket_keys) {
    ticket_key_expiry.init(uv_timer_init, &main_loop);
    ticket_key_expiry.get()->data = ctx.tls.client_ticket_keys.get();
    uv_timer_start(ticket_key_expiry.get(), [](uv_timer_t* t) {
      static_cast<tls::TicketKeys*>(t->data)->expire(tls::TicketKeys::Clock::now());
    }, 60'000, 60'000);
    uv_unref(ticket_key_expiry.handle());
  }

  // Everything that needs root is done: listeners bound, keys and files read.
  if (!cfg.run_as_user.empty()) {
    bool keep_net_admin = std::any_of(cfg.listeners.begin(), cfg.listeners.end(), [](const ListenerConfig& l) {
      return l.mode == ListenerMode::tproxy && l.spoof_source;
    });
    std::string why;
    if (!drop_privileges(cfg.run_as_user, cfg.run_as_group, keep_net_admin, &why)) {
      log::emit(log::Level::error, {{"event", "startup_failed"}, {"msg", why}});
      for (auto& w : workers) w->stop();
      return 1;
    }
    log::emit(log::Level::info, {{"event", "privileges_dropped"}, {"user", cfg.run_as_user},
                                 {"uid", static_cast<std::uint64_t>(getuid())},
                                 {"gid", static_cast<std::uint64_t>(getgid())},
                                 {"cap_net_admin", keep_net_admin}});
  }

  for (auto& w : workers) w->start_thread();
  for (const auto& l : cfg.listeners)
    log::emit(log::Level::info, {{"event", "listening"}, {"address", l.address},
                                 {"mode", l.mode == ListenerMode::static_target ? "static"
                                          : l.mode == ListenerMode::redirect   ? "redirect"
                                          : l.mode == ListenerMode::tproxy     ? "tproxy"
                                                                               : "explicit"},
                                 {"proxy_protocol", l.proxy_protocol}, {"workers", n},
                                 {"version", SIGHTLINE_VERSION}, {"ca", ctx.ca.subject}});
  if (!cfg.admin_listen.empty())
    log::emit(log::Level::info, {{"event", "listening"}, {"address", cfg.admin_listen}, {"mode", "admin"}});

  uv_run(&main_loop, UV_RUN_DEFAULT);
  for (auto& w : workers) w->join();
  // Workers no longer publish: consumers finish their queues (PCAP files
  // closed whole). Before the workers are destroyed, because a blocking
  // consumer's drained callback posts to a worker (dropped once it stopped).
  ctx.hooks.stop();
  // Every exchange has ended: write what is queued and seal the segment.
  if (ctx.archive) ctx.archive->stop();
  // The last seal's segment is shipped by the next start: a shutdown does
  // not wait for the store (the transfer in progress is aborted).
  if (ctx.archive_shipper) ctx.archive_shipper->stop();
  admin.close();
  workers.clear();
  signals.clear();
  watcher.reset();
  ticket_key_expiry.reset();
  hup.reset();
  workers_done.reset();
  stop.drain_timer.reset();
  g_metrics = nullptr;
  uv_run(&main_loop, UV_RUN_DEFAULT);  // close callbacks of the main loop's handles
  uv_loop_close(&main_loop);
  ctx.leaf_keys->stop();
  if (ctx.keylog_client) ctx.keylog_client->stop();
  if (ctx.keylog_upstream) ctx.keylog_upstream->stop();
  log::emit(log::Level::info, {{"event", "stopped"}});
  return 0;
}

}  // namespace sightline::app
