#include "hooks/tap.h"

#include <nlohmann/json.hpp>

#include <algorithm>

namespace sightline::hooks {

StreamTap::StreamTap(std::vector<Channel*> channels, std::shared_ptr<const FlowInfo> flow)
    : channels_(std::move(channels)), flow_(std::move(flow)) {}

bool StreamTap::publish(StreamEvent&& ev) {
  bool pause = false;
  for (std::size_t i = 0; i < channels_.size(); ++i) {
    Channel* c = channels_[i];
    // The last consumer takes the event itself; the others a copy.
    Publish r = i + 1 == channels_.size() ? c->publish(std::move(ev)) : c->publish(ev);
    if (r == Publish::over_limit) {
      if (std::find(over_limit_.begin(), over_limit_.end(), c) == over_limit_.end())
        over_limit_.push_back(c);
      pause = true;
    }
  }
  return pause;
}

bool StreamTap::open() {
  if (channels_.empty()) return false;
  StreamEvent ev;
  ev.kind = StreamKind::open;
  ev.ts = WallClock::now();
  ev.flow = flow_;
  return publish(std::move(ev));
}

bool StreamTap::data(FlowDir dir, std::span<const char> bytes) {
  if (channels_.empty() || closed_ || bytes.empty()) return false;
  StreamEvent ev;
  ev.kind = StreamKind::data;
  ev.dir = dir;
  ev.ts = WallClock::now();
  ev.flow = flow_;
  ev.bytes.assign(bytes.data(), bytes.size());
  return publish(std::move(ev));
}

void StreamTap::close(bool clean) {
  if (channels_.empty() || closed_) return;
  closed_ = true;
  StreamEvent ev;
  ev.kind = StreamKind::close;
  ev.clean = clean;
  ev.ts = WallClock::now();
  ev.flow = flow_;
  (void)publish(std::move(ev));
}

void StreamTap::when_drained(std::function<void()> fn) {
  if (over_limit_.empty()) {
    fn();
    return;
  }
  // Wait for each over-limit consumer in turn; the last one runs `fn`.
  auto chain = std::make_shared<std::function<void(std::size_t)>>();
  auto waiting = std::make_shared<std::vector<Channel*>>(std::move(over_limit_));
  over_limit_.clear();
  *chain = [waiting, fn = std::move(fn), weak = std::weak_ptr(chain)](std::size_t i) {
    if (i == waiting->size()) {
      fn();
      return;
    }
    auto self = weak.lock();
    (*waiting)[i]->when_drained([self, i] { (*self)(i + 1); });
  };
  (*chain)(0);
}

std::vector<Channel*> select_channels(const Bus& bus, const std::vector<std::string>* names, Kind kind) {
  std::vector<Channel*> out;
  for (auto& c : bus.channels()) {
    const Wants& w = c->wants();
    bool wanted = kind == Kind::streams ? w.streams : kind == Kind::exchanges ? w.exchanges : w.connections;
    if (wanted && (!names || std::find(names->begin(), names->end(), c->name()) != names->end()))
      out.push_back(c.get());
  }
  return out;
}

ConnectionRecord connection_record_from_log(const nlohmann::json& j) {
  auto str = [&](const char* k) -> std::string {
    auto it = j.find(k);
    return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  auto u64 = [&](const char* k) -> std::uint64_t {
    auto it = j.find(k);
    return it != j.end() && it->is_number_unsigned() ? it->get<std::uint64_t>()
           : it != j.end() && it->is_number_integer() ? static_cast<std::uint64_t>(std::max<std::int64_t>(0, it->get<std::int64_t>()))
                                                      : 0;
  };
  auto dbl = [&](const char* k) -> double {
    auto it = j.find(k);
    return it != j.end() && it->is_number() ? it->get<double>() : -1;
  };
  auto tls = [&](const char* k) {
    TlsDetails t;
    auto it = j.find(k);
    if (it == j.end() || !it->is_object()) return t;
    for (auto [field, out] : {std::pair{"version", &t.version}, {"cipher", &t.cipher}, {"alpn", &t.alpn}}) {
      auto f = it->find(field);
      if (f != it->end() && f->is_string()) *out = f->get<std::string>();
    }
    return t;
  };
  ConnectionRecord r;
  r.ts = WallClock::now();
  r.id = u64("id");
  r.client = str("client");
  r.target = str("target");
  r.server = str("upstream_addr");
  r.sni = str("sni");
  r.action = str("action");
  r.policy = str("policy");
  r.user = str("user");
  if (auto g = j.find("groups"); g != j.end() && g->is_array())
    for (const auto& v : *g)
      if (v.is_string()) r.groups.push_back(v.get<std::string>());
  r.client_tls = tls("client_tls");
  r.upstream_tls = tls("upstream_tls");
  r.upstream_verdict = str("upstream_verdict");
  r.upstream_reason = str("upstream_reason");
  r.codec = str("codec");
  r.status = static_cast<int>(u64("status"));
  r.bytes_client_to_server = u64("bytes_client_to_server");
  r.bytes_server_to_client = u64("bytes_server_to_client");
  r.upstream_connect_ms = dbl("upstream_connect_ms");
  r.upstream_handshake_ms = dbl("upstream_handshake_ms");
  r.forge_ms = dbl("forge_ms");
  r.client_handshake_ms = dbl("client_handshake_ms");
  r.total_ms = dbl("total_ms");
  r.close_reason = str("close_reason");
  auto ab = j.find("auto_bypass");
  r.auto_bypass = ab != j.end() && ab->is_boolean() && ab->get<bool>();
  return r;
}

void publish_connection(const Bus& bus, const std::optional<std::vector<std::string>>* rule_hooks,
                        std::string_view rule_name, const nlohmann::json& log_fields) {
  if (!bus.wants_connections()) return;
  auto channels = select_channels(bus, rule_hooks && *rule_hooks ? &**rule_hooks : nullptr, Kind::connections);
  if (channels.empty()) return;
  auto rec = std::make_shared<ConnectionRecord>(connection_record_from_log(log_fields));
  rec->rule = rule_name;
  std::shared_ptr<const ConnectionRecord> shared = std::move(rec);
  for (Channel* c : channels) (void)c->publish(shared);
}

}  // namespace sightline::hooks
