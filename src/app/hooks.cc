#include "app/hooks.h"

#include "core/log.h"

namespace sightline::app {

unsigned hook_consumer_count(const Config& cfg) {
  unsigned n = 0;
  if (cfg.pcap.enabled()) ++n;
  return n;
}

bool build_hooks(const Config& cfg, proxy::ProxyContext& ctx, std::string* error) {
  auto open_keylog = [&](const std::string& path, SSL_CTX* tls_ctx, const char* leg,
                         std::unique_ptr<hooks::KeylogFile>& out) {
    if (path.empty()) return true;
    out = hooks::KeylogFile::open(path, error);
    if (!out) return false;
    hooks::enable_keylog_callback(tls_ctx);
    nlohmann::json rules = cfg.keylog.rules;
    // RFC 9850: key logs are for diagnostics; whoever reads this file can
    // decrypt every recorded connection. Say so where operators look.
    log::emit(log::Line(log::Level::warn, "keylog_enabled")
                  .str("leg", leg)
                  .str("file", path)
                  .json("rules", rules)
                  .str("msg", "TLS key logging is ON: this file decrypts the recorded traffic; "
                              "use for diagnostics only and delete it afterwards"));
    return true;
  };
  if (!open_keylog(cfg.keylog.client_file, ctx.tls.client.get(), "client", ctx.keylog_client) ||
      !open_keylog(cfg.keylog.upstream_file, ctx.tls.upstream.get(), "upstream", ctx.keylog_upstream))
    return false;
  ctx.keylog_rules = cfg.keylog.rules;
  return true;
}

void register_hook_metrics(proxy::ProxyContext& ctx, metrics::ProxyMetrics* m) {
  auto& channels = ctx.hooks.channels();
  for (std::size_t i = 0; i < channels.size(); ++i) {
    hooks::Channel* ch = channels[i].get();
    std::string name(ch->name());
    if (m) {
      auto& r = m->registry;
      ctx.hook_latency.push_back(r.histogram("sightline_hook_duration_seconds",
                                             "Hook events from publication to handled, by consumer.",
                                             {{"consumer", name}}, metrics::latency_buckets()));
      r.callback_counter("sightline_hook_events_total", "Hook events handled, by consumer.",
                         {{"consumer", name}}, [ch] { return static_cast<double>(ch->events()); });
      r.callback_counter("sightline_hook_dropped_total",
                         "Hook events dropped because the consumer's queue was full.",
                         {{"consumer", name}}, [ch] { return static_cast<double>(ch->dropped()); });
      r.callback_gauge("sightline_hook_queue_bytes", "Bytes waiting in the consumer's queue.",
                       {{"consumer", name}}, [ch] { return static_cast<double>(ch->queued_bytes()); });
    }
  }
  if (m) {
    if (ctx.keylog_client || ctx.keylog_upstream) {
      for (auto* f : {ctx.keylog_client.get(), ctx.keylog_upstream.get()}) {
        if (!f) continue;
        const char* leg = f == ctx.keylog_client.get() ? "client" : "upstream";
        m->registry.callback_counter("sightline_keylog_lines_total", "Key log lines written, by leg.",
                                     {{"leg", leg}}, [f] { return static_cast<double>(f->lines()); });
        m->registry.callback_counter("sightline_keylog_dropped_total",
                                     "Key log lines lost (queue full or write error), by leg.",
                                     {{"leg", leg}}, [f] { return static_cast<double>(f->dropped()); });
      }
    }
  }
}

void start_hooks(proxy::ProxyContext& ctx, metrics::ProxyMetrics* m) {
  auto& channels = ctx.hooks.channels();
  for (std::size_t i = 0; i < channels.size(); ++i) {
    if (m && i < ctx.hook_latency.size())
      channels[i]->start(&m->registry, m->hook_shard(static_cast<unsigned>(i)), &ctx.hook_latency[i]);
    else
      channels[i]->start(nullptr, 0, nullptr);
  }
}

}  // namespace sightline::app
