#include "net/listener.h"

#include <netinet/in.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace sightline::net {

core::UvHandle<uv_tcp_t> listen_reuseport(uv_loop_t* loop, const sockaddr_storage& addr,
                                          int backlog, uv_connection_cb on_connection,
                                          void* data, std::string* error, bool transparent) {
  core::UvHandle<uv_tcp_t> h;
  auto fail = [&](const char* what, int err) {
    if (error) *error = std::string(what) + ": " + std::strerror(err);
    return core::UvHandle<uv_tcp_t>();
  };
  int fd = ::socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail("socket", errno);
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
    int e = errno;
    ::close(fd);
    return fail("SO_REUSEPORT", e);
  }
  if (addr.ss_family == AF_INET6) ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  if (transparent) {
    int rc = addr.ss_family == AF_INET6
                 ? ::setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof one)
                 : ::setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof one);
    if (rc != 0) {
      int e = errno;
      ::close(fd);
      return fail("IP_TRANSPARENT (needs CAP_NET_ADMIN)", e);
    }
  }
  socklen_t len = addr.ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&addr), len) != 0) {
    int e = errno;
    ::close(fd);
    return fail("bind", e);
  }
  if (int rc = h.init(uv_tcp_init, loop); rc != 0) {
    ::close(fd);
    if (error) *error = std::string("uv_tcp_init: ") + uv_strerror(rc);
    return {};
  }
  if (int rc = uv_tcp_open(h.get(), fd); rc != 0) {
    ::close(fd);
    if (error) *error = std::string("uv_tcp_open: ") + uv_strerror(rc);
    return {};
  }
  h.get()->data = data;
  if (int rc = uv_listen(h.stream(), backlog, on_connection); rc != 0) {
    if (error) *error = std::string("listen: ") + uv_strerror(rc);
    return {};
  }
  return h;
}

}  // namespace sightline::net
