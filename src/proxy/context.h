// What every session needs from the process: settings, TLS contexts, the
// issuing CAs, leaf keys and the forged-certificate cache. Built once at
// start, read-only afterwards except for the thread-safe pool and cache.
#pragma once

#include "exchange/exchange.h"
#include "hooks/bus.h"
#include "hooks/event_feed.h"
#include "hooks/keylog.h"
#include "hooks/pcap_sink.h"
#include "http/h1_parser.h"
#include "http/h2_relay.h"
#include "archive/service.h"
#include "archive/shipper.h"
#include "icap/icap_client.h"
#include "identity/store.h"
#include "tls/cert_cache.h"
#include "tls/contexts.h"
#include "tls/enterprise_ca.h"
#include "tls/leaf_keys.h"
#include "tls/upstream_sessions.h"
#include "tls/upstream_verify.h"
#include "net/address.h"
#include "net/conn_limits.h"
#include "net/upstream_conn.h"
#include "proxy/origin_pool.h"
#include "policy/access.h"
#include "policy/auto_bypass.h"
#include "policy/store.h"
#include "metrics/proxy_metrics.h"

#include <uv.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace sightline::proxy {

struct SessionSettings {
  std::chrono::milliseconds connect_timeout{10'000};
  std::chrono::milliseconds handshake_timeout{10'000};
  std::chrono::milliseconds idle_timeout{300'000};
  // Transparent mode: how long to wait for the client's first byte before
  // treating the protocol as server-speaks-first and splicing.
  std::chrono::milliseconds first_byte_timeout{3'000};
  std::size_t max_request_head = 16 * 1024;
  std::size_t max_client_hello = 16 * 1024;
  std::size_t relay_high_watermark = 256 * 1024;
  tls::OnInvalid on_invalid = tls::OnInvalid::block;
  bool refuse_with_alert = false;  // TLS alert instead of an error page
  bool upstream_resumption = true;
  // Keep idle verified HTTP/1.1 origin connections for later client
  // connections to the same target (upstream.reuse).
  bool upstream_reuse = true;
  OriginPoolLimits origin_pool;
  // With reuse: the origin connection of a client connection idle this long
  // between HTTP/1.1 exchanges goes back to the pool (0: never).
  std::chrono::milliseconds release_idle_after{0};
  std::vector<std::string> upstream_alpn;  // protocols the proxy relays
  http::H1Limits h1;
  http::H2Settings h2;
  std::string via = "sightline";  // Via pseudonym for plain HTTP; empty: none
};

enum class ListenerKind { explicit_proxy, static_target, redirect, tproxy };

// What a listener does with the connections it accepts.
struct ListenerInfo {
  std::string address;
  ListenerKind kind = ListenerKind::explicit_proxy;
  bool static_target = false;   // intercept toward `target`, no CONNECT
  net::HostPort target;
  bool spoof_source = false;    // tproxy: connect upstream from the client's address
  int proxy_protocol = 0;       // 0 off, 1 or 2: a PROXY header precedes everything
};

// ICAP adaptation of HTTP exchanges (issue 8); off when no service is
// configured. Each worker makes its own IcapService from these on its loop.
struct IcapServiceSettings {
  std::string name;
  icap::Method method = icap::Method::reqmod;
  bool fail_closed = true;
  icap::ServiceConfig config;
};
struct IcapSettings {
  std::vector<IcapServiceSettings> services;  // chain order within each method
  std::uint64_t max_body = 8ull << 20;        // larger bodies pass unadapted
  bool enabled() const { return !services.empty(); }
};

struct ProxyContext {
  SessionSettings settings;
  // The proxy's own listening addresses (loop protection for transparent mode).
  std::vector<sockaddr_storage> own_addresses;
  // Client allow-list, CONNECT/HTTP ports, refused destinations; null: no checks.
  std::unique_ptr<policy::AccessRules> access;
  // Connections open at once, shared by the workers; null: unlimited.
  std::unique_ptr<net::ConnectionLimits> limits;
  tls::TlsContexts tls;
  tls::IssuingCa ca;
  tls::IssuingCa untrusted_ca;
  std::unique_ptr<tls::LeafKeyPool> leaf_keys;
  std::unique_ptr<tls::CertCache> cert_cache;
  // Per-domain decisions; null: inspect everything.
  std::unique_ptr<policy::PolicyStore> policies;
  std::unique_ptr<policy::AutoBypass> auto_bypass;
  // Users and groups (credentials, user map, groups files); null: no identity.
  std::unique_ptr<identity::IdentityStore> identity;
  // Null when metrics are off.
  metrics::ProxyMetrics* metrics = nullptr;
  // Every HTTP exchange's events go here (shared by all workers: consumers
  // must be thread-safe or stateless).
  std::shared_ptr<exchange::Consumer> exchanges;
  // Inspection hooks: stream consumers (decrypted PCAP, ...) fed through the
  // bus, and key log files per leg (null: off).
  hooks::Bus hooks;
  std::unique_ptr<hooks::KeylogFile> keylog_client, keylog_upstream;
  std::vector<std::string> keylog_rules;  // rule names; empty: all inspected traffic
  // Per-consumer handling latency, indexed like hooks.channels().
  std::vector<metrics::HistogramId> hook_latency;
  hooks::PcapSink* pcap = nullptr;  // owned by `hooks`; for its metrics
  hooks::EventFeedSink* events = nullptr;  // owned by `hooks`; for its metrics
  IcapSettings icap;
  // Ships sealed archive segments to S3 (null: off). Declared before
  // `archive` so it outlives it: the archive's last seal pokes it.
  std::unique_ptr<archive::ArchiveShipper> archive_shipper;
  // Compliance archive (null: off) and whether it takes every inspected
  // exchange (else the policy rule's `archive` option decides).
  std::unique_ptr<archive::ArchiveService> archive;
  bool archive_all = false;
};

// The worker a session lives on. Everything except post() is called on the
// worker's own loop thread.
class SessionHost {
 public:
  virtual ~SessionHost() = default;
  virtual uv_loop_t* loop() = 0;
  // Scratch for libuv reads; consumed before the read callback returns.
  virtual std::span<char> read_buffer() = 0;
  // Scratch for decrypted plaintext; consumed before the caller returns.
  virtual std::span<char> plain_buffer() = 0;
  // Runs `fn` on this worker's loop. Thread-safe; dropped after stop.
  virtual void post(std::function<void()> fn) = 0;
  // The session's handles are all closed: the host may release it.
  virtual void session_closed(std::uint64_t id) = 0;
  // Idle plain-HTTP origin connections of this worker.
  virtual net::UpstreamPool& upstream_pool() = 0;
  // Idle verified TLS origin connections of this worker (upstream.reuse).
  virtual OriginPool& origin_pool() = 0;
  // TLS sessions toward origins, for resumption.
  virtual tls::UpstreamSessionCache& upstream_sessions() = 0;
  // This worker's client of configured ICAP service `index` (into
  // ProxyContext::icap.services), created on first use; null when there is
  // no such service or the worker is shutting down.
  virtual icap::IcapService* icap_service(std::size_t /*index*/) { return nullptr; }
};

}  // namespace sightline::proxy
