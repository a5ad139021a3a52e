#include "app/config.h"

#include "archive/format.h"
#include "archive/s3.h"

#include "core/duration.h"
#include "icap/icap_client.h"
#include "net/address.h"
#include "policy/auto_bypass.h"

#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <sstream>

namespace sightline::app {
namespace {

std::string join(const std::string& prefix, std::string_view key) {
  return prefix.empty() ? std::string(key) : prefix + "." + std::string(key);
}

class Parser {
 public:
  Parser(std::string file, ConfigError& err) : file_(std::move(file)), err_(err) {
    auto parent = std::filesystem::path(file_).parent_path();
    base_dir_ = parent.empty() ? std::filesystem::path(".") : parent;
  }

  bool fail(const toml::source_region& where, const std::string& key, const std::string& why) {
    std::ostringstream os;
    os << file_ << ":" << where.begin.line << ":" << where.begin.column << ": key '" << key
       << "': " << why;
    err_.message = os.str();
    return false;
  }

  bool check_keys(const toml::table& t, const std::string& prefix,
                  std::initializer_list<std::string_view> known) {
    for (auto&& [k, v] : t) {
      bool ok = false;
      for (auto n : known) ok = ok || k.str() == n;
      if (!ok) {
        return fail(k.source(), join(prefix, k.str()), "unknown key");
      }
    }
    return true;
  }

  bool get_string(const toml::table& t, const std::string& prefix, std::string_view key,
                  std::string& out) {
    const toml::node* n = t.get(key);
    if (!n) return true;
    auto v = n->value<std::string>();
    if (!n->is_string() || !v) return fail(n->source(), join(prefix, key), "expected a string");
    out = *v;
    return true;
  }

  bool get_path(const toml::table& t, const std::string& prefix, std::string_view key,
                std::string& out) {
    std::string v;
    if (!get_string(t, prefix, key, v)) return false;
    if (v.empty()) return true;
    std::filesystem::path p(v);
    out = p.is_absolute() ? v : (base_dir_ / p).lexically_normal().string();
    return true;
  }

  bool get_bool(const toml::table& t, const std::string& prefix, std::string_view key, bool& out) {
    const toml::node* n = t.get(key);
    if (!n) return true;
    auto v = n->value<bool>();
    if (!n->is_boolean() || !v) return fail(n->source(), join(prefix, key), "expected true or false");
    out = *v;
    return true;
  }

  bool get_uint(const toml::table& t, const std::string& prefix, std::string_view key,
                std::uint64_t lo, std::uint64_t hi, std::uint64_t& out) {
    const toml::node* n = t.get(key);
    if (!n) return true;
    // value<int64> converts a float without a range check (UB past 2^63):
    // only integers are read as integers.
    auto v = n->is_integer() ? n->value<std::int64_t>() : std::nullopt;
    if (!v || *v < 0 || static_cast<std::uint64_t>(*v) < lo ||
        static_cast<std::uint64_t>(*v) > hi)
      return fail(n->source(), join(prefix, key),
                  "expected an integer from " + std::to_string(lo) + " to " + std::to_string(hi));
    out = static_cast<std::uint64_t>(*v);
    return true;
  }

  // archive.compression: "fast" (-1) or a zlib level 0..9.
  bool get_compression(const toml::table& t, int& out) {
    const toml::node* n = t.get("compression");
    if (!n) return true;
    auto s = n->value<std::string>();
    if (n->is_string() && s && *s == "fast") {
      out = -1;
      return true;
    }
    std::int64_t level = n->is_integer() ? n->value<std::int64_t>().value_or(-1) : -1;
    if (level >= 0 && level <= 9) {
      out = static_cast<int>(level);
      return true;
    }
    return fail(n->source(), "archive.compression",
                "expected \"fast\" or a zlib level from 0 (stored) to 9 (smallest)");
  }

  bool get_duration(const toml::table& t, const std::string& prefix, std::string_view key,
                    milliseconds& out) {
    const toml::node* n = t.get(key);
    if (!n) return true;
    auto s = n->value<std::string>();
    std::optional<milliseconds> d;
    if (n->is_string() && s) d = parse_duration(*s);
    if (!d || d->count() == 0)
      return fail(n->source(), join(prefix, key),
                  "expected a positive duration such as \"500ms\", \"10s\", \"5m\" or \"1h\"");
    out = *d;
    return true;
  }

  bool get_choice(const toml::table& t, const std::string& prefix, std::string_view key,
                  std::initializer_list<std::string_view> choices, std::string& out) {
    const toml::node* n = t.get(key);
    if (!n) return true;
    auto s = n->value<std::string>();
    std::string list;
    for (auto c : choices) list += (list.empty() ? "\"" : ", \"") + std::string(c) + "\"";
    if (n->is_string() && s)
      for (auto c : choices)
        if (*s == c) {
          out = *s;
          return true;
        }
    return fail(n->source(), join(prefix, key), "expected one of " + list);
  }

