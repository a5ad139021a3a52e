// sightline's configuration: TOML file (toml++) plus command-line overrides.
// Every key is known here; unknown keys and bad values stop startup with the
// file, line and key named.
#pragma once

#include "policy/access.h"
#include "tls/upstream_verify.h"

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

namespace sightline::app {

using std::chrono::milliseconds;

enum class ListenerMode {
  explicit_proxy,  // HTTP CONNECT (and plain-HTTP absolute-form requests)
  static_target,   // every connection intercepted toward one fixed target
  redirect,        // transparent: REDIRECT/DNAT, destination from SO_ORIGINAL_DST
  tproxy,          // transparent: TPROXY, destination is the socket's local address
};

struct ListenerConfig {
  std::string address;  // as written, for logs
  sockaddr_storage addr{};
  ListenerMode mode = ListenerMode::explicit_proxy;
  std::string target;   // static mode: "host:port"
  bool spoof_source = false;  // tproxy: upstream connections from the client's address
  int proxy_protocol = 0;     // 0 off, 1, 2
};

// Decrypted PCAP of inspected traffic (issue 8). Off unless `dir` or
// `over_ip` is set.
struct PcapConfig {
  std::string dir;                 // files; empty: none
  std::string format = "pcapng";   // or "pcap"
  std::uint64_t max_file_bytes = 256ull << 20;
  milliseconds max_file_age = std::chrono::hours(1);
  std::uint64_t max_files = 0;     // 0: keep every file
  std::vector<std::pair<std::uint16_t, std::uint16_t>> port_map;  // server port as written
  std::string over_ip;             // PCAP-over-IP listener ADDR:PORT; empty: none
  std::uint64_t queue_bytes = 64ull << 20;
  std::string on_overflow = "drop";  // or "block"
  bool enabled() const { return !dir.empty() || !over_ip.empty(); }
};

// JSON event feed on a Unix socket (issue 8). Off unless `socket` is set.
struct EventsConfig {
  std::string socket;                 // Unix socket path; empty: off
  unsigned mode = 0660;               // socket file permissions
  bool include_bodies = false;        // base64 bodies in exchange records
  std::uint64_t body_cap = 64 * 1024; // bytes of each body, when included
  std::uint64_t queue_bytes = 64ull << 20;
  std::string on_overflow = "drop";   // or "block"
  bool enabled() const { return !socket.empty(); }
};

// NSS key logs per leg; diagnostics only, off by default.
struct KeylogConfig {
  std::string client_file;
  std::string upstream_file;
  std::vector<std::string> rules;  // policy rule names; empty: all inspected traffic
};

// One ICAP service (issue 8). A service URL serves one method, so each
// entry names its method; services of the same method run as a chain in
// the order they are configured.
struct IcapServiceConfig {
  std::string name;    // for policy rules' `icap` lists, logs and metrics
  std::string url;     // "icap://host:port/service"
  std::string method;  // "reqmod" or "respmod"
  std::string fail;    // "open" | "closed"; empty: [icap] fail
};

// ICAP services (issue 8). Off unless a service is configured.
struct IcapConfig {
  // Shorthand for one service of each method, named "reqmod" / "respmod"
  // (also what --icap-reqmod / --icap-respmod set); they run before the
  // [[icap.service]] entries of their method.
  std::string reqmod;
  std::string respmod;
  std::vector<IcapServiceConfig> services;  // [[icap.service]]
  // "closed": an ICAP failure answers the client with an error page, so
  // nothing uninspected passes (what a DLP deployment wants); "open": the
  // message is relayed as it is. The default for services that set none.
  std::string fail = "closed";
  std::uint64_t max_body = 8ull << 20;  // larger bodies are relayed unadapted
  milliseconds connect_timeout = std::chrono::seconds(2);
  milliseconds response_timeout = std::chrono::seconds(10);
  // Every service in chain order: the shorthand ones first, then the
  // [[icap.service]] entries; `fail` resolved.
  std::vector<IcapServiceConfig> all_services() const;
  bool enabled() const { return !reqmod.empty() || !respmod.empty() || !services.empty(); }
};

// Shipping sealed segments to S3 Object Lock (issue 10, docs/archive-s3.md).
// Off unless `url` is set.
struct ArchiveS3Config {
  std::string url;  // http(s)://host[:port]/bucket[/prefix]
  bool virtual_host = false;
  std::string region = "us-east-1";
  std::string access_key, secret_key, credentials_file;  // else AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
  std::string ca_file;
  std::string node_id;                  // default: archive.writer_id
  std::string lock_mode = "compliance";  // "compliance" | "governance" | "none"
  milliseconds retention{0};             // 0: archive.retention_days
  bool legal_hold = false;
  milliseconds interval = std::chrono::seconds(30);
  milliseconds backoff_max = std::chrono::minutes(5);
  std::uint64_t ready_backlog_bytes = 0;  // /readyz fails past this (0: never)
  milliseconds ready_backlog_age{0};      // or past this age of the oldest unshipped seal (0: never)
  milliseconds delete_local_after{0};     // local copies of shipped segments go this long after (0: kept)
  std::uint64_t multipart_threshold = 64ull << 20;
  std::uint64_t part_size = 16ull << 20;
  bool enabled() const { return !url.empty(); }
};

// The compliance archive (issue 9, docs/archive.md). Off unless `dir` is set.
struct ArchiveConfig {
  std::string dir;
  std::string key;           // Ed25519 private key (sightline archive keygen)
  bool all = false;          // archive every inspected exchange, whatever the policy says
  std::string sync = "record";              // "record" | "interval" | "none"
  milliseconds sync_interval = std::chrono::seconds(1);  // interval_ms, for sync = "interval"
  milliseconds commit_delay = std::chrono::milliseconds(10);  // group commit: gather this long per batch
  std::uint64_t max_segment_bytes = 1ull << 30;
  milliseconds max_segment_age = std::chrono::hours(1);
  std::uint64_t max_body = 16ull << 20;     // per body; the rest is recorded as truncated
  std::uint64_t queue_bytes = 64ull << 20;  // back-pressure on archived connections above this
  std::string on_failure = "closed";        // "closed" refuses archived traffic; "open" lets it pass
  std::string writer_id;                    // default: the host name
  std::uint64_t retention_days = 0;         // prune sealed segments older than this; 0: keep all
  int compression = -1;                     // -1: "fast" (ISA-L); 0 (stored) .. 9 (smallest): zlib level
  std::uint64_t compress_min_bytes = 2048;  // smaller records are stored (archive::Compression::min_bytes)
  ArchiveS3Config s3;
  bool enabled() const { return !dir.empty(); }
};

// Who the client is (issue 9, docs/identity.md). Files reload on SIGHUP.
struct IdentityConfig {
  std::string credentials;  // explicit listeners require Proxy-Authorization: Basic; empty: off
  std::string user_map;     // client address → user (transparent, static, explicit without credentials)
  std::string groups;       // user → groups
  std::string realm = "sightline";  // Proxy-Authenticate: Basic realm="..."
  milliseconds cache_ttl = std::chrono::minutes(5);  // a verified password is trusted this long
  bool enabled() const { return !credentials.empty() || !user_map.empty() || !groups.empty(); }
};

struct Config {
  std::string source;  // config file path, empty when none

