#include "net/upstream_conn.h"

#include "net/address.h"

#include <algorithm>
#include <cstring>

namespace sightline::net {

struct UpstreamConn::ResolveReq {
  uv_getaddrinfo_t req{};
  std::shared_ptr<UpstreamConn> conn;
};
struct UpstreamConn::ConnectReq {
  uv_connect_t req{};
  std::shared_ptr<UpstreamConn> conn;
};
struct UpstreamConn::WriteReq {
  uv_write_t req{};
  std::unique_ptr<char[]> data;
  std::shared_ptr<UpstreamConn> conn;
};

UpstreamConn::UpstreamConn(uv_loop_t* loop, std::string host, std::uint16_t port,
                           std::span<char> read_buffer)
    : loop_(loop), host_(std::move(host)), port_(port), read_buffer_(read_buffer) {
  HostPort hp{host_, port_, HostKind::name};
  if (host_.find(':') != std::string::npos) hp.kind = HostKind::ipv6;
  key_ = hp.to_string();
}

UpstreamConn::~UpstreamConn() = default;

void UpstreamConn::connect(std::chrono::milliseconds timeout, Owner* owner, const DestinationCheck* check) {
  owner_ = owner;
  check_ = check;
  connecting_ = true;
  timer_.init(uv_timer_init, loop_);
  timer_.get()->data = this;
  uv_timer_start(timer_.get(), [](uv_timer_t* t) {
    auto* self = static_cast<UpstreamConn*>(t->data);
    self->fail_connect("connect to " + self->key_ + " timed out");
  }, static_cast<std::uint64_t>(timeout.count()), 0);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  auto req = std::make_unique<ResolveReq>();
  req->conn = shared_from_this();
  req->req.data = req.get();
  std::string port = std::to_string(port_);
  int rc = uv_getaddrinfo(loop_, &req->req, [](uv_getaddrinfo_t* r, int status, addrinfo* res) {
    std::unique_ptr<ResolveReq> owned(static_cast<ResolveReq*>(r->data));
    owned->conn->on_resolved(status, res);
  }, host_.c_str(), port.c_str(), &hints);
  if (rc != 0) {
    on_resolved(rc, nullptr);
    return;
  }
  (void)req.release();  // owned by the callback
}

void UpstreamConn::on_resolved(int status, addrinfo* res) {
  addrs_.reset(res);
  if (!connecting_ || closed_) return;
  if (status != 0 || !res) {
    fail_connect("DNS resolution failed for " + host_ + ": " + uv_strerror(status), kResolveFailed);
    return;
  }
  next_ = addrs_.get();
  try_next();
}

void UpstreamConn::try_next() {
  while (next_) {
    if (next_->ai_family == AF_INET || next_->ai_family == AF_INET6) {
      auto why = check_ ? check_->refuse_destination(*next_->ai_addr) : std::nullopt;
      if (!why) break;
      refused_ = std::move(*why);
    }
    next_ = next_->ai_next;
  }
  if (!next_) {
    if (last_error_.empty() && !refused_.empty()) {
      fail_connect("destination refused: " + refused_, kDestinationRefused);
      return;
    }
    fail_connect("connect to " + key_ + " failed: " + (last_error_.empty() ? "no address" : last_error_));
    return;
  }
  addrinfo* ai = next_;
  next_ = ai->ai_next;
  peer_ = sockaddr_to_string(ai->ai_addr);
  // A socket whose connect failed cannot be reused; a fresh handle each try.
  tcp_.reset();
  if (int rc = tcp_.init(uv_tcp_init, loop_); rc != 0) {
    fail_connect(std::string("socket: ") + uv_strerror(rc));
    return;
  }
  tcp_.get()->data = this;
  uv_tcp_nodelay(tcp_.get(), 1);
  auto req = std::make_unique<ConnectReq>();
  req->conn = shared_from_this();
  req->req.data = req.get();
  int rc = uv_tcp_connect(&req->req, tcp_.get(), ai->ai_addr, [](uv_connect_t* r, int st) {
    std::unique_ptr<ConnectReq> owned(static_cast<ConnectReq*>(r->data));
    UpstreamConn& self = *owned->conn;
    if (!self.connecting_ || self.closed_ || st == UV_ECANCELED) return;
    if (st != 0) {
      self.last_error_ = self.peer_ + ": " + uv_strerror(st);
      self.try_next();
      return;
    }
    self.connecting_ = false;
    self.connected_ = true;
    self.timer_.reset();
    if (self.owner_) self.owner_->on_upstream_connected(self, 0, {});
  });
  if (rc != 0) {
    last_error_ = peer_ + ": " + uv_strerror(rc);
    try_next();
    return;
  }
  (void)req.release();
}

void UpstreamConn::fail_connect(std::string error, int status) {
  if (!connecting_) return;
  connecting_ = false;
  timer_.reset();
  close();
  if (owner_) owner_->on_upstream_connected(*this, status, error);
}

void UpstreamConn::write(std::span<const char> data) {
  if (!connected()) return;
  auto* stream = tcp_.stream();
  if (uv_stream_get_write_queue_size(stream) == 0) {
    uv_buf_t b = uv_buf_init(const_cast<char*>(data.data()), static_cast<unsigned>(data.size()));
    int w = uv_try_write(stream, &b, 1);
    if (w > 0) data = data.subspan(static_cast<std::size_t>(w));
    if (data.empty()) return;
  }
  auto req = std::make_unique<WriteReq>();
  req->data = std::make_unique<char[]>(data.size());
  std::memcpy(req->data.get(), data.data(), data.size());
  req->conn = shared_from_this();
  req->req.data = req.get();
  uv_buf_t b = uv_buf_init(req->data.get(), static_cast<unsigned>(data.size()));
  int rc = uv_write(&req->req, stream, &b, 1, [](uv_write_t* r, int status) {
    std::unique_ptr<WriteReq> owned(static_cast<WriteReq*>(r->data));
    UpstreamConn& self = *owned->conn;
    if (self.closed_) return;
    if (status < 0) {
      self.close();
      if (self.owner_) self.owner_->on_upstream_closed(self, std::string("write failed: ") + uv_strerror(status));
      return;
    }
    if (self.owner_ && self.queued() == 0) self.owner_->on_upstream_drained(self);
  });
  if (rc != 0) {
    close();
    if (owner_) owner_->on_upstream_closed(*this, std::string("write failed: ") + uv_strerror(rc));
    return;
  }
  (void)req.release();
}

std::size_t UpstreamConn::queued() const {
  return connected() ? uv_stream_get_write_queue_size(tcp_.stream()) : 0;
}

void UpstreamConn::read_start() {
  if (!connected() || reading_) return;
  reading_ = true;
  uv_read_start(
      tcp_.stream(),
      [](uv_handle_t* h, std::size_t, uv_buf_t* buf) {
        auto* self = static_cast<UpstreamConn*>(h->data);
        *buf = uv_buf_init(self->read_buffer_.data(), static_cast<unsigned>(self->read_buffer_.size()));
      },
      [](uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
        auto* self = static_cast<UpstreamConn*>(s->data);
        if (n == 0 || self->closed_) return;
        // Keep the object alive through the owner's handling of this event.
        auto keep = self->shared_from_this();
        if (n < 0) {
          std::string why = n == UV_EOF ? "origin closed the connection"
                                        : std::string("read error: ") + uv_strerror(static_cast<int>(n));
          self->close();
          if (self->owner_) self->owner_->on_upstream_closed(*self, why);
          return;
        }
        if (self->owner_)
          self->owner_->on_upstream_data(*self, std::span<const char>(buf->base, static_cast<std::size_t>(n)));
      });
}

void UpstreamConn::read_stop() {
  if (!reading_ || !connected()) return;
  reading_ = false;
  uv_read_stop(tcp_.stream());
}

void UpstreamConn::close() {
  if (closed_) return;
  closed_ = true;
  connected_ = false;
  timer_.reset();
  tcp_.reset();
}

// ---------------------------------------------------------------------------

UpstreamPool::UpstreamPool(uv_loop_t* loop, std::chrono::milliseconds idle_timeout,
                           std::size_t per_origin, std::size_t total)
    : loop_(loop), idle_timeout_(idle_timeout), per_origin_(per_origin), total_(total) {}

UpstreamPool::~UpstreamPool() { clear(); }

std::shared_ptr<UpstreamConn> UpstreamPool::take(const std::string& key) {
  auto it = idle_.find(key);
  while (it != idle_.end() && !it->second.empty()) {
    auto conn = std::move(it->second.back().conn);
    it->second.pop_back();
    --count_;
    if (conn->connected()) {
      conn->read_stop();
      conn->set_owner(nullptr);
      return conn;
    }
  }
  return nullptr;
}

void UpstreamPool::put(std::shared_ptr<UpstreamConn> conn) {
  if (!conn || !conn->connected()) return;
  auto& list = idle_[conn->key()];
  if (list.size() >= per_origin_ || count_ >= total_) {
    conn->close();
    return;
  }
  conn->set_owner(this);
  conn->read_start();
  list.push_back({std::move(conn), uv_now(loop_)});
  ++count_;
  if (!timer_) {
    timer_.init(uv_timer_init, loop_);
    timer_.get()->data = this;
    auto period = static_cast<std::uint64_t>(std::max<std::int64_t>(1000, idle_timeout_.count() / 2));
    uv_timer_start(timer_.get(), [](uv_timer_t* t) { static_cast<UpstreamPool*>(t->data)->sweep(); },
                   period, period);
    uv_unref(timer_.handle());  // an idle pool never keeps a loop alive
  }
}

void UpstreamPool::drop(UpstreamConn& c) {
  c.close();
  auto it = idle_.find(c.key());
  if (it == idle_.end()) return;
  auto& list = it->second;
  auto pos = std::find_if(list.begin(), list.end(), [&](const Idle& i) { return i.conn.get() == &c; });
  if (pos != list.end()) {
    list.erase(pos);
    --count_;
  }
}

void UpstreamPool::sweep() {
  std::uint64_t now = uv_now(loop_);
  auto limit = static_cast<std::uint64_t>(idle_timeout_.count());
  for (auto it = idle_.begin(); it != idle_.end();) {
    auto& list = it->second;
    for (auto i = list.begin(); i != list.end();) {
      if (now - i->since >= limit || !i->conn->connected()) {
        i->conn->close();
        i = list.erase(i);
        --count_;
      } else {
        ++i;
      }
    }
    it = list.empty() ? idle_.erase(it) : std::next(it);
  }
}

void UpstreamPool::clear() {
  for (auto& [key, list] : idle_)
    for (auto& i : list) i.conn->close();
  idle_.clear();
  count_ = 0;
  timer_.reset();
}

}  // namespace sightline::net