  bool get_string_list(const toml::table& t, const std::string& prefix, std::string_view key,
                       std::vector<std::string>& out) {
    const toml::node* n = t.get(key);
    if (!n) return true;
    const toml::array* arr = n->as_array();
    if (!arr) return fail(n->source(), join(prefix, key), "expected an array of strings");
    std::vector<std::string> v;
    for (auto& e : *arr) {
      auto s = e.value<std::string>();
      if (!e.is_string() || !s || s->empty() || s->size() > 255)
        return fail(e.source(), join(prefix, key), "expected non-empty strings");
      v.push_back(*s);
    }
    out = std::move(v);
    return true;
  }

  // Ports as integers or "LOW-HIGH" strings: [443, 8443, "1024-65535"].
  bool get_port_list(const toml::table& t, const std::string& prefix, std::string_view key,
                     std::vector<std::string>& out) {
    const toml::node* n = t.get(key);
    if (!n) return true;
    const toml::array* arr = n->as_array();
    if (!arr) return fail(n->source(), join(prefix, key), "expected an array of ports");
    std::vector<std::string> v;
    for (auto& e : *arr) {
      std::string text;
      if (auto i = e.is_integer() ? e.value<std::int64_t>() : std::nullopt; i) text = std::to_string(*i);
      else if (auto str = e.value<std::string>(); e.is_string() && str) text = *str;
      policy::PortRange r;
      std::string why;
      if (!policy::parse_port_range(text, r, why))
        return fail(e.source(), join(prefix, key), "expected ports (1-65535) or \"LOW-HIGH\" ranges");
      v.push_back(text);
    }
    out = std::move(v);
    return true;
  }

  // A list of address prefixes ("10.0.0.0/8", "::1"); each checked now.
  bool get_cidr_list(const toml::table& t, const std::string& prefix, std::string_view key,
                     std::vector<std::string>& out) {
    std::vector<std::string> v = out;
    if (!get_string_list(t, prefix, key, v)) return false;
    policy::AccessSettings probe;
    probe.allow_clients = v;
    std::string why;
    if (!policy::AccessRules::build(probe, why)) {
      auto pos = why.find(": ");
      return fail(t.get(key)->source(), join(prefix, key),
                  "expected address prefixes such as \"10.0.0.0/8\" or \"::1\" (" +
                      (pos == std::string::npos ? why : why.substr(pos + 2)) + ")");
    }
    out = std::move(v);
    return true;
  }

  const toml::table* section(const toml::table& root, std::string_view name) {
    const toml::node* n = root.get(name);
    if (!n) return nullptr;
    if (!n->is_table()) {
      fail(n->source(), std::string(name), "expected a table");
      bad_section_ = true;
      return nullptr;
    }
    return n->as_table();
  }

