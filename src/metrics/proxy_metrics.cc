#include "metrics/proxy_metrics.h"

#include "sightline_build.h"

namespace sightline::metrics {
namespace {

constexpr std::array<std::string_view, idx(ConnAction::count)> kActions = {
    "intercept", "bypass", "http", "refuse", "reject", "none", "splice"};
constexpr std::array<std::string_view, idx(Outcome::count)> kOutcomes = {"ok", "refused", "error"};
constexpr std::array<std::string_view, idx(Verdict::count)> kVerdicts = {
    "expired", "not-yet-valid", "hostname-mismatch", "self-signed", "unknown-issuer", "revoked",
    "invalid"};
constexpr std::array<std::string_view, idx(Proto::count)> kProtos = {"http1", "http2"};
constexpr std::array<std::string_view, idx(StatusClass::count)> kClasses = {
    "1xx", "2xx", "3xx", "4xx", "5xx", "aborted"};
constexpr std::array<std::string_view, idx(PolicyAction::count)> kPolicy = {"inspect", "bypass",
                                                                              "block"};
constexpr std::array<std::string_view, idx(AuthResult::count)> kAuth = {"ok", "missing", "invalid", "busy"};

std::string s(std::string_view v) { return std::string(v); }

}  // namespace

ConnAction conn_action(std::string_view a) {
  for (std::size_t i = 0; i < kActions.size(); ++i)
    if (kActions[i] == a) return static_cast<ConnAction>(i);
  return ConnAction::none;
}

Verdict verdict(std::string_view v) {
  for (std::size_t i = 0; i < kVerdicts.size(); ++i)
    if (kVerdicts[i] == v) return static_cast<Verdict>(i);
  return Verdict::invalid;
}

std::string_view to_string(AuthResult r) { return kAuth[idx(r)]; }

StatusClass status_class(int status, bool aborted) {
  if (aborted || status < 100 || status > 599) return StatusClass::aborted;
  return static_cast<StatusClass>(status / 100 - 1);
}

ProxyMetrics::ProxyMetrics(unsigned workers, unsigned hook_consumers)
    : registry(workers + hook_consumers + 1), workers_(workers) {
  auto& r = registry;
  constexpr std::array<std::string_view, idx(Mode::count)> kModes = {"explicit", "static",
                                                                    "transparent"};
  for (std::size_t md = 0; md < kModes.size(); ++md)
    for (std::size_t a = 0; a < kActions.size(); ++a)
      for (std::size_t o = 0; o < kOutcomes.size(); ++o)
        connections[md][a][o] = r.counter(
            "sightline_connections_total", "Client connections ended, by mode, action and outcome.",
            {{"mode", s(kModes[md])}, {"action", s(kActions[a])}, {"outcome", s(kOutcomes[o])}});
  for (std::size_t a = 0; a < kActions.size(); ++a)
    active_connections[a] = r.gauge("sightline_active_connections", "Client connections open now, by action.",
                                    {{"action", s(kActions[a])}});
  for (std::size_t a = 0; a < kActions.size(); ++a) {
    bytes_client_to_server[a] = r.counter("sightline_bytes_total", "Payload bytes relayed, by direction and action.",
                                          {{"direction", "client_to_server"}, {"action", s(kActions[a])}});
    bytes_server_to_client[a] = r.counter("sightline_bytes_total", "Payload bytes relayed, by direction and action.",
                                          {{"direction", "server_to_client"}, {"action", s(kActions[a])}});
  }
  const auto& b = latency_buckets();
  client_handshake = r.histogram("sightline_client_handshake_duration_seconds",
                                 "Complete ClientHello to the client's Finished (includes the upstream leg).", {}, b);
  upstream_connect = r.histogram("sightline_upstream_connect_duration_seconds",
                                 "DNS resolution plus TCP connect to the origin.", {}, b);
  upstream_handshake = r.histogram("sightline_upstream_handshake_duration_seconds",
                                   "TLS handshake with the origin, verification included.", {}, b);
  dns = r.histogram("sightline_dns_duration_seconds", "Name resolution of CONNECT targets.", {}, b);
  forge = r.histogram("sightline_forge_duration_seconds",
                      "Forged-certificate lookup or creation (cache hits included).", {}, b);
  request_head_held = r.histogram("sightline_request_head_held_seconds",
                                  "Time the proxy held a request head before forwarding it.", {}, b);
  response_head_held = r.histogram("sightline_response_head_held_seconds",
                                   "Time the proxy held a response head before forwarding it.", {}, b);
  for (std::size_t p = 0; p < kProtos.size(); ++p)
    exchange_duration[p] = r.histogram("sightline_exchange_duration_seconds",
                                       "Request head received to response end, by protocol.",
                                       {{"protocol", s(kProtos[p])}}, b);
  for (std::size_t p = 0; p < kProtos.size(); ++p)
    for (std::size_t c = 0; c < kClasses.size(); ++c)
      exchanges[p][c] = r.counter("sightline_http_exchanges_total",
                                  "HTTP exchanges ended, by protocol and status class.",
                                  {{"protocol", s(kProtos[p])}, {"status_class", s(kClasses[c])}});
  h2_active_streams = r.gauge("sightline_http2_active_streams", "HTTP/2 client streams open now.");
  for (std::size_t v = 0; v < kVerdicts.size(); ++v)
    verify_failures[v] = r.counter("sightline_upstream_verify_failures_total",
                                   "Origin certificates that failed verification, by reason.",
                                   {{"reason", s(kVerdicts[v])}});
  cert_cache_hit = r.counter("sightline_cert_cache_lookups_total", "Forged-certificate cache lookups, by result.",
                             {{"result", "hit"}});
  cert_cache_miss = r.counter("sightline_cert_cache_lookups_total", "Forged-certificate cache lookups, by result.",
                              {{"result", "miss"}});
  cert_cache_wait = r.counter("sightline_cert_cache_lookups_total", "Forged-certificate cache lookups, by result.",
                              {{"result", "wait"}});
  auto handshakes = [&](const char* leg, const char* session) {
    return r.counter("sightline_tls_handshakes_total",
                     "Completed TLS handshakes, by leg and session (new, resumed with a ticket or "
                     "session, or new because the client's ticket was for another certificate).",
                     {{"leg", leg}, {"session", session}});
  };
  client_tls_full = handshakes("client", "new");
  client_tls_resumed = handshakes("client", "resumed");
  client_tls_ticket_refused = handshakes("client", "ticket_refused");
  upstream_tls_full = handshakes("upstream", "new");
  upstream_tls_resumed = handshakes("upstream", "resumed");
  for (std::size_t e = 0; e < kPoolEvents.size(); ++e)
    origin_pool_events[e] = r.counter("sightline_origin_pool_events_total",
                                      "Idle origin connections kept for reuse (upstream.reuse), by event.",
                                      {{"event", kPoolEvents[e]}});
  for (std::size_t e = 0; e < kReleaseEvents.size(); ++e)
    origin_release_events[e] =
        r.counter("sightline_origin_releases_total",
                  "Origin connections released by idle HTTP/1.1 client connections "
                  "(upstream.release_idle), and how the next request got one: retaken from "
                  "the pool, reconnected, or failed (502).",
                  {{"event", kReleaseEvents[e]}});
  origin_pool_idle = r.gauge("sightline_origin_pool_idle_connections",
                             "Verified origin connections parked for reuse now.");
  for (std::size_t a = 0; a < kPolicy.size(); ++a)
    policy_decisions[a] = r.counter("sightline_policy_decisions_total",
                                    "Policy decisions taken after the ClientHello, by action.",
                                    {{"action", s(kPolicy[a])}});
  policy_reload_ok = r.counter("sightline_policy_reloads_total", "Policy reloads, by result.", {{"result", "ok"}});
  policy_reload_error = r.counter("sightline_policy_reloads_total", "Policy reloads, by result.", {{"result", "error"}});
  icap_bypass_too_large = r.counter("sightline_icap_bypassed_total",
                                    "HTTP messages relayed without ICAP adaptation, by reason.",
                                    {{"reason", "too_large"}});
  icap_bypass_fail_open = r.counter("sightline_icap_bypassed_total",
                                    "HTTP messages relayed without ICAP adaptation, by reason.",
                                    {{"reason", "error_fail_open"}});
  icap_bypass_plain_http = r.counter("sightline_icap_bypassed_total",
                                     "HTTP messages relayed without ICAP adaptation, by reason.",
                                     {{"reason", "plain_http"}});
  for (std::size_t c = 1; c < core::kFailureCauseNames.size(); ++c)
    connection_failures[c] = r.counter("sightline_connection_failures_total",
                                       "Client connections that ended on a failure, by cause.",
                                       {{"cause", std::string(core::kFailureCauseNames[c])}});
  archive_backpressure = r.counter("sightline_archive_backpressure_total",
                                   "Archived connections paused because the archive queue was full.");
  for (std::size_t a = 0; a < kAuth.size(); ++a)
    proxy_auth[a] = r.counter("sightline_proxy_auth_total",
                              "Proxy-Authorization checks on explicit listeners, by result.", {{"result", s(kAuth[a])}});
  identity_reload_ok = r.counter("sightline_identity_reloads_total", "Identity file reloads, by result.",
                                 {{"result", "ok"}});
  identity_reload_error = r.counter("sightline_identity_reloads_total", "Identity file reloads, by result.",
                                    {{"result", "error"}});
  auto_bypass_activations = r.counter("sightline_auto_bypass_activations_total",
                                      "Pinned (client, name) pairs added to the auto-bypass table.");
  r.callback_gauge("sightline_build_info", "Build information.", {{"version", SIGHTLINE_VERSION}},
                   [] { return 1.0; });
}

void ProxyMetrics::add_icap_service(const std::string& name, std::string_view method) {
  static constexpr std::array<const char*, 4> kIcapResults{"unchanged", "modified", "respond", "error"};
  IcapService ids;
  ids.duration = registry.histogram("sightline_icap_duration_seconds",
                                    "ICAP round trip (queueing and OPTIONS included), by service and method.",
                                    {{"service", name}, {"method", s(method)}}, latency_buckets());
  for (std::size_t k = 0; k < kIcapResults.size(); ++k)
    ids.results[k] = registry.counter("sightline_icap_results_total", "ICAP answers, by service, method and result.",
                                      {{"service", name}, {"method", s(method)}, {"result", kIcapResults[k]}});
  icap_services.push_back(ids);
}

}  // namespace sightline::metrics
