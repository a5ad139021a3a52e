// loadgen: a small TLS 1.3 HTTP/1.1 load generator for bench/run.
//
// h2load and wrk cannot speak CONNECT, so this drives every system the same
// way: non-blocking sockets, one epoll loop per thread, OpenSSL as the TLS
// client (certificate chain verified against --cafile, host name checked,
// no session resumption unless --resume: every handshake is a full one).
//
//   loadgen --connect IP:PORT [--via-connect HOST:PORT] [--host NAME]
//           --cafile FILE [--path /1k] [--mode close|keepalive|hold]
//           [-c CONCURRENCY] [-d SECONDS] [-t THREADS] [-n HOLD_COUNT]
//           [--tls12] [--resume] [--hold-max SECONDS] [--timeout SECONDS]
//
// --resume: each connection slot offers the session (ticket) of its
// previous connection, as a returning browser would; "resumed" in the
// result counts the handshakes the server resumed.
//
// Modes:
//   close      W1: connect, [CONNECT], TLS handshake, GET PATH with
//              "Connection: close", read the whole response, close; repeat
//              for -d seconds on -c connections at a time. Latency = connect
//              start to last body byte.
//   keepalive  W2: -c connections, each sends GET PATH one after the other
//              on the same connection for -d seconds (reconnecting if the
//              server closes). Latency = request written to last body byte.
//   hold       W4: open -n connections (-c in progress at a time), one
//              GET PATH each with keep-alive, then keep them open and idle.
//              Prints "READY <json>" when all are done, then waits for a line
//              (or EOF) on stdin, or --hold-max seconds, prints the final
//              JSON (with how many were still open) and exits.
//
// The result is one JSON object on stdout.
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cctype>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

enum class Mode { Close, KeepAlive, Hold };

struct Options {
  std::string connect_ip = "127.0.0.1";
  uint16_t connect_port = 0;
  std::string via_connect;  // "host:port" for a CONNECT request; empty: none
  std::string host = "localhost";  // SNI, verified name
  std::string host_header;         // default: via_connect target, else host:port
  std::string cafile;
  std::string path = "/1k";
  Mode mode = Mode::Close;
  int concurrency = 32;
  double duration = 10.0;
  int threads = 1;
  int hold_count = 1000;
  double hold_max = 120.0;
  double timeout = 10.0;
  bool tls12 = false;
  bool resume = false;
};

[[noreturn]] void usage(const char* msg) {
  std::fprintf(stderr, "loadgen: %s\n", msg);
  std::fprintf(stderr,
               "usage: loadgen --connect IP:PORT [--via-connect HOST:PORT] [--host NAME]\n"
               "               [--host-header H] --cafile FILE [--path P]\n"
               "               [--mode close|keepalive|hold] [-c N] [-d SECONDS] [-t THREADS]\n"
               "               [-n HOLD_COUNT] [--hold-max SECONDS] [--timeout SECONDS] [--tls12] [--resume]\n");
  std::exit(2);
}