  bool parse(const toml::table& root, Config& cfg) {
    if (!check_keys(root, "", {"workers", "listener", "ca", "client", "upstream", "forge",
                               "timeouts", "limits", "http", "http2", "policy", "admin",
                               "shutdown", "log", "pcap", "keylog", "events", "icap", "archive", "identity",
                               "access", "process"}))
      return false;
    std::uint64_t u = 0;
    if (!get_uint(root, "", "workers", 0, 256, u)) return false;
    cfg.workers = static_cast<unsigned>(u);

    if (const toml::node* ln = root.get("listener")) {
      const toml::array* arr = ln->as_array();
      if (!arr || !arr->is_array_of_tables())
        return fail(ln->source(), "listener", "expected [[listener]] tables");
      cfg.listeners.clear();
      for (auto& e : *arr) {
        const toml::table& lt = *e.as_table();
        if (!check_keys(lt, "listener", {"address", "mode", "target", "spoof_source", "proxy_protocol"}))
          return false;
        ListenerConfig l;
        const toml::node* an = lt.get("address");
        if (!an) return fail(lt.source(), "listener.address", "missing");
        if (!get_string(lt, "listener", "address", l.address)) return false;
        auto addr = net::parse_listen_address(l.address);
        if (!addr)
          return fail(an->source(), "listener.address",
                      "expected IP:PORT such as \"127.0.0.1:3128\" or \"[::1]:3128\"");
        l.addr = *addr;
        std::string mode = "explicit", pp = "off";
        if (!get_choice(lt, "listener", "mode", {"explicit", "static", "redirect", "tproxy"}, mode) ||
            !get_string(lt, "listener", "target", l.target) ||
            !get_bool(lt, "listener", "spoof_source", l.spoof_source) ||
            !get_choice(lt, "listener", "proxy_protocol", {"off", "v1", "v2"}, pp))
          return false;
        l.proxy_protocol = pp == "v1" ? 1 : pp == "v2" ? 2 : 0;
        if (mode == "redirect") l.mode = ListenerMode::redirect;
        if (mode == "tproxy") l.mode = ListenerMode::tproxy;
        if (l.spoof_source && l.mode != ListenerMode::tproxy)
          return fail(lt.get("spoof_source")->source(), "listener.spoof_source", "only tproxy listeners can spoof the source");
        if (mode == "static") {
          l.mode = ListenerMode::static_target;
          if (!net::parse_host_port(l.target))
            return fail(lt.get("target") ? lt.get("target")->source() : lt.source(), "listener.target",
                        "static listeners need target = \"host:port\"");
        } else if (!l.target.empty()) {
          return fail(lt.get("target")->source(), "listener.target", "only static listeners have a target");
        }
        cfg.listeners.push_back(l);
      }
    }

    if (auto* t = section(root, "ca")) {
      if (!check_keys(*t, "ca", {"cert", "key"}) || !get_path(*t, "ca", "cert", cfg.ca_cert) ||
          !get_path(*t, "ca", "key", cfg.ca_key))
        return false;
    }
    if (bad_section_) return false;

    if (auto* t = section(root, "client")) {
      std::string v = cfg.client_min_tls13 ? "1.3" : "1.2";
      if (!check_keys(*t, "client", {"min_version", "tickets", "ticket_lifetime"}) ||
          !get_choice(*t, "client", "min_version", {"1.2", "1.3"}, v) ||
          !get_bool(*t, "client", "tickets", cfg.client_tickets) ||
          !get_duration(*t, "client", "ticket_lifetime", cfg.client_ticket_lifetime))
        return false;
      if (cfg.client_ticket_lifetime < std::chrono::seconds(1) ||
          cfg.client_ticket_lifetime > std::chrono::hours(24 * 7))
        return fail(t->get("ticket_lifetime")->source(), "client.ticket_lifetime",
                    "expected a duration from 1s to 7 days (RFC 8446's limit)");
      cfg.client_min_tls13 = v == "1.3";
    }
    if (bad_section_) return false;

    if (auto* t = section(root, "upstream")) {
      std::string inv = "block", minv = "1.2", refuse = "error-page";
      std::uint64_t per_origin = cfg.upstream_reuse_per_origin;
      if (!check_keys(*t, "upstream", {"ca_file", "crl_file", "on_invalid", "refuse_with",
                                       "min_version", "alpn", "reuse", "reuse_idle_timeout",
                                       "reuse_per_origin", "release_idle", "release_idle_after"}) ||
          !get_choice(*t, "upstream", "refuse_with", {"error-page", "alert"}, refuse) ||
          !get_path(*t, "upstream", "ca_file", cfg.upstream_ca_file) ||
          !get_path(*t, "upstream", "crl_file", cfg.upstream_crl_file) ||
          !get_choice(*t, "upstream", "on_invalid", {"block", "forward-untrusted"}, inv) ||
          !get_choice(*t, "upstream", "min_version", {"1.2", "1.3"}, minv) ||
          !get_string_list(*t, "upstream", "alpn", cfg.upstream_alpn) ||
          !get_bool(*t, "upstream", "reuse", cfg.upstream_reuse) ||
          !get_duration(*t, "upstream", "reuse_idle_timeout", cfg.upstream_reuse_idle) ||
          !get_uint(*t, "upstream", "reuse_per_origin", 1, 1024, per_origin) ||
          !get_bool(*t, "upstream", "release_idle", cfg.upstream_release_idle) ||
          !get_duration(*t, "upstream", "release_idle_after", cfg.upstream_release_idle_after))
        return false;
      cfg.upstream_reuse_per_origin = per_origin;
      cfg.on_invalid = inv == "block" ? tls::OnInvalid::block : tls::OnInvalid::forward_untrusted;
      cfg.upstream_min_tls13 = minv == "1.3";
      cfg.refuse_with_alert = refuse == "alert";
    }
    if (bad_section_) return false;

    if (auto* t = section(root, "forge")) {
      std::uint64_t entries = cfg.cert_cache_entries;
      if (!check_keys(*t, "forge", {"key_lifetime", "cache_entries"}) ||
          !get_duration(*t, "forge", "key_lifetime", cfg.leaf_key_lifetime) ||
          !get_uint(*t, "forge", "cache_entries", 16, 10'000'000, entries))
        return false;
      cfg.cert_cache_entries = entries;
    }
    if (bad_section_) return false;

    if (auto* t = section(root, "timeouts")) {
      if (!check_keys(*t, "timeouts", {"connect", "handshake", "idle", "first_byte"}) ||
          !get_duration(*t, "timeouts", "first_byte", cfg.first_byte_timeout) ||
          !get_duration(*t, "timeouts", "connect", cfg.connect_timeout) ||
          !get_duration(*t, "timeouts", "handshake", cfg.handshake_timeout) ||
          !get_duration(*t, "timeouts", "idle", cfg.idle_timeout))
        return false;
    }
    if (bad_section_) return false;

    if (auto* t = section(root, "limits")) {
      std::uint64_t head = cfg.max_request_head, hello = cfg.max_client_hello,
                    relay = cfg.relay_high_watermark, http_head = cfg.max_http_head,
                    conns = cfg.max_connections, per_client = cfg.max_connections_per_client;
      if (!check_keys(*t, "limits", {"max_request_head", "max_client_hello", "relay_buffer",
                                     "max_http_head", "max_connections", "max_connections_per_client"}) ||
          !get_uint(*t, "limits", "max_connections", 0, 10'000'000, conns) ||
          !get_uint(*t, "limits", "max_connections_per_client", 0, 10'000'000, per_client) ||
          !get_uint(*t, "limits", "max_http_head", 1024, 1 << 20, http_head) ||
          !get_uint(*t, "limits", "max_request_head", 1024, 1 << 20, head) ||
          !get_uint(*t, "limits", "max_client_hello", 1024, 64 * 1024, hello) ||
          !get_uint(*t, "limits", "relay_buffer", 16 * 1024, 64 << 20, relay))
        return false;
      cfg.max_request_head = head;
      cfg.max_client_hello = hello;
      cfg.relay_high_watermark = relay;
      cfg.max_http_head = http_head;
      cfg.max_connections = conns;
      cfg.max_connections_per_client = per_client;
    }
    if (bad_section_) return false;

    if (auto* t = section(root, "access")) {
      auto& a = cfg.access;
      if (!check_keys(*t, "access", {"allow_clients", "connect_ports", "http_ports", "deny_destinations",
                                     "allow_destinations", "deny_own_listeners"}) ||
          !get_cidr_list(*t, "access", "allow_clients", a.allow_clients) ||
          !get_port_list(*t, "access", "connect_ports", a.connect_ports) ||
          !get_port_list(*t, "access", "http_ports", a.http_ports) ||
          !get_cidr_list(*t, "access", "deny_destinations", a.deny_destinations) ||
          !get_cidr_list(*t, "access", "allow_destinations", a.allow_destinations) ||
          !get_bool(*t, "access", "deny_own_listeners", a.deny_own_listeners))
        return false;
    }
    if (bad_section_) return false;

    if (auto* t = section(root, "process")) {
      if (!check_keys(*t, "process", {"user", "group"}) ||
          !get_string(*t, "process", "user", cfg.run_as_user) ||
          !get_string(*t, "process", "group", cfg.run_as_group))
        return false;
      if (cfg.run_as_user.empty() && !cfg.run_as_group.empty())
        return fail(t->get("group")->source(), "process.group", "needs process.user as well");
    }
    if (bad_section_) return false;

    if (auto* t = section(root, "http")) {
      if (!check_keys(*t, "http", {"via"}) || !get_string(*t, "http", "via", cfg.via)) return false;
      for (char c : cfg.via)
        if (c <= ' ' || c >= 127 || c == ',' || c == '(' || c == ')')
          return fail(t->get("via")->source(), "http.via", "expected a token (no spaces or commas)");
    }
    if (bad_section_) return false;

    if (auto* t = section(root, "http2")) {
      std::uint64_t streams = cfg.h2_max_concurrent_streams, win = cfg.h2_initial_window_size,
                    conn = cfg.h2_connection_window_size, hdr = cfg.h2_max_header_list_size,
                    table = cfg.h2_header_table_size;
      if (!check_keys(*t, "http2", {"max_concurrent_streams", "initial_window_size",
                                    "connection_window_size", "max_header_list_size",
                                    "header_table_size"}) ||
          !get_uint(*t, "http2", "max_concurrent_streams", 1, 10000, streams) ||
          // Capped: a stalled stream may hold up to its window in the proxy.
          !get_uint(*t, "http2", "initial_window_size", 16384, 16u << 20, win) ||
          !get_uint(*t, "http2", "connection_window_size", 65535, 64u << 20, conn) ||
          !get_uint(*t, "http2", "max_header_list_size", 4096, 1 << 20, hdr) ||
          !get_uint(*t, "http2", "header_table_size", 0, 1 << 16, table))
        return false;
      cfg.h2_max_concurrent_streams = static_cast<std::uint32_t>(streams);
      cfg.h2_initial_window_size = static_cast<std::uint32_t>(win);
      cfg.h2_connection_window_size = static_cast<std::uint32_t>(conn);
      cfg.h2_max_header_list_size = static_cast<std::uint32_t>(hdr);
      cfg.h2_header_table_size = static_cast<std::uint32_t>(table);
    }
    if (bad_section_) return false;

    if (auto* t = section(root, "policy")) {
      std::vector<std::string> files;
      std::uint64_t entries = cfg.auto_bypass_entries;
      std::uint64_t threshold = cfg.auto_bypass_threshold;
      if (!check_keys(*t, "policy", {"files", "auto_bypass_ttl", "auto_bypass_entries",
                                     "auto_bypass_threshold", "auto_bypass_window"}) ||
          !get_string_list(*t, "policy", "files", files) ||
          !get_duration(*t, "policy", "auto_bypass_ttl", cfg.auto_bypass_ttl) ||
          !get_uint(*t, "policy", "auto_bypass_entries", 16, 100'000'000, entries) ||
          !get_uint(*t, "policy", "auto_bypass_threshold", 1, policy::AutoBypass::kMaxThreshold,
                    threshold) ||
          !get_duration(*t, "policy", "auto_bypass_window", cfg.auto_bypass_window))
        return false;
      if (t->get("files")) {
        cfg.policy_files_configured = true;
        cfg.policy_files.clear();
        for (const auto& f : files) {
          std::filesystem::path fp(f);
          cfg.policy_files.push_back(fp.is_absolute() ? f : (base_dir_ / fp).lexically_normal().string());
        }
      }
      cfg.auto_bypass_entries = entries;
      cfg.auto_bypass_threshold = static_cast<unsigned>(threshold);
    }
    if (bad_section_) return false;

    if (auto* t = section(root, "admin")) {
      if (!check_keys(*t, "admin", {"listen"}) || !get_string(*t, "admin", "listen", cfg.admin_listen))
        return false;
      if (!cfg.admin_listen.empty() && !net::parse_listen_address(cfg.admin_listen))
        return fail(t->get("listen")->source(), "admin.listen",
                    "expected IP:PORT such as \"127.0.0.1:9464\", or \"\" to turn it off");
    }
    if (bad_section_) return false;

    if (auto* t = section(root, "shutdown")) {
      if (!check_keys(*t, "shutdown", {"drain_timeout"}) ||
          !get_duration(*t, "shutdown", "drain_timeout", cfg.drain_timeout))
        return false;
    }
    if (bad_section_) return false;

    if (auto* t = section(root, "log")) {
      if (!check_keys(*t, "log", {"file", "level", "exchanges"}) ||
          !get_bool(*t, "log", "exchanges", cfg.log_exchanges) ||
          !get_path(*t, "log", "file", cfg.log_file) ||
          !get_choice(*t, "log", "level", {"debug", "info", "warn", "error"}, cfg.log_level))
        return false;
    }
    if (bad_section_) return false;

    if (auto* t = section(root, "pcap")) {
      PcapConfig& pc = cfg.pcap;
      std::vector<std::string> ports;
      if (!check_keys(*t, "pcap", {"dir", "format", "max_file_size", "max_file_age", "max_files",
                                   "port_map", "over_ip", "queue_size", "on_overflow"}) ||
          !get_path(*t, "pcap", "dir", pc.dir) ||
          !get_choice(*t, "pcap", "format", {"pcapng", "pcap"}, pc.format) ||
          !get_uint(*t, "pcap", "max_file_size", 1 << 16, 1ull << 40, pc.max_file_bytes) ||
          !get_duration(*t, "pcap", "max_file_age", pc.max_file_age) ||
          !get_uint(*t, "pcap", "max_files", 0, 1'000'000, pc.max_files) ||
          !get_string_list(*t, "pcap", "port_map", ports) ||
          !get_string(*t, "pcap", "over_ip", pc.over_ip) ||
          !get_uint(*t, "pcap", "queue_size", 1 << 16, 1ull << 34, pc.queue_bytes) ||
          !get_choice(*t, "pcap", "on_overflow", {"drop", "block"}, pc.on_overflow))
        return false;
      for (const auto& m : ports) {
        auto pm = parse_port_map(m);
        if (!pm) return fail(t->get("port_map")->source(), "pcap.port_map",
                             "expected \"FROM:TO\" port pairs such as \"443:80\"");
        pc.port_map.push_back(*pm);
      }
      if (!pc.over_ip.empty() && !net::parse_listen_address(pc.over_ip))
        return fail(t->get("over_ip")->source(), "pcap.over_ip", "expected IP:PORT such as \"127.0.0.1:57012\"");
    }
    if (bad_section_) return false;

    if (auto* t = section(root, "events")) {
      EventsConfig& ec = cfg.events;
      std::string mode;
      if (!check_keys(*t, "events", {"socket", "mode", "include_bodies", "body_cap", "queue_size",
                                     "on_overflow"}) ||
          !get_path(*t, "events", "socket", ec.socket) ||
          !get_string(*t, "events", "mode", mode) ||
          !get_bool(*t, "events", "include_bodies", ec.include_bodies) ||
          !get_uint(*t, "events", "body_cap", 1, 64ull << 20, ec.body_cap) ||
          !get_uint(*t, "events", "queue_size", 1 << 16, 1ull << 34, ec.queue_bytes) ||
          !get_choice(*t, "events", "on_overflow", {"drop", "block"}, ec.on_overflow))
        return false;
      if (!mode.empty()) {
        // Octal as in chmod: "0660", "660".
        unsigned m = 0;
        auto [end, ec2] = std::from_chars(mode.data(), mode.data() + mode.size(), m, 8);
        if (ec2 != std::errc{} || end != mode.data() + mode.size() || m > 0777)
          return fail(t->get("mode")->source(), "events.mode", "expected octal permissions such as \"0660\"");
        ec.mode = m;
      }
      if (ec.socket.size() >= 108)
        return fail(t->get("socket")->source(), "events.socket", "path longer than 107 bytes");
    }
    if (bad_section_) return false;

    if (auto* t = section(root, "icap")) {
      IcapConfig& ic = cfg.icap;
      if (!check_keys(*t, "icap", {"reqmod", "respmod", "service", "fail", "max_body",
                                   "connect_timeout", "response_timeout"}) ||
          !get_string(*t, "icap", "reqmod", ic.reqmod) ||
          !get_string(*t, "icap", "respmod", ic.respmod) ||
          !get_choice(*t, "icap", "fail", {"open", "closed"}, ic.fail) ||
          !get_uint(*t, "icap", "max_body", 0, 1ull << 30, ic.max_body) ||
          !get_duration(*t, "icap", "connect_timeout", ic.connect_timeout) ||
          !get_duration(*t, "icap", "response_timeout", ic.response_timeout))
        return false;
      for (const char* key : {"reqmod", "respmod"}) {
        const std::string& url = std::string_view(key) == "reqmod" ? ic.reqmod : ic.respmod;
        std::string why;
        if (!url.empty() && !icap::parse_service_url(url, &why))
          return fail(t->get(key)->source(), std::string("icap.") + key, why);
      }
      if (const toml::node* sn = t->get("service")) {
        const toml::array* arr = sn->as_array();
        if (!arr || !arr->is_array_of_tables())
          return fail(sn->source(), "icap.service", "expected [[icap.service]] tables");
        ic.services.clear();
        for (const toml::node& e : *arr) {
          const toml::table& st = *e.as_table();
          IcapServiceConfig svc;
          if (!check_keys(st, "icap.service", {"name", "url", "method", "fail"}) ||
              !get_string(st, "icap.service", "name", svc.name) ||
              !get_string(st, "icap.service", "url", svc.url) ||
              !get_choice(st, "icap.service", "method", {"reqmod", "respmod"}, svc.method) ||
              !get_choice(st, "icap.service", "fail", {"open", "closed"}, svc.fail))
            return false;
          for (const char* key : {"name", "url", "method"})
            if (!st.get(key)) return fail(st.source(), std::string("icap.service.") + key, "missing");
          bool name_ok = std::all_of(svc.name.begin(), svc.name.end(), [](char ch) {
            return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_';
          });
          if (svc.name.empty() || !name_ok)
            return fail(st.get("name")->source(), "icap.service.name",
                        "service names are lower-case letters, digits, '-' and '_'");
          std::string why;
          if (!icap::parse_service_url(svc.url, &why))
            return fail(st.get("url")->source(), "icap.service.url", why);
          ic.services.push_back(std::move(svc));
        }
      }
      std::vector<std::string> names;
      for (const auto& svc : ic.all_services()) {
        if (std::find(names.begin(), names.end(), svc.name) != names.end())
          return fail(t->source(), "icap.service.name",
                      "\"" + svc.name + "\" names two services (reqmod/respmod are the shorthand's names)");
        names.push_back(svc.name);
      }
    }
    if (bad_section_) return false;

    if (auto* t = section(root, "archive")) {
      ArchiveConfig& ac = cfg.archive;
      std::uint64_t interval_ms = static_cast<std::uint64_t>(ac.sync_interval.count());
      if (!check_keys(*t, "archive", {"dir", "key", "all", "sync", "interval_ms", "max_segment_bytes",
                                      "max_segment_age", "max_body", "queue_bytes", "on_failure",
                                      "writer_id", "retention_days", "compression", "compress_min_bytes",
                                      "commit_delay", "s3"}) ||
          !get_compression(*t, ac.compression) ||
          !get_uint(*t, "archive", "compress_min_bytes", 0, 1ull << 30, ac.compress_min_bytes) ||
          !get_uint(*t, "archive", "retention_days", 0, 36500, ac.retention_days) ||
          !get_path(*t, "archive", "dir", ac.dir) || !get_path(*t, "archive", "key", ac.key) ||
          !get_bool(*t, "archive", "all", ac.all) ||
          !get_choice(*t, "archive", "sync", {"record", "interval", "none"}, ac.sync) ||
          !get_uint(*t, "archive", "interval_ms", 1, 3600000, interval_ms) ||
          !get_uint(*t, "archive", "max_segment_bytes", 1ull << 16, 1ull << 40, ac.max_segment_bytes) ||
          !get_duration(*t, "archive", "max_segment_age", ac.max_segment_age) ||
          !get_duration(*t, "archive", "commit_delay", ac.commit_delay) ||
          !get_uint(*t, "archive", "max_body", 0, 1ull << 30, ac.max_body) ||
          !get_uint(*t, "archive", "queue_bytes", 1ull << 16, 1ull << 36, ac.queue_bytes) ||
          !get_choice(*t, "archive", "on_failure", {"closed", "open"}, ac.on_failure) ||
          !get_string(*t, "archive", "writer_id", ac.writer_id))
        return false;
      ac.sync_interval = milliseconds(interval_ms);
      bool id_ok = std::all_of(ac.writer_id.begin(), ac.writer_id.end(), [](char ch) {
        return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '.';
      });
      if (!id_ok) return fail(t->get("writer_id")->source(), "archive.writer_id", "letters, digits, '_' and '.' only");
      if (const toml::node* n = t->get("s3")) {
        if (!n->is_table()) return fail(n->source(), "archive.s3", "expected a table");
        const toml::table& st = *n->as_table();
        ArchiveS3Config& s3 = ac.s3;
        const std::string p = "archive.s3";
        if (!check_keys(st, p, {"url", "virtual_host", "region", "access_key", "secret_key", "credentials_file",
                                "ca_file", "node_id", "lock_mode", "retention", "legal_hold", "interval",
                                "backoff_max", "ready_backlog_bytes", "ready_backlog_age", "multipart_threshold",
                                "part_size", "delete_local_after"}) ||
            !get_string(st, p, "url", s3.url) || !get_bool(st, p, "virtual_host", s3.virtual_host) ||
            !get_string(st, p, "region", s3.region) || !get_string(st, p, "access_key", s3.access_key) ||
            !get_string(st, p, "secret_key", s3.secret_key) ||
            !get_path(st, p, "credentials_file", s3.credentials_file) || !get_path(st, p, "ca_file", s3.ca_file) ||
            !get_string(st, p, "node_id", s3.node_id) ||
            !get_choice(st, p, "lock_mode", {"compliance", "governance", "none"}, s3.lock_mode) ||
            !get_duration(st, p, "retention", s3.retention) || !get_bool(st, p, "legal_hold", s3.legal_hold) ||
            !get_duration(st, p, "interval", s3.interval) || !get_duration(st, p, "backoff_max", s3.backoff_max) ||
            !get_uint(st, p, "ready_backlog_bytes", 0, 1ull << 50, s3.ready_backlog_bytes) ||
            !get_duration(st, p, "ready_backlog_age", s3.ready_backlog_age) ||
            !get_duration(st, p, "delete_local_after", s3.delete_local_after) ||
            !get_uint(st, p, "multipart_threshold", 5ull << 20, 5ull << 30, s3.multipart_threshold) ||
            !get_uint(st, p, "part_size", 5ull << 20, 5ull << 30, s3.part_size))
          return false;
        if (!s3.node_id.empty() && (!archive::valid_writer_id(s3.node_id) || s3.node_id == "." || s3.node_id == ".."))
          return fail(st.get("node_id")->source(), "archive.s3.node_id", "letters, digits, '_' and '.' only");
        if (s3.region.empty() || s3.region.find_first_of(":/ ") != std::string::npos)
          return fail(st.source(), "archive.s3.region", "a region name such as \"eu-west-1\"");
        // An object is locked only with a date: no silent "shipped, unlocked".
        if (!s3.url.empty() && s3.lock_mode != "none" && s3.retention < std::chrono::seconds(1) &&
            ac.retention_days == 0)
          return fail(st.source(), "archive.s3",
                      "lock_mode = \"" + s3.lock_mode +
                          "\" needs a retention: archive.s3.retention (at least 1s) or archive.retention_days "
                          "(or lock_mode = \"none\" to rely on the bucket's default retention)");
        if (s3.retention.count() > 0 && s3.retention < std::chrono::seconds(1))
          return fail(st.get("retention")->source(), "archive.s3.retention", "at least 1s");
        // S3 allows 10,000 parts per upload.
        if (s3.part_size * 10000 < ac.max_segment_bytes)
          return fail(st.source(), "archive.s3.part_size",
                      "part_size x 10000 must cover archive.max_segment_bytes (" +
                          std::to_string(ac.max_segment_bytes) + ")");
        std::string why;
        if (!s3.url.empty() && !archive::s3::parse_target(s3.url, s3.virtual_host, &why))
          return fail(st.get("url")->source(), "archive.s3.url", why);
        if ((s3.access_key.empty()) != (s3.secret_key.empty()))
          return fail(st.source(), "archive.s3", "access_key and secret_key go together");
      }
    }
    if (bad_section_) return false;

    if (auto* t = section(root, "identity")) {
      IdentityConfig& id = cfg.identity;
      if (!check_keys(*t, "identity", {"credentials", "user_map", "groups", "realm", "cache_ttl"}) ||
          !get_path(*t, "identity", "credentials", id.credentials) ||
          !get_path(*t, "identity", "user_map", id.user_map) ||
          !get_path(*t, "identity", "groups", id.groups) ||
          !get_string(*t, "identity", "realm", id.realm) ||
          !get_duration(*t, "identity", "cache_ttl", id.cache_ttl))
        return false;
      // The realm is sent inside a quoted string.
      bool realm_ok = !id.realm.empty() && std::all_of(id.realm.begin(), id.realm.end(), [](char ch) {
        return ch >= ' ' && ch < 127 && ch != '"' && ch != '\\';
      });
      if (!realm_ok)
        return fail(t->get("realm")->source(), "identity.realm", "expected printable ASCII without '\"' or '\\'");
    }
    if (bad_section_) return false;

    if (auto* t = section(root, "keylog")) {
      if (!check_keys(*t, "keylog", {"client_file", "upstream_file", "rules"}) ||
          !get_path(*t, "keylog", "client_file", cfg.keylog.client_file) ||
          !get_path(*t, "keylog", "upstream_file", cfg.keylog.upstream_file) ||
          !get_string_list(*t, "keylog", "rules", cfg.keylog.rules))
        return false;
    }
    return !bad_section_;
  }

