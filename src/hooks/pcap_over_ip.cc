#include "hooks/pcap_over_ip.h"

#include "core/log.h"
#include "hooks/send_pending.h"
#include "net/address.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace sightline::hooks::pcap {

namespace {

// net::parse_listen_address insists on ports 1-65535; port 0 (any free port)
// is accepted here so tests and ad-hoc runs need not guess a free one.
std::optional<sockaddr_storage> parse_address(std::string_view text) {
  if (text.size() > 2 && text.substr(text.size() - 2) == ":0") {
    auto ss = net::parse_listen_address(std::string(text.substr(0, text.size() - 1)) + "1");
    if (!ss) return ss;
    if (ss->ss_family == AF_INET) reinterpret_cast<sockaddr_in*>(&*ss)->sin_port = 0;
    else reinterpret_cast<sockaddr_in6*>(&*ss)->sin6_port = 0;
    return ss;
  }
  return net::parse_listen_address(text);
}

// Readers are not expected to send anything; whatever arrives is discarded,
// at most this much per poll.
constexpr std::size_t kDiscardPerPoll = 64 * 1024;
// Consumed backlog bytes are dropped from the front once they pass this.
constexpr int kAcceptsPerPoll = 16;

}  // namespace

std::unique_ptr<PcapOverIp> PcapOverIp::listen(std::string_view address, std::size_t backlog_cap,
                                               std::string* error) {
  auto fail = [&](std::string msg) {
    if (error) *error = std::move(msg);
    return std::unique_ptr<PcapOverIp>();
  };
  auto addr = parse_address(address);
  if (!addr) return fail("invalid listen address '" + std::string(address) + "'");
  UniqueFd fd(::socket(addr->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return fail(std::string("socket: ") + std::strerror(errno));
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (addr->ss_family == AF_INET6) ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  socklen_t len = addr->ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), len) != 0)
    return fail("bind " + std::string(address) + ": " + std::strerror(errno));
  if (::listen(fd.get(), 16) != 0) return fail(std::string("listen: ") + std::strerror(errno));
  sockaddr_storage bound{};
  len = sizeof bound;
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &len);
  std::uint16_t port = ntohs(bound.ss_family == AF_INET6
                                 ? reinterpret_cast<const sockaddr_in6*>(&bound)->sin6_port
                                 : reinterpret_cast<const sockaddr_in*>(&bound)->sin_port);
  return std::unique_ptr<PcapOverIp>(new PcapOverIp(std::move(fd), port, backlog_cap));
}

PcapOverIp::PcapOverIp(UniqueFd fd, std::uint16_t port, std::size_t cap)
    : listen_fd_(std::move(fd)), port_(port), cap_(cap) {
  append_header(header_, Format::pcap, TsResolution::micro);
}

PcapOverIp::~PcapOverIp() = default;

void PcapOverIp::close() {
  readers_.clear();
  listen_fd_.reset();
}

bool PcapOverIp::push(Reader& r) { return send_pending(r.fd.get(), r.pending, r.sent); }

void PcapOverIp::poll() {
  if (!listen_fd_) return;
  for (int i = 0; i < kAcceptsPerPoll; ++i) {
    sockaddr_storage peer{};
    socklen_t len = sizeof peer;
    int fd = ::accept4(listen_fd_.get(), reinterpret_cast<sockaddr*>(&peer), &len,
                       SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) break;  // EAGAIN, or EMFILE and the like: try again next poll
    Reader r;
    r.fd = UniqueFd(fd);
    r.peer = net::sockaddr_to_string(reinterpret_cast<const sockaddr*>(&peer));
    r.pending = header_;
    accepted_.fetch_add(1, std::memory_order_relaxed);
    log::emit(log::Line(log::Level::info, "pcap_reader_connected").str("peer", r.peer));
    readers_.push_back(std::move(r));
  }
  std::erase_if(readers_, [this](Reader& r) {
    char buf[4096];
    std::size_t discarded = 0;
    while (discarded < kDiscardPerPoll) {
      ssize_t n = ::recv(r.fd.get(), buf, sizeof buf, MSG_DONTWAIT);
      if (n > 0) {
        discarded += static_cast<std::size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      log::emit(log::Line(log::Level::info, "pcap_reader_closed").str("peer", r.peer));
      return true;  // orderly hang-up or error
    }
    if (push(r)) return false;
    log::emit(log::Line(log::Level::info, "pcap_reader_closed").str("peer", r.peer));
    return true;
  });
}

void PcapOverIp::publish(std::string_view record) {
  std::erase_if(readers_, [&](Reader& r) {
    if (r.pending.size() - r.sent + record.size() > cap_) {
      dropped_.fetch_add(1, std::memory_order_relaxed);
      log::emit(log::Line(log::Level::warn, "pcap_reader_dropped")
                    .str("peer", r.peer)
                    .num("backlog_bytes", static_cast<std::uint64_t>(r.pending.size() - r.sent)));
      return true;
    }
    r.pending.append(record);
    if (push(r)) return false;
    log::emit(log::Line(log::Level::info, "pcap_reader_closed").str("peer", r.peer));
    return true;
  });
}

}  // namespace sightline::hooks::pcap