  unsigned workers = 0;  // 0: one per core
  std::vector<ListenerConfig> listeners;

  std::string ca_cert;
  std::string ca_key;

  bool client_min_tls13 = false;
  // client.tickets: TLS session tickets toward clients, bound to the forged
  // certificate (src/tls/client_tickets.h); keys rotate every lifetime.
  bool client_tickets = true;
  milliseconds client_ticket_lifetime = std::chrono::hours(1);

  std::string upstream_ca_file;
  std::string upstream_crl_file;
  tls::OnInvalid on_invalid = tls::OnInvalid::block;
  bool refuse_with_alert = false;  // upstream.refuse_with = "alert"
  bool upstream_min_tls13 = false;
  std::vector<std::string> upstream_alpn = {"h2", "http/1.1"};
  // upstream.reuse: idle verified HTTP/1.1 origin connections kept for
  // later client connections (docs/interception.md).
  bool upstream_reuse = true;
  milliseconds upstream_reuse_idle = std::chrono::seconds(4);
  std::size_t upstream_reuse_per_origin = 16;
  // upstream.release_idle: an idle HTTP/1.1 client connection gives its
  // origin connection back to the pool and takes one again at its next request.
  bool upstream_release_idle = true;
  milliseconds upstream_release_idle_after = std::chrono::milliseconds(100);