 private:
  std::string file_;
  ConfigError& err_;
  std::filesystem::path base_dir_;
  bool bad_section_ = false;
};

}  // namespace

std::vector<IcapServiceConfig> IcapConfig::all_services() const {
  std::vector<IcapServiceConfig> out;
  if (!reqmod.empty()) out.push_back({"reqmod", reqmod, "reqmod", ""});
  if (!respmod.empty()) out.push_back({"respmod", respmod, "respmod", ""});
  out.insert(out.end(), services.begin(), services.end());
  for (auto& s : out)
    if (s.fail.empty()) s.fail = fail;
  return out;
}

std::optional<std::pair<std::uint16_t, std::uint16_t>> parse_port_map(std::string_view s) {
  auto colon = s.find(':');
  if (colon == std::string_view::npos) return std::nullopt;
  auto port = [](std::string_view p) -> std::optional<std::uint16_t> {
    if (p.empty() || p.size() > 5) return std::nullopt;
    unsigned v = 0;
    for (char c : p) {
      if (c < '0' || c > '9') return std::nullopt;
      v = v * 10 + static_cast<unsigned>(c - '0');
    }
    if (v == 0 || v > 65535) return std::nullopt;
    return static_cast<std::uint16_t>(v);
  };
  auto from = port(s.substr(0, colon));
  auto to = port(s.substr(colon + 1));
  if (!from || !to) return std::nullopt;
  return std::pair{*from, *to};
}

Config default_config() {
  Config cfg;
  ListenerConfig l;
  l.address = "127.0.0.1:3128";
  l.addr = *net::parse_listen_address(l.address);
  cfg.listeners.push_back(l);
  return cfg;
}

std::optional<Config> parse_config(std::string_view toml_text, const std::string& source_name,
                                   ConfigError& err) {
  toml::table root;
  try {
    root = toml::parse(toml_text, source_name);
  } catch (const toml::parse_error& e) {
    std::ostringstream os;
    os << source_name << ":" << e.source().begin.line << ":" << e.source().begin.column << ": "
       << e.description();
    err.message = os.str();
    return std::nullopt;
  }
  Config cfg = default_config();
  cfg.source = source_name;
  Parser p(source_name, err);
  if (!p.parse(root, cfg)) return std::nullopt;
  return cfg;
}

std::optional<Config> load_config_file(const std::string& path, ConfigError& err) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    err.message = path + ": cannot open config file";
    return std::nullopt;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_config(ss.str(), path, err);
}

