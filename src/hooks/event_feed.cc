#include "hooks/event_feed.h"

#include "core/log.h"
#include "hooks/event_json.h"
#include "hooks/send_pending.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>

namespace sightline::hooks {
namespace {

// Readers are not expected to send anything; what they send is discarded,
// at most this much per wake-up so one chatty reader cannot hog the thread.
constexpr std::size_t kDiscardPerPoll = 64 * 1024;
// Consumed backlog bytes are dropped from the front once they pass this.
constexpr int kAcceptsPerPoll = 16;

std::optional<sockaddr_un> unix_address(const std::string& path) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof sa.sun_path) return std::nullopt;
  std::memcpy(sa.sun_path, path.data(), path.size());
  return sa;
}

std::string peer_of(int fd) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return "unknown";
  return "pid=" + std::to_string(cred.pid) + " uid=" + std::to_string(cred.uid);
}

}  // namespace

std::unique_ptr<EventFeedSink> EventFeedSink::create(EventFeedOptions opts, std::string* error) {
  auto fail = [&](std::string msg) {
    if (error) *error = opts.socket_path + ": " + std::move(msg);
    return std::unique_ptr<EventFeedSink>();
  };
  auto sa = unix_address(opts.socket_path);
  if (!sa) return fail("socket path empty or longer than " + std::to_string(sizeof(sockaddr_un::sun_path) - 1) + " bytes");
  struct stat st{};
  if (::lstat(opts.socket_path.c_str(), &st) == 0) {
    // Only a socket nobody listens on any more (a crashed run) is replaced.
    if (!S_ISSOCK(st.st_mode)) return fail("exists and is not a socket; not replacing it");
    pcap::UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!probe) return fail(std::string("socket: ") + std::strerror(errno));
    if (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&*sa), sizeof *sa) == 0)
      return fail("another process is listening on it");
    if (errno != ECONNREFUSED) return fail(std::string("probing the existing socket: ") + std::strerror(errno));
    if (::unlink(opts.socket_path.c_str()) != 0 && errno != ENOENT)
      return fail(std::string("removing the stale socket: ") + std::strerror(errno));
  } else if (errno != ENOENT) {
    return fail(std::string("lstat: ") + std::strerror(errno));
  }
  pcap::UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return fail(std::string("socket: ") + std::strerror(errno));
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&*sa), sizeof *sa) != 0)
    return fail(std::string("bind: ") + std::strerror(errno));
  // Permissions before listen(): until then a connect is refused, so nobody
  // gets in through the umask's looser default.
  if (::chmod(opts.socket_path.c_str(), static_cast<mode_t>(opts.mode)) != 0 ||
      ::lstat(opts.socket_path.c_str(), &st) != 0) {
    std::string why = std::strerror(errno);
    ::unlink(opts.socket_path.c_str());
    return fail("chmod: " + why);
  }
  if (::listen(fd.get(), 64) != 0) {
    std::string why = std::strerror(errno);
    ::unlink(opts.socket_path.c_str());
    return fail("listen: " + why);
  }
  pcap::UniqueFd wake(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!wake) {
    std::string why = std::strerror(errno);
    ::unlink(opts.socket_path.c_str());
    return fail("eventfd: " + why);
  }
  return std::unique_ptr<EventFeedSink>(
      new EventFeedSink(std::move(opts), std::move(fd), std::move(wake), st.st_dev, st.st_ino));
}

EventFeedSink::EventFeedSink(EventFeedOptions opts, pcap::UniqueFd listen_fd, pcap::UniqueFd wake_fd,
                             dev_t dev, ino_t ino)
    : opts_(std::move(opts)), listen_fd_(std::move(listen_fd)), wake_fd_(std::move(wake_fd)),
      dev_(dev), ino_(ino) {
  io_thread_ = std::thread([this] { io_loop(); });
}

EventFeedSink::~EventFeedSink() { on_stop(); }

Wants EventFeedSink::wants() const {
  Wants w;
  w.streams = false;
  w.exchanges = true;
  w.connections = true;
  w.body_cap = opts_.include_bodies ? opts_.body_cap : 0;
  return w;
}