bool split_host_port(const std::string& s, std::string& host, uint16_t& port) {
  auto colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  host = s.substr(0, colon);
  long p = std::strtol(s.c_str() + colon + 1, nullptr, 10);
  if (p <= 0 || p > 65535) return false;
  port = static_cast<uint16_t>(p);
  return true;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value for " + a).c_str());
      return argv[++i];
    };
    if (a == "--connect") {
      if (!split_host_port(val(), o.connect_ip, o.connect_port)) usage("bad --connect");
    } else if (a == "--via-connect") {
      o.via_connect = val();
    } else if (a == "--host") {
      o.host = val();
    } else if (a == "--host-header") {
      o.host_header = val();
    } else if (a == "--cafile") {
      o.cafile = val();
    } else if (a == "--path") {
      o.path = val();
    } else if (a == "--mode") {
      std::string m = val();
      if (m == "close") o.mode = Mode::Close;
      else if (m == "keepalive") o.mode = Mode::KeepAlive;
      else if (m == "hold") o.mode = Mode::Hold;
      else usage("bad --mode");
    } else if (a == "-c") {
      o.concurrency = std::atoi(val().c_str());
    } else if (a == "-d") {
      o.duration = std::atof(val().c_str());
    } else if (a == "-t") {
      o.threads = std::atoi(val().c_str());
    } else if (a == "-n") {
      o.hold_count = std::atoi(val().c_str());
    } else if (a == "--hold-max") {
      o.hold_max = std::atof(val().c_str());
    } else if (a == "--timeout") {
      o.timeout = std::atof(val().c_str());
    } else if (a == "--tls12") {
      o.tls12 = true;
    } else if (a == "--resume") {
      o.resume = true;
    } else {
      usage(("unknown argument " + a).c_str());
    }
  }
  if (o.connect_port == 0) usage("--connect is required");
  if (o.cafile.empty()) usage("--cafile is required");
  if (o.concurrency < 1 || o.concurrency > 100000) usage("bad -c");
  if (o.threads < 1 || o.threads > 64) usage("bad -t");
  if (o.duration <= 0 || o.duration > 3600) usage("bad -d");
  if (o.hold_count < 1 || o.hold_count > 100000) usage("bad -n");
  if (o.hold_max <= 0 || o.hold_max > 3600) usage("bad --hold-max");
  if (o.timeout <= 0 || o.timeout > 600) usage("bad --timeout");
  if (o.host_header.empty()) {
    o.host_header = o.via_connect.empty()
                        ? o.host + ":" + std::to_string(o.connect_port)
                        : o.via_connect;
  }
  return o;
}

// Per-thread results, merged at the end.
struct Stats {
  uint64_t completed = 0;   // W1: connections, W2: requests, W4: connections held (within -d)
  uint64_t completed_total = 0;  // including those finished while draining after -d
  uint64_t errors = 0;
  uint64_t reconnects = 0;  // keep-alive: connections the server closed
  uint64_t resumed = 0;     // --resume: handshakes the server resumed
  uint64_t body_bytes = 0;
  std::vector<uint32_t> latency_us;
  std::vector<std::string> error_samples;

  void error(std::string msg) {
    ++errors;
    if (error_samples.size() < 5) error_samples.push_back(std::move(msg));
  }
};

enum class St { Connecting, ProxyWrite, ProxyRead, Handshake, ReqWrite, RespRead, Closing, Held, Dead };

struct Conn {
  int fd = -1;
  SSL* ssl = nullptr;
  St st = St::Dead;
  uint32_t events = 0;  // current epoll interest
  Clock::time_point conn_start, req_start, deadline;
  std::string out;      // bytes to write (CONNECT request or HTTP request)
  std::size_t out_off = 0;
  std::string head;     // response head being accumulated
  // response body framing
  bool head_done = false;
  bool chunked = false;
  bool until_close = false;
  bool server_closes = false;
  uint64_t body_left = 0;
  // chunked decoder state
  int chunk_state = 0;  // 0: size line, 1: data, 2: CRLF after data, 3: trailers
  std::string chunk_line;
  uint64_t requests_on_conn = 0;
};

std::atomic<bool> g_stop_hold{false};

class Worker {
 public:
  Worker(const Options& o, SSL_CTX* ctx, int concurrency, int hold_quota)
      : o_(o), ctx_(ctx), conns_(static_cast<std::size_t>(concurrency)),
        sessions_(conns_.size(), nullptr), hold_quota_(hold_quota) {}
  ~Worker() {
    for (SSL_SESSION* s : sessions_) SSL_SESSION_free(s);
  }

