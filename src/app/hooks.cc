#include "app/hooks.h"

#include "core/log.h"
#include "hooks/event_feed.h"
#include "hooks/pcap_sink.h"

namespace sightline::app {

unsigned hook_consumer_count(const Config& cfg) {
  unsigned n = 0;
  if (cfg.pcap.enabled()) ++n;
  if (cfg.events.enabled()) ++n;
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

  if (cfg.pcap.enabled()) {
    hooks::PcapOptions po;
    po.dir = cfg.pcap.dir;
    po.format = cfg.pcap.format == "pcap" ? hooks::pcap::Format::pcap : hooks::pcap::Format::pcapng;
    po.max_file_bytes = cfg.pcap.max_file_bytes;
    po.max_file_age = std::chrono::duration_cast<std::chrono::seconds>(cfg.pcap.max_file_age);
    po.max_files = static_cast<std::size_t>(cfg.pcap.max_files);
    for (auto [from, to] : cfg.pcap.port_map) po.port_map[from] = to;
    po.over_ip_listen = cfg.pcap.over_ip;
    auto sink = hooks::PcapSink::create(po, error);
    if (!sink) {
      if (error) *error = "pcap: " + *error;
      return false;
    }
    hooks::ChannelOptions co;
    co.max_queue_bytes = static_cast<std::size_t>(cfg.pcap.queue_bytes);
    co.on_overflow = cfg.pcap.on_overflow == "block" ? hooks::Overflow::block : hooks::Overflow::drop;
    hooks::PcapSink* raw = sink.get();
    ctx.hooks.add(std::move(sink), co);
    ctx.pcap = raw;
    log::emit(log::Line(log::Level::warn, "pcap_enabled")
                  .str("dir", cfg.pcap.dir)
                  .str("format", cfg.pcap.format)
                  .str("over_ip", cfg.pcap.over_ip)
                  .str("on_overflow", cfg.pcap.on_overflow)
                  .str("msg", "decrypted traffic is being written as PCAP"));
  }
  if (cfg.events.enabled()) {
    hooks::EventFeedOptions eo;
    eo.socket_path = cfg.events.socket;
    eo.mode = cfg.events.mode;
    eo.include_bodies = cfg.events.include_bodies;
    eo.body_cap = static_cast<std::size_t>(cfg.events.body_cap);
    auto sink = hooks::EventFeedSink::create(eo, error);
    if (!sink) {
      if (error) *error = "events: " + *error;
      return false;
    }
    hooks::ChannelOptions co;
    co.max_queue_bytes = static_cast<std::size_t>(cfg.events.queue_bytes);
    co.on_overflow = cfg.events.on_overflow == "block" ? hooks::Overflow::block : hooks::Overflow::drop;
    ctx.events = sink.get();
    ctx.hooks.add(std::move(sink), co);
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", cfg.events.mode & 07777u);
    log::emit(log::Line(cfg.events.include_bodies ? log::Level::warn : log::Level::info, "events_enabled")
                  .str("socket", cfg.events.socket)
                  .str("mode", mode)
                  .boolean("include_bodies", cfg.events.include_bodies)
                  .num("body_cap", cfg.events.include_bodies ? cfg.events.body_cap : std::uint64_t{0})
                  .str("on_overflow", cfg.events.on_overflow)
                  .str("msg", cfg.events.include_bodies
                                  ? "JSON event feed with decrypted bodies: protect the socket like the traffic"
                                  : "JSON event feed of connection and exchange metadata"));
  }
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
      r.callback_counter("sightline_hook_backpressure_total",
                         "Times a connection was paused because this consumer's queue was full "
                         "(on_overflow = \"block\").",
                         {{"consumer", name}}, [ch] { return static_cast<double>(ch->over_limit()); });
      r.callback_gauge("sightline_hook_queue_bytes", "Bytes waiting in the consumer's queue.",
                       {{"consumer", name}}, [ch] { return static_cast<double>(ch->queued_bytes()); });
    }
  }
  if (m && ctx.pcap) {
    auto* p = ctx.pcap;
    auto& r = m->registry;
    r.callback_counter("sightline_pcap_packets_total", "Synthetic packets written (files and PCAP-over-IP).", {},
                       [p] { return static_cast<double>(p->packets()); });
    r.callback_counter("sightline_pcap_bytes_total", "Bytes written to PCAP files.", {},
                       [p] { return static_cast<double>(p->bytes_written()); });
    r.callback_counter("sightline_pcap_files_total", "PCAP files opened.", {},
                       [p] { return static_cast<double>(p->files_opened()); });
    r.callback_counter("sightline_pcap_write_errors_total", "Failed PCAP file opens or writes.", {},
                       [p] { return static_cast<double>(p->write_errors()); });
    r.callback_counter("sightline_pcap_readers_dropped_total", "PCAP-over-IP readers dropped for being slow.", {},
                       [p] { return static_cast<double>(p->readers_dropped()); });
  }
  if (m && ctx.events) {
    auto* e = ctx.events;
    auto& r = m->registry;
    r.callback_gauge("sightline_events_readers", "Readers connected to the JSON event feed.", {},
                     [e] { return static_cast<double>(e->readers()); });
    r.callback_counter("sightline_events_readers_dropped_total",
                       "Event feed readers disconnected for being slow.", {},
                       [e] { return static_cast<double>(e->readers_dropped()); });
    r.callback_counter("sightline_events_records_total", "Records written to the event feed, by type.",
                       {{"type", "exchange"}}, [e] { return static_cast<double>(e->exchange_records()); });
    r.callback_counter("sightline_events_records_total", "Records written to the event feed, by type.",
                       {{"type", "connection"}}, [e] { return static_cast<double>(e->connection_records()); });
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
