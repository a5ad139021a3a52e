// A TCP listening socket for one worker loop. Every worker binds its own
// socket with SO_REUSEPORT so the kernel spreads connections across workers
// without a shared accept lock.
#pragma once

#include "core/uv_handle.h"

#include <sys/socket.h>

#include <string>

namespace sightline::net {

// Creates, binds and listens. `transparent`: IP_TRANSPARENT, so TPROXY can
// hand the socket connections for addresses that are not local (needs
// CAP_NET_ADMIN). On failure returns an empty handle and fills
// `error` with the reason (address in use, permission...).
core::UvHandle<uv_tcp_t> listen_reuseport(uv_loop_t* loop, const sockaddr_storage& addr,
                                          int backlog, uv_connection_cb on_connection,
                                          void* data, std::string* error, bool transparent = false);

}  // namespace sightline::net
