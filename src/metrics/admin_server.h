// The admin listener: /metrics (Prometheus text format), /healthz (the
// process answers), /readyz (listeners up, CA and policies loaded) and
// /status (JSON). Separate from the proxy listeners, served from the main
// thread's own loop, HTTP/1.1 with keep-alive, GET and HEAD only.
#pragma once

#include "core/uv_handle.h"

#include <sys/socket.h>
#include <uv.h>

#include <functional>
#include <memory>
#include <string>
#include <unordered_map>

namespace sightline::metrics {

class AdminServer {
 public:
  struct Response {
    int status = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
  };
  using Handler = std::function<Response()>;

  explicit AdminServer(uv_loop_t* loop);
  ~AdminServer();
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  void route(std::string path, Handler h) { routes_[std::move(path)] = std::move(h); }
  bool listen(const sockaddr_storage& addr, std::string* error);
  void close();

 private:
  class Connection;
  static void on_connection(uv_stream_t* server, int status);
  Response dispatch(const std::string& method, const std::string& target) const;

  uv_loop_t* loop_;
  core::UvHandle<uv_tcp_t> listener_;
  std::unordered_map<std::string, Handler> routes_;
  std::unordered_map<Connection*, std::unique_ptr<Connection>> connections_;
};

}  // namespace sightline::metrics
