// Verified TLS connections to origins, kept between client connections
// (upstream.reuse, docs/interception.md). When an intercepted HTTP/1.1
// connection ends with its origin connection idle at a message boundary,
// the session parks that connection here; a later client connection to the
// same target, with the same SNI and ALPN offer, takes it instead of
// connecting and handshaking again. One pool per worker, used on its loop.
//
// Only connections whose origin certificate verified are parked, so a
// reused connection never carries a weaker verdict than a new one. A parked
// connection keeps reading: a close, an alert or any application data (an
// HTTP/1.1 server never speaks unasked) makes it unusable and it goes;
// post-handshake TLS messages (session tickets) are absorbed.
#pragma once

#include "core/uv_handle.h"
#include "tls/ossl.h"

#include <uv.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace sightline::proxy {

// An idle origin connection and what the session that made it knew of it.
struct ParkedOrigin {
  core::UvHandle<uv_tcp_t> tcp;  // connected; `data` points here while parked
  tls::SslPtr ssl;               // handshake done, certificate verified
  BIO* rbio = nullptr;           // owned by ssl
  BIO* wbio = nullptr;           // owned by ssl
  std::string target;            // "host:port" as the client asked for it
  std::string key;               // OriginPool::key()
  std::string addr;              // the origin address connected to
  std::string resume_key;        // its entry in the upstream session cache
  bool resumed = false;          // its handshake resumed a session
  std::uint64_t since = 0;       // uv_now() when parked
  std::uint64_t uses = 1;        // client connections it has served
  class OriginPool* pool = nullptr;  // while parked
};

// What happens to pooled connections, for metrics: `parked` adds one to
// the pool, `reused`, `expired`, `origin_closed` and `shutdown` take one away.
enum class PoolEvent : std::uint8_t {
  parked,         // a client connection ended and left its origin connection here
  reused,         // a client connection took one
  expired,        // idle longer than idle_timeout
  origin_closed,  // the origin closed it, or sent something, while parked
  full,           // not parked: the per-origin or total limit was reached
  shutdown,       // closed because the worker drains or stops
  count
};

struct OriginPoolLimits {
  std::chrono::milliseconds idle_timeout{4'000};
  std::size_t per_origin = 16;
  std::size_t total = 512;
};

class OriginPool {
 public:
  OriginPool(uv_loop_t* loop, OriginPoolLimits limits, std::span<char> scratch,
             std::function<void(PoolEvent)> on_event = {});
  ~OriginPool();
  OriginPool(const OriginPool&) = delete;
  OriginPool& operator=(const OriginPool&) = delete;

  // What a connection must match to be reused: the target the client named,
  // the name verified (SNI, or the target host when there is none) and the
  // ALPN protocols offered to the origin (wire form).
  static std::string key(std::string_view target, std::string_view verified_name,
                         std::string_view alpn_offer);

  // Whether any connection to `target` is parked (the session then reads
  // the ClientHello before connecting, to see if one fits).
  bool has_target(const std::string& target) const;
  // The connection take(key) would return now (null if none), left parked.
  const ParkedOrigin* peek(const std::string& key);
  // The most recently parked connection for `key`, reading stopped; null if none.
  std::unique_ptr<ParkedOrigin> take(const std::string& key);
  // Parks `c` (its reading is started here), or closes it when the pool is
  // full or closed. Returns whether it was parked.
  bool put(std::unique_ptr<ParkedOrigin> c);
  // Closes every parked connection; with `for_good` later puts close too
  // (the worker is draining or stopping).
  void clear(bool for_good = false);
  std::size_t size() const { return count_; }
  bool closed() const { return closed_; }  // cleared for good: puts close


 private:
  static void on_read(uv_stream_t* s, ssize_t n, const uv_buf_t* buf);
  void drop(ParkedOrigin* c, PoolEvent why);
  ParkedOrigin* usable(const std::string& key);
  void note(PoolEvent e) {
    if (on_event_) on_event_(e);
  }
  void close_conn(std::unique_ptr<ParkedOrigin> c);
  void sweep();

  uv_loop_t* loop_;
  OriginPoolLimits limits_;
  std::span<char> scratch_;
  std::unordered_map<std::string, std::vector<std::unique_ptr<ParkedOrigin>>> idle_;
  std::unordered_map<std::string, std::size_t> per_target_;
  std::size_t count_ = 0;
  bool closed_ = false;
  core::UvHandle<uv_timer_t> timer_;
  std::function<void(PoolEvent)> on_event_;
};

}  // namespace sightline::proxy