  void run(Clock::time_point end, std::atomic<int>* ready_counter) {
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    if (ep_ < 0) {
      stats.error(std::string("epoll_create1: ") + std::strerror(errno));
      return;
    }
    end_ = end;
    if (o_.mode == Mode::Hold) {
      held_.reserve(static_cast<std::size_t>(hold_quota_));
      for (auto& c : conns_) {
        if (started_ < hold_quota_) start(c);
      }
    } else {
      for (auto& c : conns_) start(c);
    }
    bool reported_ready = false;
    std::vector<epoll_event> evs(256);
    // After -d no new connection or request starts; those in flight finish
    // (not counted in the rate) for up to 5 s, so no proxy sees a client
    // vanish in the middle of a handshake.
    auto drain_end = end_ + std::chrono::seconds(5);
    for (;;) {
      auto now = Clock::now();
      if (o_.mode != Mode::Hold && now >= end_) {
        bool active = false;
        for (auto& c : conns_) active = active || c.st != St::Dead;
        if (!active || now >= drain_end) break;
      }
      if (o_.mode == Mode::Hold) {
        if (!reported_ready && finished_ >= hold_quota_) {
          reported_ready = true;
          ready_counter->fetch_add(1);
        }
        if (g_stop_hold.load()) break;
      }
      int n = epoll_wait(ep_, evs.data(), static_cast<int>(evs.size()), 50);
      if (n < 0 && errno != EINTR) {
        stats.error(std::string("epoll_wait: ") + std::strerror(errno));
        break;
      }
      for (int i = 0; i < n; ++i) {
        Conn* c = static_cast<Conn*>(evs[static_cast<std::size_t>(i)].data.ptr);
        drive(*c);
      }
      check_timeouts();
    }
    // Count held connections still open.
    if (o_.mode == Mode::Hold) {
      for (Conn* c : held_) {
        if (c->st == St::Held) {
          ++still_open;
        }
      }
    }
    for (auto& c : conns_) teardown(c);
    for (auto& c : extra_) teardown(*c);
    close(ep_);
  }

  Stats stats;
  uint64_t still_open = 0;

 private:
  const Options& o_;
  SSL_CTX* ctx_;
  std::vector<Conn> conns_;                  // active slots (close/keepalive), in-progress slots (hold)
  std::vector<SSL_SESSION*> sessions_;       // --resume: each slot's last session (owned)
  std::vector<std::unique_ptr<Conn>> extra_; // hold mode: finished connections parked here
  std::vector<Conn*> held_;
  int hold_quota_;
  int started_ = 0;
  int finished_ = 0;  // hold: connections that reached Held or failed
  int ep_ = -1;
  Clock::time_point end_;