void EventFeedSink::on_exchange(const ExchangeRecord& rec) {
  line_.clear();
  format_exchange(line_, rec, opts_.include_bodies ? opts_.body_cap : 0);
  exchanges_.fetch_add(1, std::memory_order_relaxed);
  broadcast(line_);
}

void EventFeedSink::on_connection(const ConnectionRecord& rec) {
  line_.clear();
  format_connection(line_, rec);
  connections_.fetch_add(1, std::memory_order_relaxed);
  broadcast(line_);
}

bool EventFeedSink::push(Reader& r) { return send_pending(r.fd.get(), r.pending, r.sent); }

void EventFeedSink::broadcast(const std::string& line) {
  bool need_wake = false;
  {
    std::lock_guard lock(mu_);
    for (auto& rp : readers_) {
      Reader& r = *rp;
      if (r.dead) continue;
      std::size_t backlog = r.pending.size() - r.sent;
      if (backlog + line.size() > opts_.reader_backlog_bytes) {
        // Too slow: cut it off rather than wait or grow. shutdown() wakes
        // the I/O thread's poll, which closes the descriptor.
        r.dead = true;
        ::shutdown(r.fd.get(), SHUT_RDWR);
        readers_now_.fetch_sub(1, std::memory_order_relaxed);
        dropped_.fetch_add(1, std::memory_order_relaxed);
        note_drop(r);
        need_wake = true;
        continue;
      }
      r.pending.append(line);
      if (!push(r)) {
        r.dead = true;
        readers_now_.fetch_sub(1, std::memory_order_relaxed);
        need_wake = true;
      } else if (backlog == 0 && r.sent < r.pending.size()) {
        need_wake = true;  // the I/O thread must now wait for POLLOUT
      }
    }
  }
  if (need_wake) wake();
}

void EventFeedSink::note_drop(const Reader& r) {
  // One warning per 10 s, whatever the drop rate.
  auto secs = std::chrono::duration_cast<std::chrono::seconds>(
                  std::chrono::steady_clock::now().time_since_epoch()).count();
  auto last = last_drop_log_.load(std::memory_order_relaxed);
  if (secs - last >= 10 && last_drop_log_.compare_exchange_strong(last, secs))
    log::emit(log::Line(log::Level::warn, "events_reader_dropped")
                  .str("peer", r.peer)
                  .num("backlog_bytes", static_cast<std::uint64_t>(r.pending.size() - r.sent))
                  .num("dropped_total", dropped_.load(std::memory_order_relaxed))
                  .str("msg", "event feed reader too slow: disconnected"));
}

void EventFeedSink::wake() {
  std::uint64_t one = 1;
  ssize_t n = ::write(wake_fd_.get(), &one, sizeof one);
  (void)n;  // EAGAIN: the counter is already non-zero, a wake-up is pending
}

int EventFeedSink::accept_readers() {
  for (int i = 0; i < kAcceptsPerPoll; ++i) {
    int fd = ::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      int e = errno;
      return e == EAGAIN || e == EWOULDBLOCK || e == EINTR || e == ECONNABORTED ? 0 : e;
    }
    pcap::UniqueFd rfd(fd);
    std::string peer = peer_of(fd);
    if (readers_now_.load(std::memory_order_relaxed) >= opts_.max_readers) {
      log::emit(log::Line(log::Level::warn, "events_reader_refused")
                    .str("peer", peer)
                    .num("max_readers", static_cast<std::uint64_t>(opts_.max_readers)));
      continue;  // closed by rfd
    }
    auto r = std::make_unique<Reader>();
    r->serial = next_serial_++;
    r->fd = std::move(rfd);
    r->peer = std::move(peer);
    accepted_.fetch_add(1, std::memory_order_relaxed);
    readers_now_.fetch_add(1, std::memory_order_relaxed);
    log::emit(log::Line(log::Level::info, "events_reader_connected").str("peer", r->peer));
    readers_.push_back(std::move(r));
  }
  return 0;
}

