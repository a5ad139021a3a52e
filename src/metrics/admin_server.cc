#include "metrics/admin_server.h"

#include "http/h1_parser.h"

#include <cstring>
#include <vector>

namespace sightline::metrics {

// One admin client. Requests are parsed by the same strict HTTP/1.1 parser
// as proxied traffic; each complete request gets its response in order.
class AdminServer::Connection final : public http::H1Parser::Handler {
 public:
  Connection(AdminServer& server) : server_(server), parser_(http::H1Parser::Kind::request, *this, limits()) {}

  static http::H1Limits limits() {
    http::H1Limits l;
    l.max_head = 8192;
    return l;
  }

  bool start(uv_stream_t* listener) {
    if (uv_tcp_init(server_.loop_, &tcp_) != 0) return false;
    tcp_inited_ = true;
    tcp_.data = this;
    if (uv_accept(listener, stream()) != 0) return false;
    uv_read_start(
        stream(),
        [](uv_handle_t*, std::size_t, uv_buf_t* b) {
          static thread_local char buf[8192];
          *b = uv_buf_init(buf, sizeof buf);
        },
        [](uv_stream_t* s, ssize_t n, const uv_buf_t* b) {
          auto* self = static_cast<Connection*>(s->data);
          if (n < 0) {
            self->finish();
            return;
          }
          if (n > 0 && !self->parser_.feed(std::span<const char>(b->base, static_cast<std::size_t>(n)))) {
            self->respond({400, "text/plain; charset=utf-8", "bad request\n"}, false, true);
            self->finish_after_write_ = true;
          }
        });
    return true;
  }

  void on_head(const http::MessageHead& head, http::Framing, std::uint64_t, std::string_view) override {
    method_ = head.method;
    target_ = head.target;
    bool close = head.version_minor == 0;
    if (const std::string* c = head.find("connection")) close = http::iequals(*c, "close");
    close_ = close;
  }
  void on_body(std::span<const char>) override {}
  void on_forward(std::span<const char>) override {}
  void on_trailers(const http::HeaderList&) override {}
  void on_message_end() override {
    Response r = server_.dispatch(method_, target_);
    respond(r, method_ == "HEAD", close_);
    if (close_) finish_after_write_ = true;
  }

 private:
  void respond(const Response& r, bool head_only, bool close) {
    const char* phrase = r.status == 200 ? "OK" : r.status == 404 ? "Not Found"
                       : r.status == 405 ? "Method Not Allowed" : r.status == 503 ? "Service Unavailable"
                                                                  : "Bad Request";
    auto data = std::make_unique<std::string>();
    *data = "HTTP/1.1 " + std::to_string(r.status) + " " + phrase + "\r\nContent-Type: " +
            r.content_type + "\r\nContent-Length: " + std::to_string(r.body.size()) +
            "\r\nCache-Control: no-store\r\n" + (close ? "Connection: close\r\n" : "") + "\r\n";
    if (!head_only) *data += r.body;
    struct Req {
      uv_write_t req;
      std::unique_ptr<std::string> data;
      Connection* conn;
    };
    auto req = std::make_unique<Req>();
    req->data = std::move(data);
    req->conn = this;
    req->req.data = req.get();
    uv_buf_t b = uv_buf_init(req->data->data(), static_cast<unsigned>(req->data->size()));
    ++pending_writes_;
    if (uv_write(&req->req, stream(), &b, 1, [](uv_write_t* w, int) {
          std::unique_ptr<Req> owned(static_cast<Req*>(w->data));
          Connection* c = owned->conn;
          if (--c->pending_writes_ == 0 && c->finish_after_write_) c->finish();
        }) == 0) {
      (void)req.release();
    } else {
      --pending_writes_;
      finish();
    }
  }

  // Closes the socket; the connection object is released in the close
  // callback, after libuv has called back every pending write.
  void finish() {
    if (finished_) return;
    finished_ = true;
    if (!tcp_inited_) {
      server_.connections_.erase(this);  // nothing libuv knows about: go now
      return;
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), [](uv_handle_t* h) {
      auto* c = static_cast<Connection*>(h->data);
      c->server_.connections_.erase(c);
    });
  }

  uv_stream_t* stream() { return reinterpret_cast<uv_stream_t*>(&tcp_); }

  AdminServer& server_;
  uv_tcp_t tcp_{};
  bool tcp_inited_ = false;
  http::H1Parser parser_;
  std::string method_, target_;
  bool close_ = false;
  bool finish_after_write_ = false;
  bool finished_ = false;
  int pending_writes_ = 0;

  friend class AdminServer;
};

AdminServer::AdminServer(uv_loop_t* loop) : loop_(loop) {}

AdminServer::~AdminServer() { close(); }

bool AdminServer::listen(const sockaddr_storage& addr, std::string* error) {
  if (int rc = listener_.init(uv_tcp_init, loop_); rc != 0) {
    if (error) *error = uv_strerror(rc);
    return false;
  }
  listener_.get()->data = this;
  int rc = uv_tcp_bind(listener_.get(), reinterpret_cast<const sockaddr*>(&addr), 0);
  if (rc == 0) rc = uv_listen(listener_.stream(), 64, on_connection);
  if (rc != 0) {
    if (error) *error = uv_strerror(rc);
    listener_.reset();
    return false;
  }
  return true;
}

// Connections go in their close callbacks: the loop must run once more
// before this object is destroyed (the server does).
void AdminServer::close() {
  listener_.reset();
  std::vector<Connection*> live;
  for (auto& [ptr, conn] : connections_) live.push_back(ptr);
  for (auto* c : live) c->finish();
}

void AdminServer::on_connection(uv_stream_t* server, int status) {
  auto* self = static_cast<AdminServer*>(server->data);
  if (status < 0) return;
  auto conn = std::make_unique<Connection>(*self);
  Connection* raw = conn.get();
  self->connections_.emplace(raw, std::move(conn));
  if (!raw->start(server)) raw->finish();
}

AdminServer::Response AdminServer::dispatch(const std::string& method, const std::string& target) const {
  if (method != "GET" && method != "HEAD") return {405, "text/plain; charset=utf-8", "GET or HEAD only\n"};
  std::string path = target.substr(0, target.find('?'));
  auto it = routes_.find(path);
  if (it == routes_.end()) return {404, "text/plain; charset=utf-8", "not found\n"};
  return it->second();
}

}  // namespace sightline::metrics