  void set_events(Conn& c, uint32_t ev) {
    if (c.events == ev) return;
    epoll_event e{};
    e.events = ev;
    e.data.ptr = &c;
    if (c.events == 0) {
      epoll_ctl(ep_, EPOLL_CTL_ADD, c.fd, &e);
    } else if (ev == 0) {
      epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd, nullptr);
    } else {
      epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd, &e);
    }
    c.events = ev;
  }

  // Only slots of conns_ keep sessions (held connections never resume).
  SSL_SESSION** session_slot(Conn& c) {
    if (!o_.resume || &c < conns_.data() || &c >= conns_.data() + conns_.size()) return nullptr;
    return &sessions_[static_cast<std::size_t>(&c - conns_.data())];
  }

  void teardown(Conn& c) {
    if (c.ssl) {
      SSL_SESSION** slot = session_slot(c);
      SSL_SESSION* got = slot ? SSL_get1_session(c.ssl) : nullptr;
      if (got && SSL_SESSION_is_resumable(got)) {
        SSL_SESSION_free(*slot);
        *slot = got;
      } else {
        SSL_SESSION_free(got);
      }
      SSL_free(c.ssl);
      c.ssl = nullptr;
    }
    if (c.fd >= 0) {
      if (c.events) epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd, nullptr);
      close(c.fd);
      c.fd = -1;
    }
    c.events = 0;
    c.st = St::Dead;
  }

  void fail(Conn& c, const std::string& why) {
    stats.error(why);
    teardown(c);
    after_conn_end(c);
  }

  // A connection slot ended (done or failed): start the next one if due.
  void after_conn_end(Conn& c) {
    if (o_.mode == Mode::Hold) {
      ++finished_;
      if (started_ < hold_quota_) start(c);
      return;
    }
    if (Clock::now() < end_) start(c);
  }

  void start(Conn& c) {
    c = Conn{};
    if (o_.mode == Mode::Hold) ++started_;
    c.conn_start = Clock::now();
    c.deadline = c.conn_start + std::chrono::duration_cast<Clock::duration>(
                                    std::chrono::duration<double>(o_.timeout));
    c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c.fd < 0) {
      fail(c, std::string("socket: ") + std::strerror(errno));
      return;
    }
    int one = 1;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(o_.connect_port);
    inet_pton(AF_INET, o_.connect_ip.c_str(), &sa.sin_addr);
    int r = connect(c.fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
    if (r < 0 && errno != EINPROGRESS) {
      fail(c, std::string("connect: ") + std::strerror(errno));
      return;
    }
    c.st = St::Connecting;
    set_events(c, EPOLLOUT);
  }

  void check_timeouts() {
    auto now = Clock::now();
    for (auto& c : conns_) {
      if (c.st == St::Closing && now > c.deadline) {
        teardown(c);  // the server did not close: not an error of the exchange
        after_conn_end(c);
      } else if (c.st != St::Dead && c.st != St::Held && now > c.deadline) {
        fail(c, "timeout in state " + std::to_string(static_cast<int>(c.st)));
      }
    }
  }

  void begin_tls(Conn& c) {
    c.ssl = SSL_new(ctx_);
    SSL_set_fd(c.ssl, c.fd);
    SSL_set_tlsext_host_name(c.ssl, o_.host.c_str());
    SSL_set1_host(c.ssl, o_.host.c_str());
    if (SSL_SESSION** slot = session_slot(c); slot && *slot) SSL_set_session(c.ssl, *slot);
    SSL_set_connect_state(c.ssl);
    c.st = St::Handshake;
  }

  void begin_request(Conn& c) {
    c.out = "GET " + o_.path + " HTTP/1.1\r\nHost: " + o_.host_header +
            "\r\nUser-Agent: sightline-bench-loadgen\r\nAccept: */*\r\n";
    c.out += (o_.mode == Mode::Close) ? "Connection: close\r\n\r\n" : "\r\n";
    c.out_off = 0;
    c.head.clear();
    c.head_done = c.chunked = c.until_close = c.server_closes = false;
    c.body_left = 0;
    c.chunk_state = 0;
    c.chunk_line.clear();
    c.req_start = Clock::now();
    c.deadline = c.req_start + std::chrono::duration_cast<Clock::duration>(
                                   std::chrono::duration<double>(o_.timeout));
    c.st = St::ReqWrite;
  }

  static std::string ssl_err_string() {
    unsigned long e = ERR_get_error();
    if (!e) return "(no OpenSSL error)";
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    ERR_clear_error();
    return buf;
  }

  void drive(Conn& c) {
    for (int guard = 0; guard < 64; ++guard) {
      switch (c.st) {
        case St::Dead:
          return;
        case St::Connecting: {
          int err = 0;
          socklen_t len = sizeof err;
          getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
          if (err != 0) return fail(c, std::string("connect: ") + std::strerror(err));
          sockaddr_in peer{};
          socklen_t plen = sizeof peer;
          if (getpeername(c.fd, reinterpret_cast<sockaddr*>(&peer), &plen) != 0) {
            return set_events(c, EPOLLOUT);  // still in progress (a stale wake-up)
          }
          if (!o_.via_connect.empty()) {
            c.out = "CONNECT " + o_.via_connect + " HTTP/1.1\r\nHost: " + o_.via_connect + "\r\n\r\n";
            c.out_off = 0;
            c.st = St::ProxyWrite;
          } else {
            begin_tls(c);
          }
          continue;
        }
        case St::ProxyWrite: {
          ssize_t n = send(c.fd, c.out.data() + c.out_off, c.out.size() - c.out_off, MSG_NOSIGNAL);
          if (n < 0) {
            if (errno == EAGAIN) return set_events(c, EPOLLOUT);
            return fail(c, std::string("send CONNECT: ") + std::strerror(errno));
          }
          c.out_off += static_cast<std::size_t>(n);
          if (c.out_off == c.out.size()) {
            c.head.clear();
            c.st = St::ProxyRead;
          }
          continue;
        }
        case St::ProxyRead: {
          // The proxy sends nothing after its reply until our ClientHello, so
          // whatever is readable now belongs to the reply head.
          char buf[2048];
          ssize_t n = recv(c.fd, buf, sizeof buf, 0);
          if (n < 0) {
            if (errno == EAGAIN) return set_events(c, EPOLLIN);
            return fail(c, std::string("recv CONNECT reply: ") + std::strerror(errno));
          }
          if (n == 0) return fail(c, "proxy closed after CONNECT");
          c.head.append(buf, static_cast<std::size_t>(n));
          if (c.head.size() > 8192) return fail(c, "CONNECT reply too long");
          auto end = c.head.find("\r\n\r\n");
          if (end == std::string::npos) continue;
          if (end + 4 != c.head.size()) return fail(c, "bytes after the CONNECT reply head");
          if (c.head.compare(0, 12, "HTTP/1.1 200") != 0 && c.head.compare(0, 12, "HTTP/1.0 200") != 0) {
            return fail(c, "CONNECT refused: " + c.head.substr(0, c.head.find('\r')));
          }
          begin_tls(c);
          continue;
        }
        case St::Handshake: {
          int r = SSL_do_handshake(c.ssl);
          if (r == 1) {
            if (SSL_session_reused(c.ssl)) ++stats.resumed;
            begin_request(c);
            continue;
          }
          int e = SSL_get_error(c.ssl, r);
          if (e == SSL_ERROR_WANT_READ) return set_events(c, EPOLLIN);
          if (e == SSL_ERROR_WANT_WRITE) return set_events(c, EPOLLOUT);
          long v = SSL_get_verify_result(c.ssl);
          std::string why = "handshake: " + ssl_err_string();
          if (v != X509_V_OK) why += std::string(" (verify: ") + X509_verify_cert_error_string(v) + ")";
          return fail(c, why);
        }
        case St::ReqWrite: {
          int r = SSL_write(c.ssl, c.out.data() + c.out_off, static_cast<int>(c.out.size() - c.out_off));
          if (r <= 0) {
            int e = SSL_get_error(c.ssl, r);
            if (e == SSL_ERROR_WANT_READ) return set_events(c, EPOLLIN);
            if (e == SSL_ERROR_WANT_WRITE) return set_events(c, EPOLLOUT);
            if (o_.mode == Mode::KeepAlive && c.requests_on_conn > 0) {
              // Server closed an idle keep-alive connection: reconnect.
              ++stats.reconnects;
              teardown(c);
              return after_conn_end(c);
            }
            return fail(c, "write request: " + ssl_err_string());
          }
          c.out_off += static_cast<std::size_t>(r);
          if (c.out_off == c.out.size()) c.st = St::RespRead;
          continue;
        }
        case St::RespRead: {
          char buf[16384];
          int r = SSL_read(c.ssl, buf, sizeof buf);
          if (r <= 0) {
            int e = SSL_get_error(c.ssl, r);
            if (e == SSL_ERROR_WANT_READ) return set_events(c, EPOLLIN);
            if (e == SSL_ERROR_WANT_WRITE) return set_events(c, EPOLLOUT);
            bool clean_eof = (e == SSL_ERROR_ZERO_RETURN || e == SSL_ERROR_SYSCALL);
            if (c.head_done && c.until_close && clean_eof) {
              finish_response(c, true);
              return;
            }
            if (!c.head_done && c.head.empty() && o_.mode == Mode::KeepAlive && c.requests_on_conn > 0 &&
                clean_eof) {
              ++stats.reconnects;
              teardown(c);
              return after_conn_end(c);
            }
            return fail(c, "read response: " + (e == SSL_ERROR_SSL ? ssl_err_string()
                                                                   : std::string("connection closed early")));
          }
          if (!consume(c, buf, static_cast<std::size_t>(r))) return;  // failed
          // Keep going on the same connection (more response bytes, or the
          // next keep-alive request); a new connection in this slot waits
          // for its own epoll event.
          if (c.st == St::RespRead || c.st == St::ReqWrite || c.st == St::Closing) continue;
          return;
        }
        case St::Closing: {
          // close_notify sent; wait for the server's close_notify or FIN so
          // the connection ends cleanly on both sides.
          char buf[4096];
          int r = SSL_read(c.ssl, buf, sizeof buf);
          if (r > 0) continue;
          int e = SSL_get_error(c.ssl, r);
          if (e == SSL_ERROR_WANT_READ) return set_events(c, EPOLLIN);
          if (e == SSL_ERROR_WANT_WRITE) return set_events(c, EPOLLOUT);
          teardown(c);
          after_conn_end(c);
          return;
        }
        case St::Held: {
          // Any readable event on a held connection: data or close.
          char buf[4096];
          int r = SSL_read(c.ssl, buf, sizeof buf);
          if (r > 0) continue;
          int e = SSL_get_error(c.ssl, r);
          if (e == SSL_ERROR_WANT_READ) return set_events(c, EPOLLIN);
          if (e == SSL_ERROR_WANT_WRITE) return set_events(c, EPOLLOUT);
          teardown(c);  // closed by the peer
          return;
        }
      }
    }
    // Too many steps in one go: yield to other connections; re-arm both ways.
    if (c.st != St::Dead) set_events(c, EPOLLIN | EPOLLOUT);
  }

  static bool ieq_prefix(std::string_view line, std::string_view name) {
    if (line.size() < name.size()) return false;
    for (std::size_t i = 0; i < name.size(); ++i) {
      if (std::tolower(static_cast<unsigned char>(line[i])) != name[i]) return false;
    }
    return true;
  }

  static std::string lower(std::string_view s) {
    std::string r(s);
    for (auto& ch : r) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return r;
  }

  bool parse_head(Conn& c) {
    std::string_view h(c.head);
    if (h.compare(0, 9, "HTTP/1.1 ") != 0 && h.compare(0, 9, "HTTP/1.0 ") != 0) {
      fail(c, "bad status line: " + std::string(h.substr(0, std::min<std::size_t>(h.find('\r'), 80))));
      return false;
    }
    bool http10 = h.compare(0, 9, "HTTP/1.0 ") == 0;
    int status = std::atoi(std::string(h.substr(9, 3)).c_str());
    if (status != 200) {
      fail(c, "status " + std::to_string(status));
      return false;
    }
    bool have_len = false;
    c.server_closes = http10;
    std::size_t pos = h.find("\r\n") + 2;
    while (pos < h.size()) {
      std::size_t eol = h.find("\r\n", pos);
      if (eol == std::string_view::npos || eol == pos) break;
      std::string_view line = h.substr(pos, eol - pos);
      pos = eol + 2;
      auto colon = line.find(':');
      if (colon == std::string_view::npos) continue;
      std::string_view value = line.substr(colon + 1);
      while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
      if (ieq_prefix(line, "content-length:")) {
        c.body_left = std::strtoull(std::string(value).c_str(), nullptr, 10);
        have_len = true;
      } else if (ieq_prefix(line, "transfer-encoding:")) {
        if (lower(value).find("chunked") != std::string::npos) c.chunked = true;
      } else if (ieq_prefix(line, "connection:")) {
        std::string v = lower(value);
        if (v.find("close") != std::string::npos) c.server_closes = true;
        if (v.find("keep-alive") != std::string::npos) c.server_closes = false;
      }
    }
    if (!c.chunked && !have_len) c.until_close = true;
    c.head_done = true;
    return true;
  }

  // Feeds response bytes. Returns false if the connection failed.
  bool consume(Conn& c, const char* p, std::size_t n) {
    std::size_t i = 0;
    if (!c.head_done) {
      std::size_t before = c.head.size();
      c.head.append(p, n);
      auto end = c.head.find("\r\n\r\n");
      if (end == std::string::npos) {
        if (c.head.size() > 65536) {
          fail(c, "response head too long");
          return false;
        }
        return true;
      }
      c.head.resize(end + 4);
      i = end + 4 - before;
      if (!parse_head(c)) return false;
    }
    while (i < n) {
      if (c.chunked) {
        if (c.chunk_state == 1) {
          std::size_t take = static_cast<std::size_t>(std::min<uint64_t>(c.body_left, n - i));
          stats.body_bytes += take;
          c.body_left -= take;
          i += take;
          if (c.body_left == 0) c.chunk_state = 2;
          continue;
        }
        char ch = p[i++];
        c.chunk_line.push_back(ch);
        if (c.chunk_line.size() > 4096) {
          fail(c, "chunk line too long");
          return false;
        }
        if (ch != '\n') continue;
        std::string line = c.chunk_line;
        c.chunk_line.clear();
        if (c.chunk_state == 0) {
          uint64_t sz = std::strtoull(line.c_str(), nullptr, 16);
          if (sz == 0) {
            c.chunk_state = 3;
          } else {
            c.body_left = sz;
            c.chunk_state = 1;
          }
        } else if (c.chunk_state == 2) {
          c.chunk_state = 0;
        } else if (c.chunk_state == 3) {
          if (line == "\r\n" || line == "\n") {
            finish_response(c, false);
            return true;
          }
        }
      } else if (c.until_close) {
        stats.body_bytes += n - i;
        i = n;
      } else {
        std::size_t take = static_cast<std::size_t>(std::min<uint64_t>(c.body_left, n - i));
        stats.body_bytes += take;
        c.body_left -= take;
        i += take;
        if (c.body_left == 0) break;
      }
    }
    if (!c.chunked && !c.until_close && c.body_left == 0) finish_response(c, false);
    return true;
  }

  void finish_response(Conn& c, bool closed) {
    auto now = Clock::now();
    ++c.requests_on_conn;
    switch (o_.mode) {
      case Mode::Close: {
        ++stats.completed_total;
        if (now <= end_) {
          ++stats.completed;
          stats.latency_us.push_back(static_cast<uint32_t>(
              std::chrono::duration_cast<std::chrono::microseconds>(now - c.conn_start).count()));
        }
        if (closed) {
          teardown(c);
          after_conn_end(c);
          return;
        }
        SSL_shutdown(c.ssl);  // our close_notify; then wait for the server's end
        c.st = St::Closing;
        c.deadline = now + std::chrono::seconds(2);
        return;
      }
      case Mode::KeepAlive: {
        ++stats.completed_total;
        if (now <= end_) {
          ++stats.completed;
          stats.latency_us.push_back(static_cast<uint32_t>(
              std::chrono::duration_cast<std::chrono::microseconds>(now - c.req_start).count()));
        }
        if (closed || c.server_closes) {
          ++stats.reconnects;
          teardown(c);
          after_conn_end(c);
          return;
        }
        if (now < end_) {
          begin_request(c);
        } else {
          SSL_shutdown(c.ssl);
          c.st = St::Closing;
          c.deadline = now + std::chrono::seconds(2);
        }
        return;
      }
      case Mode::Hold: {
        ++stats.completed;
        ++stats.completed_total;
        stats.latency_us.push_back(static_cast<uint32_t>(
            std::chrono::duration_cast<std::chrono::microseconds>(now - c.conn_start).count()));
        if (closed || c.server_closes) {
          ++stats.reconnects;  // here: connections the server would not keep
        }
        // Park the connection outside the slot array, keep watching it.
        auto parked = std::make_unique<Conn>();
        parked->fd = c.fd;
        parked->ssl = c.ssl;
        parked->st = (closed ? St::Dead : St::Held);
        c.fd = -1;
        c.ssl = nullptr;
        if (c.events) epoll_ctl(ep_, EPOLL_CTL_DEL, parked->fd, nullptr);
        c.events = 0;
        c.st = St::Dead;
        Conn* pc = parked.get();
        extra_.push_back(std::move(parked));
        held_.push_back(pc);
        if (pc->st == St::Held) {
          set_events(*pc, EPOLLIN);
        } else {
          teardown(*pc);
        }
        ++finished_;
        if (started_ < hold_quota_) start(c);
        return;
      }
    }
  }
};