  milliseconds leaf_key_lifetime = std::chrono::hours(1);
  std::size_t cert_cache_entries = 10000;

  milliseconds connect_timeout = std::chrono::seconds(10);
  milliseconds handshake_timeout = std::chrono::seconds(10);
  milliseconds idle_timeout = std::chrono::minutes(5);
  milliseconds first_byte_timeout = std::chrono::seconds(3);

  std::size_t max_request_head = 16 * 1024;
  std::size_t max_client_hello = 16 * 1024;
  std::size_t relay_high_watermark = 256 * 1024;
  std::size_t max_http_head = 64 * 1024;  // HTTP/1.1 head and trailer sections
  // Client connections open at once, in total and per client address (0: no limit).
  std::uint64_t max_connections = 20000;
  std::uint64_t max_connections_per_client = 1000;

  // Who may use the proxy and where it may connect (docs/access.md).
  policy::AccessSettings access;

  // Drop to this user (and group: default the user's) once listeners are
  // bound and keys read; empty: keep running as started.
  std::string run_as_user, run_as_group;

  std::string via = "sightline";  // Via pseudonym added by the plain-HTTP proxy; "" for none

  // HTTP/2 (both legs).
  std::uint32_t h2_max_concurrent_streams = 100;
  std::uint32_t h2_initial_window_size = 256 * 1024;
  std::uint32_t h2_connection_window_size = 1024 * 1024;
  std::uint32_t h2_max_header_list_size = 64 * 1024;
  std::uint32_t h2_header_table_size = 4096;

  // Policy files, evaluated in order. When none is configured, the default
  // policies/default.toml (relative to the working directory) is used if it
  // exists; otherwise every connection is inspected.
  std::vector<std::string> policy_files;
  bool policy_files_configured = false;
  milliseconds auto_bypass_ttl = std::chrono::hours(1);
  std::size_t auto_bypass_entries = 100000;
  // A pair is bypassed after this many failed handshakes within the window.
  unsigned auto_bypass_threshold = 3;
  milliseconds auto_bypass_window = std::chrono::minutes(5);

  // Admin listener (/metrics, /healthz, /readyz, /status); empty: off.
  std::string admin_listen = "127.0.0.1:9464";
  // SIGTERM: in-flight connections get this long to finish.
  milliseconds drain_timeout = std::chrono::seconds(30);

  std::string log_file;  // empty: stderr
  std::string log_level = "info";
  bool log_exchanges = true;  // one access-log line per HTTP exchange

  PcapConfig pcap;
  KeylogConfig keylog;
  EventsConfig events;
  IcapConfig icap;
  ArchiveConfig archive;
  IdentityConfig identity;
};

struct ConfigError {
  std::string message;  // "file:line:col: key 'a.b': reason"
};

// Parses TOML text; `source_name` names it in errors and relative paths are
// resolved against its directory.
std::optional<Config> parse_config(std::string_view toml_text, const std::string& source_name,
                                   ConfigError& err);
std::optional<Config> load_config_file(const std::string& path, ConfigError& err);

// "443:80" → {443, 80}.
std::optional<std::pair<std::uint16_t, std::uint16_t>> parse_port_map(std::string_view s);

// The defaults with one explicit listener on 127.0.0.1:3128.
Config default_config();

// Replaces the listeners with these ("ADDR:PORT" each); false on a bad address.
bool set_listen_addresses(Config& cfg, const std::vector<std::string>& explicit_addrs,
                          const std::vector<std::string>& redirect_addrs,
                          const std::vector<std::string>& tproxy_addrs, ConfigError& err);

// Cross-field checks done after overrides (CA present, at least one listener).
bool validate(const Config& cfg, ConfigError& err);

}  // namespace sightline::app
