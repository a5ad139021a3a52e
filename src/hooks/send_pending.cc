#include "hooks/send_pending.h"

#include <sys/socket.h>

#include <cerrno>

namespace sightline::hooks {

bool send_pending(int fd, std::string& pending, std::size_t& sent) {
  constexpr std::size_t kCompactAt = 1 << 20;  // bytes sent before the buffer is compacted
  while (sent < pending.size()) {
    ssize_t n = ::send(fd, pending.data() + sent, pending.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      sent += static_cast<std::size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      break;
    } else {
      return false;  // reset, hung up
    }
  }
  if (sent == pending.size()) {
    pending.clear();
    sent = 0;
  } else if (sent >= kCompactAt) {
    pending.erase(0, sent);
    sent = 0;
  }
  return true;
}

}  // namespace sightline::hooks