std::string json_escape(const std::string& s) {
  std::string r;
  for (char ch : s) {
    if (ch == '"' || ch == '\\') {
      r += '\\';
      r += ch;
    } else if (static_cast<unsigned char>(ch) < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", ch);
      r += b;
    } else {
      r += ch;
    }
  }
  return r;
}

double pct(const std::vector<uint32_t>& sorted, double p) {
  if (sorted.empty()) return 0;
  std::size_t idx = static_cast<std::size_t>(p * static_cast<double>(sorted.size() - 1) + 0.5);
  return sorted[std::min(idx, sorted.size() - 1)] / 1000.0;
}

std::string result_json(const Options& o, const Stats& s, double elapsed, uint64_t still_open) {
  std::vector<uint32_t> lat = s.latency_us;
  std::sort(lat.begin(), lat.end());
  char buf[1024];
  const char* mode = o.mode == Mode::Close ? "close" : o.mode == Mode::KeepAlive ? "keepalive" : "hold";
  std::snprintf(buf, sizeof buf,
                "{\"mode\":\"%s\",\"completed\":%llu,\"completed_total\":%llu,\"errors\":%llu,\"reconnects\":%llu,"
                "\"resumed\":%llu,"
                "\"body_bytes\":%llu,\"seconds\":%.3f,\"rate\":%.1f,\"p50_ms\":%.3f,"
                "\"p99_ms\":%.3f,\"mean_ms\":%.3f,\"still_open\":%llu,\"error_samples\":[",
                mode, static_cast<unsigned long long>(s.completed),
                static_cast<unsigned long long>(s.completed_total),
                static_cast<unsigned long long>(s.errors), static_cast<unsigned long long>(s.reconnects),
                static_cast<unsigned long long>(s.resumed),
                static_cast<unsigned long long>(s.body_bytes), elapsed,
                elapsed > 0 ? static_cast<double>(s.completed) / elapsed : 0.0, pct(lat, 0.5),
                pct(lat, 0.99),
                lat.empty() ? 0.0
                            : [&] {
                                double sum = 0;
                                for (auto v : lat) sum += v;
                                return sum / static_cast<double>(lat.size()) / 1000.0;
                              }(),
                static_cast<unsigned long long>(still_open));
  std::string r = buf;
  for (std::size_t i = 0; i < s.error_samples.size(); ++i) {
    if (i) r += ",";
    r += "\"" + json_escape(s.error_samples[i]) + "\"";
  }
  r += "]}";
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse(argc, argv);
  signal(SIGPIPE, SIG_IGN);

  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }

  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx) usage("SSL_CTX_new failed");
  SSL_CTX_set_min_proto_version(ctx, o.tls12 ? TLS1_2_VERSION : TLS1_3_VERSION);
  if (o.tls12) SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  if (SSL_CTX_load_verify_locations(ctx, o.cafile.c_str(), nullptr) != 1) usage("cannot load --cafile");
  if (o.resume) {
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  } else {
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);  // every handshake is a full one
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
  }
  static const unsigned char alpn[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
  SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn);

  int nthreads = o.threads;
  std::vector<std::unique_ptr<Worker>> workers;
  int hold_total = o.hold_count;
  for (int t = 0; t < nthreads; ++t) {
    int conc = o.concurrency / nthreads + (t < o.concurrency % nthreads ? 1 : 0);
    int quota = hold_total / nthreads + (t < hold_total % nthreads ? 1 : 0);
    if (conc < 1) conc = 1;
    if (o.mode == Mode::Hold) conc = std::min(conc, std::max(quota, 1));
    workers.push_back(std::make_unique<Worker>(o, ctx, conc, quota));
  }

  auto start = Clock::now();
  auto end = start + std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double>(o.mode == Mode::Hold ? o.hold_max : o.duration));
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (auto& w : workers) {
    threads.emplace_back([&w, end, &ready] { w->run(end, &ready); });
  }

  double elapsed = 0;
  if (o.mode == Mode::Hold) {
    // Wait until every thread has finished opening its connections.
    while (ready.load() < nthreads && Clock::now() < end) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    std::printf("READY {\"seconds\":%.3f}\n", elapsed);
    std::fflush(stdout);
    // Hold until a line or EOF on stdin, or --hold-max.
    for (;;) {
      double left = std::chrono::duration<double>(end - Clock::now()).count();
      if (left <= 0) break;
      pollfd p{0, POLLIN, 0};
      int r = poll(&p, 1, static_cast<int>(std::min(left, 1.0) * 1000) + 1);
      if (r > 0) break;
    }
    g_stop_hold.store(true);
  }
  for (auto& th : threads) th.join();
  if (o.mode != Mode::Hold) elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  if (o.mode != Mode::Hold) elapsed = std::min(elapsed, o.duration);

  Stats total;
  uint64_t still_open = 0;
  for (auto& w : workers) {
    total.completed += w->stats.completed;
    total.completed_total += w->stats.completed_total;
    total.errors += w->stats.errors;
    total.reconnects += w->stats.reconnects;
    total.resumed += w->stats.resumed;
    total.body_bytes += w->stats.body_bytes;
    total.latency_us.insert(total.latency_us.end(), w->stats.latency_us.begin(), w->stats.latency_us.end());
    for (auto& e : w->stats.error_samples) {
      if (total.error_samples.size() < 5) total.error_samples.push_back(e);
    }
    still_open += w->still_open;
  }
  std::printf("%s\n", result_json(o, total, elapsed, still_open).c_str());
  SSL_CTX_free(ctx);
  return 0;
}
