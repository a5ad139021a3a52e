// Every metric sightline exports, registered once at startup. Names follow
// Prometheus conventions (sightline_ prefix, base units, _total counters);
// labels take only the fixed values listed here (never host names or
// client addresses), so cardinality is bounded. docs/metrics.md lists them.
#pragma once

#include "core/failure_cause.h"
#include "metrics/registry.h"

#include <array>
#include <string>
#include <string_view>
#include <vector>

namespace sightline::metrics {

enum class Mode : std::uint8_t { explicit_proxy, static_target, transparent, count };
enum class ConnAction : std::uint8_t { intercept, bypass, http, refuse, reject, none, splice, count };
enum class Outcome : std::uint8_t { ok, refused, error, count };
enum class Verdict : std::uint8_t {
  expired, not_yet_valid, hostname_mismatch, self_signed, unknown_issuer, revoked, invalid, count
};
enum class Proto : std::uint8_t { http1, http2, count };
enum class StatusClass : std::uint8_t { s1xx, s2xx, s3xx, s4xx, s5xx, aborted, count };
enum class PolicyAction : std::uint8_t { inspect, bypass, block, count };
// Proxy-Authorization checks (issue 9 identity); busy: too many password
// hashes in progress, answered 503.
enum class AuthResult : std::uint8_t { ok, missing, invalid, busy, count };
std::string_view to_string(AuthResult r);

ConnAction conn_action(std::string_view action);
Verdict verdict(std::string_view v);
StatusClass status_class(int status, bool aborted);

template <typename E, typename Id>
using PerValue = std::array<Id, static_cast<std::size_t>(E::count)>;

struct ProxyMetrics {
  // Shards: one per worker, one per hook consumer thread (recording from
  // hook_shard(i)), then the main thread's.
  ProxyMetrics(unsigned workers, unsigned hook_consumers = 0);
  unsigned hook_shard(unsigned i) const { return workers_ + i; }

  Registry registry;

  // Connections and bytes.
  std::array<std::array<PerValue<Outcome, CounterId>, static_cast<std::size_t>(ConnAction::count)>,
             static_cast<std::size_t>(Mode::count)>
      connections;
  PerValue<ConnAction, GaugeId> active_connections;
  // Connections that ended on a failure, by core::FailureCause (none unused).
  std::array<CounterId, static_cast<std::size_t>(core::FailureCause::count)> connection_failures{};
  PerValue<ConnAction, CounterId> bytes_client_to_server, bytes_server_to_client;

  // Stage latencies (seconds).
  HistogramId client_handshake, upstream_connect, upstream_handshake, dns, forge;
  HistogramId request_head_held, response_head_held;
  PerValue<Proto, HistogramId> exchange_duration;

  // HTTP.
  std::array<PerValue<StatusClass, CounterId>, static_cast<std::size_t>(Proto::count)> exchanges;
  GaugeId h2_active_streams;

  // TLS and certificates.
  PerValue<Verdict, CounterId> verify_failures;
  CounterId cert_cache_hit, cert_cache_miss, cert_cache_wait;
  // Completed TLS handshakes by leg and session: full, resumed, or (client
  // leg) full because the offered ticket was for another certificate.
  CounterId client_tls_full, client_tls_resumed, client_tls_ticket_refused;
  CounterId upstream_tls_full, upstream_tls_resumed;

  // Origin connection reuse (upstream.reuse): pool events in the order of
  // proxy::PoolEvent, and connections parked now.
  static constexpr std::array<const char*, 6> kPoolEvents{"parked", "reused", "expired",
                                                          "origin_closed", "full", "shutdown"};
  std::array<CounterId, kPoolEvents.size()> origin_pool_events;
  GaugeId origin_pool_idle;
  // upstream.release_idle: origin connections released by idle client
  // connections, and how the next request got one (pool, new connection)
  // or did not.
  static constexpr std::array<const char*, 4> kReleaseEvents{"released", "retaken", "reconnected",
                                                             "failed"};
  std::array<CounterId, kReleaseEvents.size()> origin_release_events;

  // Policy.
  PerValue<PolicyAction, CounterId> policy_decisions;
  CounterId policy_reload_ok, policy_reload_error, auto_bypass_activations;

  // Identity (issue 9).
  PerValue<AuthResult, CounterId> proxy_auth;
  CounterId identity_reload_ok, identity_reload_error;

  // ICAP (issue 8), one entry per configured service in configuration
  // order (add_icap_service at startup); results by icap::Result::Kind
  // (unchanged, modified, respond, error).
  struct IcapService {
    HistogramId duration;
    std::array<CounterId, 4> results;
  };
  std::vector<IcapService> icap_services;
  void add_icap_service(const std::string& name, std::string_view method);
  CounterId icap_bypass_too_large, icap_bypass_fail_open, icap_bypass_plain_http;
  // Compliance archive: archived connections paused because its queue was full.
  CounterId archive_backpressure;

 private:
  unsigned workers_;
};

constexpr std::size_t idx(auto e) { return static_cast<std::size_t>(e); }

}  // namespace sightline::metrics