void EventFeedSink::io_loop() {
  std::vector<pollfd> pfds;
  std::vector<std::uint64_t> serials;  // per pfds entry from index 2
  auto listen_paused_until = std::chrono::steady_clock::time_point{};
  for (;;) {
    pfds.clear();
    serials.clear();
    bool listen_paused = false;
    {
      std::lock_guard lock(mu_);
      if (stopping_) return;
      // Only this thread closes readers: never one another thread polls.
      std::erase_if(readers_, [](const std::unique_ptr<Reader>& r) {
        if (r->dead) log::emit(log::Line(log::Level::info, "events_reader_closed").str("peer", r->peer));
        return r->dead;
      });
      listen_paused = std::chrono::steady_clock::now() < listen_paused_until;
      pfds.push_back({listen_paused ? -1 : listen_fd_.get(), POLLIN, 0});
      pfds.push_back({wake_fd_.get(), POLLIN, 0});
      for (auto& r : readers_) {
        short events = r->read_closed ? 0 : POLLIN;
        if (r->sent < r->pending.size()) events |= POLLOUT;
        pfds.push_back({r->fd.get(), events, 0});
        serials.push_back(r->serial);
      }
    }
    // Blocks until there is something to do; a paused listener (accept
    // failing, e.g. out of descriptors) is retried after a second.
    int n = ::poll(pfds.data(), pfds.size(), listen_paused ? 1000 : -1);
    if (n < 0 && errno != EINTR) {
      log::emit(log::Line(log::Level::error, "events_error").str("msg", std::string("poll: ") + std::strerror(errno)));
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    if (pfds[1].revents & POLLIN) {
      std::uint64_t v;
      ssize_t r = ::read(wake_fd_.get(), &v, sizeof v);
      (void)r;
    }
    std::lock_guard lock(mu_);
    if (stopping_) return;
    if (pfds[0].revents & POLLIN) {
      if (int e = accept_readers()) {
        log::emit(log::Line(log::Level::warn, "events_error").str("msg", std::string("accept: ") + std::strerror(e)));
        listen_paused_until = std::chrono::steady_clock::now() + std::chrono::seconds(1);
      }
    }
    for (std::size_t i = 0; i < serials.size(); ++i) {
      short rev = pfds[i + 2].revents;
      if (!rev) continue;
      Reader* r = nullptr;
      for (auto& rp : readers_)
        if (rp->serial == serials[i]) r = rp.get();
      if (!r || r->dead) continue;
      bool gone = (rev & (POLLHUP | POLLERR | POLLNVAL)) != 0;
      if (!gone && (rev & POLLIN)) {
        char buf[4096];
        std::size_t discarded = 0;
        while (discarded < kDiscardPerPoll) {
          ssize_t k = ::recv(r->fd.get(), buf, sizeof buf, MSG_DONTWAIT);
          if (k > 0) {
            discarded += static_cast<std::size_t>(k);
          } else if (k == 0) {
            // Half-closed (a reader that shut its sending side, e.g. socat
            // with stdin at EOF): keep writing, stop reading.
            r->read_closed = true;
            break;
          } else if (errno == EINTR) {
            continue;
          } else {
            gone = errno != EAGAIN && errno != EWOULDBLOCK;
            break;
          }
        }
      }
      if (!gone && (rev & POLLOUT)) gone = !push(*r);
      if (gone) {
        r->dead = true;
        readers_now_.fetch_sub(1, std::memory_order_relaxed);
      }
    }
  }
}

void EventFeedSink::on_stop() {
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    stopping_ = true;
    // Last chance for what readers still have queued, without waiting.
    for (auto& r : readers_)
      if (!r->dead) (void)push(*r);
  }
  wake();
  if (io_thread_.joinable()) io_thread_.join();
  readers_.clear();
  readers_now_.store(0, std::memory_order_relaxed);
  listen_fd_.reset();
  // Remove the socket file only if it is still the one this process made.
  struct stat st{};
  if (::lstat(opts_.socket_path.c_str(), &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_)
    ::unlink(opts_.socket_path.c_str());
}

}  // namespace sightline::hooks
