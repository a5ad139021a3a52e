#include "proxy/origin_pool.h"

#include <algorithm>
#include <cerrno>

#include <sys/socket.h>

namespace sightline::proxy {

OriginPool::OriginPool(uv_loop_t* loop, OriginPoolLimits limits, std::span<char> scratch,
                       std::function<void(PoolEvent)> on_event)
    : loop_(loop), limits_(limits), scratch_(scratch), on_event_(std::move(on_event)) {}

OriginPool::~OriginPool() { clear(true); }

std::string OriginPool::key(std::string_view target, std::string_view verified_name,
                            std::string_view alpn_offer) {
  std::string k;
  k.reserve(target.size() + verified_name.size() + alpn_offer.size() + 2);
  k.append(target).push_back('\0');
  k.append(verified_name).push_back('\0');
  k.append(alpn_offer);
  return k;
}

bool OriginPool::has_target(const std::string& target) const {
  auto it = per_target_.find(target);
  return it != per_target_.end() && it->second > 0;
}

namespace {
// Nothing has arrived that this loop has not seen yet: a close (or data)
// already in the socket, but behind this event in the loop's queue, would
// otherwise meet the next client's request.
bool socket_quiet(const ParkedOrigin& c) {
  uv_os_fd_t fd = -1;
  if (uv_fileno(c.tcp.handle(), &fd) != 0) return false;
  char b;
  ssize_t n = ::recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}
}  // namespace

// The newest usable connection for `key`, at the back of its list. The
// sweep runs every quarter of the idle timeout: one past it, or holding
// part of a record the origin sent while it waited, is dropped here
// instead of handed out.
ParkedOrigin* OriginPool::usable(const std::string& key) {
  std::uint64_t now = uv_now(loop_);
  auto limit = static_cast<std::uint64_t>(limits_.idle_timeout.count());
  for (;;) {
    auto it = idle_.find(key);  // drop() erases the entry with its last connection
    if (it == idle_.end() || it->second.empty()) return nullptr;
    ParkedOrigin* c = it->second.back().get();
    if (now - c->since >= limit) {
      drop(c, PoolEvent::expired);
      continue;
    }
    if (!SSL_has_pending(c->ssl.get()) && BIO_ctrl_pending(c->rbio) == 0 && socket_quiet(*c)) return c;
    drop(c, PoolEvent::origin_closed);
  }
}

const ParkedOrigin* OriginPool::peek(const std::string& key) { return usable(key); }

std::unique_ptr<ParkedOrigin> OriginPool::take(const std::string& key) {
  if (!usable(key)) return nullptr;
  auto it = idle_.find(key);
  std::unique_ptr<ParkedOrigin> c = std::move(it->second.back());
  it->second.pop_back();
  if (it->second.empty()) idle_.erase(it);
  --count_;
  if (auto t = per_target_.find(c->target); t != per_target_.end() && --t->second == 0)
    per_target_.erase(t);
  uv_read_stop(c->tcp.stream());
  c->tcp.get()->data = nullptr;
  c->pool = nullptr;
  ++c->uses;
  note(PoolEvent::reused);
  return c;
}

bool OriginPool::put(std::unique_ptr<ParkedOrigin> c) {
  if (!c || !c->tcp || !c->ssl) return false;
  auto& list = idle_[c->key];
  if (closed_ || list.size() >= limits_.per_origin || count_ >= limits_.total) {
    if (list.empty()) idle_.erase(c->key);
    if (!closed_) note(PoolEvent::full);
    close_conn(std::move(c));
    return false;
  }
  c->since = uv_now(loop_);
  c->pool = this;
  c->tcp.get()->data = c.get();
  // Nothing of this connection may stay buffered while it waits.
  (void)SSL_free_buffers(c->ssl.get());
  int rc = uv_read_start(
      c->tcp.stream(),
      [](uv_handle_t* h, std::size_t, uv_buf_t* buf) {
        auto* self = static_cast<ParkedOrigin*>(h->data)->pool;
        *buf = uv_buf_init(self->scratch_.data(), static_cast<unsigned>(self->scratch_.size()));
      },
      on_read);
  if (rc != 0) {
    if (list.empty()) idle_.erase(c->key);
    close_conn(std::move(c));
    return false;
  }
  ++per_target_[c->target];
  list.push_back(std::move(c));
  ++count_;
  note(PoolEvent::parked);
  if (!timer_) {
    timer_.init(uv_timer_init, loop_);
    timer_.get()->data = this;
    auto period = static_cast<std::uint64_t>(
        std::max<std::int64_t>(250, limits_.idle_timeout.count() / 4));
    uv_timer_start(timer_.get(), [](uv_timer_t* t) { static_cast<OriginPool*>(t->data)->sweep(); },
                   period, period);
    uv_unref(timer_.handle());  // parked connections alone never keep a loop alive
  }
  return true;
}

// A parked HTTP/1.1 connection may only receive TLS housekeeping (session
// tickets, key updates); anything else ends its use.
void OriginPool::on_read(uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
  auto* c = static_cast<ParkedOrigin*>(s->data);
  if (!c || !c->pool || n == 0) return;
  OriginPool& self = *c->pool;
  if (n < 0) {
    self.drop(c, PoolEvent::origin_closed);
    return;
  }
  BIO_write(c->rbio, buf->base, static_cast<int>(n));
  ERR_clear_error();
  int r = SSL_read(c->ssl.get(), self.scratch_.data(), static_cast<int>(self.scratch_.size()));
  if (r > 0 || SSL_get_error(c->ssl.get(), r) != SSL_ERROR_WANT_READ) {
    ERR_clear_error();
    self.drop(c, PoolEvent::origin_closed);
    return;
  }
  // Reading may have produced records to send (a KeyUpdate answer).
  char* out = nullptr;
  long pending = BIO_get_mem_data(c->wbio, &out);
  if (pending > 0) {
    uv_buf_t b = uv_buf_init(out, static_cast<unsigned>(pending));
    if (uv_try_write(s, &b, 1) != pending) {
      self.drop(c, PoolEvent::origin_closed);
      return;
    }
    (void)BIO_reset(c->wbio);
  }
  (void)SSL_free_buffers(c->ssl.get());
}

void OriginPool::drop(ParkedOrigin* c, PoolEvent why) {
  auto it = idle_.find(c->key);
  if (it == idle_.end()) return;
  auto& list = it->second;
  auto pos = std::find_if(list.begin(), list.end(), [&](const auto& p) { return p.get() == c; });
  if (pos == list.end()) return;
  std::unique_ptr<ParkedOrigin> owned = std::move(*pos);
  list.erase(pos);
  if (list.empty()) idle_.erase(it);
  --count_;
  if (auto t = per_target_.find(owned->target); t != per_target_.end() && --t->second == 0)
    per_target_.erase(t);
  note(why);
  close_conn(std::move(owned));
}

// Ends a connection politely: close_notify when the socket takes it at once.
void OriginPool::close_conn(std::unique_ptr<ParkedOrigin> c) {
  if (c->tcp) {
    uv_read_stop(c->tcp.stream());
    c->tcp.get()->data = nullptr;
    if (c->ssl) {
      ERR_clear_error();
      (void)SSL_shutdown(c->ssl.get());
      ERR_clear_error();
      char* out = nullptr;
      long pending = BIO_get_mem_data(c->wbio, &out);
      if (pending > 0) {
        uv_buf_t b = uv_buf_init(out, static_cast<unsigned>(pending));
        (void)uv_try_write(c->tcp.stream(), &b, 1);
      }
    }
    c->tcp.reset();
  }
}

void OriginPool::sweep() {
  std::uint64_t now = uv_now(loop_);
  auto limit = static_cast<std::uint64_t>(limits_.idle_timeout.count());
  std::vector<ParkedOrigin*> expired;
  for (auto& [key, list] : idle_)
    for (auto& c : list)
      if (now - c->since >= limit) expired.push_back(c.get());
  for (ParkedOrigin* c : expired) drop(c, PoolEvent::expired);
  if (count_ == 0) timer_.reset();
}

void OriginPool::clear(bool for_good) {
  if (for_good) closed_ = true;
  std::vector<ParkedOrigin*> all;
  for (auto& [key, list] : idle_)
    for (auto& c : list) all.push_back(c.get());
  for (ParkedOrigin* c : all) drop(c, PoolEvent::shutdown);
  timer_.reset();
}

}  // namespace sightline::proxy
