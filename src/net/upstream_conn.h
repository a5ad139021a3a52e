// A plain TCP connection to an origin, used by the plain-HTTP proxy: it
// resolves (off-loop), connects with a timeout, and can be parked in the
// worker's pool between requests. Shared ownership: libuv requests in
// flight hold a reference, so the object outlives every callback.
#pragma once

#include "core/uv_handle.h"
#include "net/destination_check.h"

#include <uv.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

namespace sightline::net {

class UpstreamConn : public std::enable_shared_from_this<UpstreamConn> {
 public:
  // Receives the connection's events; detached (null) while pooled.
  class Owner {
   public:
    virtual ~Owner() = default;
    virtual void on_upstream_connected(UpstreamConn& c, int status, const std::string& error) = 0;
    virtual void on_upstream_data(UpstreamConn& c, std::span<const char> data) = 0;
    virtual void on_upstream_closed(UpstreamConn& c, const std::string& reason) = 0;  // EOF/error
    virtual void on_upstream_drained(UpstreamConn& c) = 0;  // all queued writes done
  };

  UpstreamConn(uv_loop_t* loop, std::string host, std::uint16_t port,
               std::span<char> read_buffer);
  ~UpstreamConn();

  // Resolves and connects to the first address `check` (if any) allows;
  // on_upstream_connected reports the result (kDestinationRefused when
  // every address was refused).
  void connect(std::chrono::milliseconds timeout, Owner* owner, const DestinationCheck* check = nullptr);
  void set_owner(Owner* owner) { owner_ = owner; }
  void write(std::span<const char> data);
  std::size_t queued() const;
  void read_start();
  void read_stop();
  void close();

  bool connected() const { return connected_ && !closed_; }
  const std::string& key() const { return key_; }
  const std::string& peer() const { return peer_; }

 private:
  struct ResolveReq;
  struct ConnectReq;
  struct WriteReq;
  void on_resolved(int status, addrinfo* res);
  void try_next();
  void fail_connect(std::string error, int status = -1);

  uv_loop_t* loop_;
  std::string host_;
  std::uint16_t port_;
  std::string key_;
  std::string peer_;
  std::span<char> read_buffer_;
  Owner* owner_ = nullptr;
  core::UvHandle<uv_tcp_t> tcp_;
  core::UvHandle<uv_timer_t> timer_;
  std::unique_ptr<addrinfo, void (*)(addrinfo*)> addrs_{nullptr, uv_freeaddrinfo};
  addrinfo* next_ = nullptr;
  std::string last_error_;
  std::string refused_;  // why the last refused address was refused
  const DestinationCheck* check_ = nullptr;
  bool connecting_ = false;
  bool connected_ = false;
  bool closed_ = false;
  bool reading_ = false;
};

// Idle origin connections of one worker, by "host:port". Parked connections
// keep reading so a server's close is noticed; they are dropped after
// `idle_timeout`, and the pool is bounded per origin and in total.
class UpstreamPool : public UpstreamConn::Owner {
 public:
  UpstreamPool(uv_loop_t* loop, std::chrono::milliseconds idle_timeout, std::size_t per_origin,
               std::size_t total);
  ~UpstreamPool() override;

  std::shared_ptr<UpstreamConn> take(const std::string& key);
  void put(std::shared_ptr<UpstreamConn> conn);
  void clear();
  std::size_t size() const { return count_; }

  // While parked, any data or a close makes the connection unusable.
  void on_upstream_connected(UpstreamConn&, int, const std::string&) override {}
  void on_upstream_data(UpstreamConn& c, std::span<const char>) override { drop(c); }
  void on_upstream_closed(UpstreamConn& c, const std::string&) override { drop(c); }
  void on_upstream_drained(UpstreamConn&) override {}

 private:
  struct Idle {
    std::shared_ptr<UpstreamConn> conn;
    std::uint64_t since = 0;
  };
  void sweep();
  void drop(UpstreamConn& c);

  uv_loop_t* loop_;
  std::chrono::milliseconds idle_timeout_;
  std::size_t per_origin_, total_;
  std::unordered_map<std::string, std::vector<Idle>> idle_;
  std::size_t count_ = 0;
  core::UvHandle<uv_timer_t> timer_;
};

}  // namespace sightline::net