bool set_listen_addresses(Config& cfg, const std::vector<std::string>& explicit_addrs,
                          const std::vector<std::string>& redirect_addrs,
                          const std::vector<std::string>& tproxy_addrs, ConfigError& err) {
  std::vector<ListenerConfig> out;
  auto add = [&](const std::vector<std::string>& addrs, ListenerMode mode, const char* flag) {
    for (const auto& a : addrs) {
      auto addr = net::parse_listen_address(a);
      if (!addr) {
        err.message = std::string(flag) + " " + a + ": expected IP:PORT such as 127.0.0.1:3128 or [::1]:3128";
        return false;
      }
      ListenerConfig l;
      l.address = a;
      l.addr = *addr;
      l.mode = mode;
      out.push_back(l);
    }
    return true;
  };
  if (!add(explicit_addrs, ListenerMode::explicit_proxy, "--listen") ||
      !add(redirect_addrs, ListenerMode::redirect, "--transparent") ||
      !add(tproxy_addrs, ListenerMode::tproxy, "--tproxy"))
    return false;
  cfg.listeners = std::move(out);
  return true;
}

bool validate(const Config& cfg, ConfigError& err) {
  if (cfg.listeners.empty()) {
    err.message = "no listener configured";
    return false;
  }
  if (cfg.ca_cert.empty() || cfg.ca_key.empty()) {
    err.message = "ca.cert and ca.key are required (or --ca-cert/--ca-key)";
    return false;
  }
  if (cfg.archive.enabled() && cfg.archive.key.empty()) {
    err.message = "archive.key is required with archive.dir (or --archive-key; make one with "
                  "`sightline archive keygen FILE`)";
    return false;
  }
  return true;
}

}  // namespace sightline::app
