#include "hooks/bus.h"
#include "hooks/event_feed.h"
#include "hooks/event_json.h"
#include "hooks/exchange_tap.h"
#include "hooks/tap.h"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using namespace sightline;
using namespace sightline::hooks;
using nlohmann::json;

namespace {

std::string b64(std::string_view s) {
  std::string out;
  append_base64(out, s);
  return out;
}

std::shared_ptr<exchange::ConnectionInfo> conn_info() {
  auto c = std::make_shared<exchange::ConnectionInfo>();
  c->id = 7;
  c->client = "127.0.0.1:5000";
  c->server = "127.0.0.1:443";
  c->target = "example.com:443";
  c->sni = "example.com";
  c->client_tls = "TLSv1.3 TLS_AES_128_GCM_SHA256";
  c->alpn = "http/1.1";
  c->rule = "debug";
  return c;
}

ExchangeRecord sample_exchange() {
  ExchangeRecord r;
  r.id = 42;
  r.connection = conn_info();
  r.protocol = "HTTP/1.1";
  r.request.method = "POST";
  r.request.scheme = "https";
  r.request.authority = "example.com";
  r.request.target = "/a\"b?c=\\d";
  r.request.version = "HTTP/1.1";
  r.request.headers = {{"x-quote", "say \"hi\"\n\tnext"}, {"x-bin", std::string("a\xff\x01z", 4)}};
  r.has_response = true;
  r.response.status = 201;
  r.response.reason = "Created";
  r.response.version = "HTTP/1.1";
  r.response.headers = {{"content-type", "text/plain"}};
  r.bodies_captured = true;
  r.request_body = "hello world";
  r.request_body_bytes = 11;
  r.response_body = std::string("\x00\x01\x02", 3);
  r.response_body_bytes = 3;
  r.start = WallClock::time_point(std::chrono::microseconds(1'700'000'000'123'456));
  r.end = r.start + std::chrono::milliseconds(5);
  r.request_held_us = 12.5;
  r.complete = true;
  return r;
}

json parse_line(const std::string& line) {
  REQUIRE(!line.empty());
  CHECK(line.back() == '\n');
  CHECK(line.find('\n') == line.size() - 1);
  return json::parse(line);
}

// A Unix-socket reader for feed tests.
struct TestReader {
  int fd = -1;
  std::string buf;
  explicit TestReader(const std::string& path, int rcvbuf = 0) {
    fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (rcvbuf) ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::memcpy(sa.sun_path, path.data(), path.size());
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~TestReader() { ::close(fd); }
  // The next line, or "" on EOF / timeout.
  std::string line() {
    for (;;) {
      auto nl = buf.find('\n');
      if (nl != std::string::npos) {
        std::string l = buf.substr(0, nl + 1);
        buf.erase(0, nl + 1);
        return l;
      }
      char tmp[65536];
      ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
      if (n <= 0) return {};
      buf.append(tmp, static_cast<std::size_t>(n));
    }
  }
};

std::string temp_socket(const char* name) {
  auto dir = std::filesystem::temp_directory_path() / ("sl-feed-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto p = (dir / name).string();
  std::filesystem::remove(p);
  return p;
}

template <typename F>
bool eventually(F f, std::chrono::milliseconds limit = std::chrono::milliseconds(5000)) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (f()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return f();
}

}  // namespace

TEST_CASE("base64 as in RFC 4648") {
  CHECK(b64("") == "");
  CHECK(b64("f") == "Zg==");
  CHECK(b64("fo") == "Zm8=");
  CHECK(b64("foo") == "Zm9v");
  CHECK(b64("foob") == "Zm9vYg==");
  CHECK(b64("fooba") == "Zm9vYmE=");
  CHECK(b64("foobar") == "Zm9vYmFy");
  CHECK(b64(std::string("\x00\xff\xfe", 3)) == "AP/+");
}

TEST_CASE("exchange record JSON: escaping, base64 bodies, truncation flags") {
  ExchangeRecord r = sample_exchange();
  std::string line;
  format_exchange(line, r, 5);
  json j = parse_line(line);
  CHECK(j["type"] == "exchange");
  CHECK(j["id"] == 42);
  CHECK(j["conn"] == 7);
  CHECK(j["client"] == "127.0.0.1:5000");
  CHECK(j["sni"] == "example.com");
  CHECK(j["rule"] == "debug");
  CHECK(j["user"] == "");  // unknown
  CHECK(j["groups"] == json::array());
  {
    ExchangeRecord named = r;
    auto c = std::make_shared<sightline::exchange::ConnectionInfo>(*r.connection);
    c->user = "bob";
    c->groups = {"g1", "g2"};
    named.connection = c;
    std::string l2;
    format_exchange(l2, named, 0);
    json n = parse_line(l2);
    CHECK(n["user"] == "bob");
    CHECK(n["groups"] == json{"g1", "g2"});
  }
  {
    // The archive's metadata: no header lists, its own members last.
    std::string l3;
    format_exchange(l3, r, 0, false, "\"upstream_verdict\":\"ok\",\"request_truncated\":false");
    json a = parse_line(l3);
    CHECK(a["id"] == 42);
    CHECK(!a["request"].contains("headers"));
    CHECK(!a["response"].contains("headers"));
    CHECK(a["upstream_verdict"] == "ok");
    CHECK(a["request_truncated"] == false);
  }
  CHECK(j["start"] == "2023-11-14T22:13:20.123456Z");
  CHECK(j["end"] == "2023-11-14T22:13:20.128456Z");
  CHECK(j["ts"] == j["end"]);
  CHECK(j["duration_ms"].get<double>() == doctest::Approx(5.0));
  CHECK(j["request_held_us"].get<double>() == doctest::Approx(12.5));
  CHECK(j["response_held_us"].is_null());
  CHECK(j["request"]["method"] == "POST");
  CHECK(j["request"]["target"] == "/a\"b?c=\\d");
  CHECK(j["request"]["headers"][0][1] == "say \"hi\"\n\tnext");
  CHECK(j["request"]["headers"][1][1] == "a\xEF\xBF\xBD\x01z");  // not UTF-8: U+FFFD
  CHECK(j["request"]["body_bytes"] == 11);
  CHECK(j["request"]["body"] == b64("hello"));
  CHECK(j["request"]["body_truncated"] == true);
  CHECK(j["response"]["status"] == 201);
  CHECK(j["response"]["body"] == "AAEC");
  CHECK(j["response"]["body_truncated"] == false);
  CHECK(j["outcome"] == "complete");

  CHECK(!j.contains("icap"));  // not sent to ICAP: no object

  SUBCASE("ICAP outcomes") {
    r.icap_reqmod = "unchanged";
    r.icap_reqmod_ms = 0.25;
    r.icap_respmod = "too-large";
    std::string l2;
    format_exchange(l2, r, 0);
    json k = parse_line(l2);
    CHECK(k["icap"]["reqmod"] == "unchanged");
    CHECK(k["icap"]["reqmod_ms"].get<double>() == doctest::Approx(0.25));
    CHECK(k["icap"]["respmod"] == "too-large");
  }
  SUBCASE("without bodies") {
    std::string l2;
    format_exchange(l2, r, 0);
    json k = parse_line(l2);
    CHECK(!k["request"].contains("body"));
    CHECK(!k["response"].contains("body_truncated"));
    CHECK(k["response"]["body_bytes"] == 3);
  }
  SUBCASE("a body longer than what was captured is truncated") {
    r.response_body_bytes = 1000;
    std::string l2;
    format_exchange(l2, r, 1 << 20);
    json k = parse_line(l2);
    CHECK(k["response"]["body"] == "AAEC");
    CHECK(k["response"]["body_truncated"] == true);
    CHECK(k["request"]["body"] == b64("hello world"));
    CHECK(k["request"]["body_truncated"] == false);
  }
  SUBCASE("aborted before a response") {
    r.has_response = false;
    r.complete = false;
    r.abort_reason = "client reset \"x\"";
    std::string l2;
    format_exchange(l2, r, 0);
    json k = parse_line(l2);
    CHECK(k["response"].is_null());
    CHECK(k["outcome"] == "aborted");
    CHECK(k["reason"] == "client reset \"x\"");
  }
}

TEST_CASE("connection record from the connection log line, and its JSON") {
  json log = {{"event", "connection"},
              {"id", 9},
              {"client", "10.0.0.1:1234"},
              {"target", "example.com:443"},
              {"upstream_addr", "93.184.216.34:443"},
              {"sni", "example.com"},
              {"action", "intercept"},
              {"client_tls", {{"version", "TLSv1.3"}, {"cipher", "TLS_AES_256_GCM_SHA384"}, {"alpn", "h2"}}},
              {"upstream_tls", nullptr},
              {"upstream_verdict", "ok"},
              {"bytes_client_to_server", 100},
              {"bytes_server_to_client", 2000},
              {"upstream_connect_ms", 1.5},
              {"forge_ms", -1},
              {"total_ms", 20.25},
              {"close_reason", "closed \"cleanly\""},
              {"codec", "h2"},
              {"policy", "rule 'debug' (p.toml:1)"},
              {"user", "alice"},
              {"groups", {"supervised", "tr\"aders"}}};
  ConnectionRecord rec = connection_record_from_log(log);
  rec.rule = "debug";
  std::string line;
  format_connection(line, rec);
  json j = parse_line(line);
  CHECK(j["type"] == "connection");
  CHECK(j["event"] == "close");
  CHECK(j["id"] == 9);
  CHECK(j["server"] == "93.184.216.34:443");
  CHECK(j["action"] == "intercept");
  CHECK(j["rule"] == "debug");
  CHECK(j["policy"] == "rule 'debug' (p.toml:1)");
  CHECK(j["user"] == "alice");
  CHECK(j["groups"] == json{"supervised", "tr\"aders"});
  CHECK(j["client_tls"] == "TLSv1.3 TLS_AES_256_GCM_SHA384");
  CHECK(j["upstream_tls"] == "");
  CHECK(j["alpn"] == "h2");
  CHECK(j["bytes_client_to_server"] == 100);
  CHECK(j["bytes_server_to_client"] == 2000);
  CHECK(j["upstream_connect_ms"].get<double>() == doctest::Approx(1.5));
  CHECK(j["forge_ms"].is_null());
  CHECK(j["upstream_handshake_ms"].is_null());
  CHECK(j["duration_ms"].get<double>() == doctest::Approx(20.25));
  CHECK(j["close_reason"] == "closed \"cleanly\"");
  CHECK(j["auto_bypass"] == false);
}

namespace {

// Collects records on its consumer thread.
class RecordSink final : public Sink {
 public:
  RecordSink(std::string n, Wants w) : name_(std::move(n)), wants_(w) {}
  std::string_view name() const override { return name_; }
  Wants wants() const override { return wants_; }
  void on_stream(const StreamEvent&) override {
    std::lock_guard lock(mu_);
    ++streams_;
  }
  void on_exchange(const ExchangeRecord& rec) override {
    std::lock_guard lock(mu_);
    exchanges_.push_back(rec);
  }
  void on_connection(const ConnectionRecord& rec) override {
    std::lock_guard lock(mu_);
    connections_.push_back(rec);
  }
  std::vector<ExchangeRecord> exchanges() {
    std::lock_guard lock(mu_);
    return exchanges_;
  }
  std::vector<ConnectionRecord> connections() {
    std::lock_guard lock(mu_);
    return connections_;
  }
  int streams() {
    std::lock_guard lock(mu_);
    return streams_;
  }

 private:
  std::string name_;
  Wants wants_;
  std::mutex mu_;
  int streams_ = 0;
  std::vector<ExchangeRecord> exchanges_;
  std::vector<ConnectionRecord> connections_;
};

}  // namespace

TEST_CASE("ExchangeTap: records with heads and capped bodies, selected by the rule's hooks option") {
  Bus bus;
  Wants w;
  w.streams = false;
  w.exchanges = true;
  w.connections = true;
  w.body_cap = 4;
  auto feed = std::make_unique<RecordSink>("events", w);
  auto* feed_raw = feed.get();
  auto pcap = std::make_unique<RecordSink>("pcap", Wants{});
  auto* pcap_raw = pcap.get();
  bus.add(std::move(feed), {});
  bus.add(std::move(pcap), {});
  CHECK(bus.wants_exchanges());
  CHECK(bus.wants_connections());
  CHECK(bus.body_cap() == 4);
  // Stream taps skip consumers that want no streams.
  CHECK(select_channels(bus, nullptr).size() == 1);
  CHECK(select_channels(bus, nullptr, Kind::exchanges).size() == 1);
  for (auto& c : bus.channels()) c->start(nullptr, 0, nullptr);

  ExchangeTap tap(bus);
  auto run = [&](std::uint64_t id, std::shared_ptr<const exchange::ConnectionInfo> conn, bool abort) {
    exchange::Exchange ex;
    ex.id = id;
    ex.connection = std::move(conn);
    ex.protocol = "HTTP/2";
    ex.stream = 3;
    ex.method = "PUT";
    exchange::Head req;
    req.method = "PUT";
    req.authority = "a.example";
    req.target = "/up";
    req.headers = {{"x", "1"}};
    tap.on_request_head(ex, req);
    ex.request_body_bytes = 6;
    tap.on_body(ex, exchange::Direction::request, std::span<const char>("abc", 3));
    tap.on_body(ex, exchange::Direction::request, std::span<const char>("def", 3));
    tap.on_request_end(ex, {});
    if (abort) {
      tap.on_abort(ex, "stream reset");
      return;
    }
    exchange::Head interim;
    interim.status = 100;
    tap.on_response_head(ex, interim);
    exchange::Head resp;
    resp.status = 204;
    tap.on_response_head(ex, resp);
    ex.status = 204;
    tap.on_response_end(ex, {});
  };
  run((1ull << 56) | 1, conn_info(), false);
  run((2ull << 56) | 1, conn_info(), true);
  auto quiet = conn_info();
  quiet->hooks = std::vector<std::string>{};  // hooks = []: nobody
  run((1ull << 56) | 2, quiet, false);
  auto pcap_only = conn_info();
  pcap_only->hooks = std::vector<std::string>{"pcap"};
  run((1ull << 56) | 3, pcap_only, false);
  bus.stop();

  auto recs = feed_raw->exchanges();
  REQUIRE(recs.size() == 2);
  CHECK(recs[0].id == ((1ull << 56) | 1));
  CHECK(recs[0].request.target == "/up");
  CHECK(recs[0].request.headers.size() == 1);
  CHECK(recs[0].request_body == "abcd");
  CHECK(recs[0].request_body_bytes == 6);
  CHECK(recs[0].has_response);
  CHECK(recs[0].response.status == 204);
  CHECK(recs[0].complete);
  CHECK(recs[0].stream == 3);
  CHECK(!recs[1].complete);
  CHECK(!recs[1].has_response);
  CHECK(recs[1].abort_reason == "stream reset");
  CHECK(pcap_raw->exchanges().empty());
  CHECK(tap.untracked() == 0);
}

TEST_CASE("connection records go to consumers that want them, per the rule's hooks option") {
  Bus bus;
  Wants w;
  w.streams = false;
  w.connections = true;
  auto feed = std::make_unique<RecordSink>("events", w);
  auto* feed_raw = feed.get();
  auto pcap = std::make_unique<RecordSink>("pcap", Wants{});
  auto* pcap_raw = pcap.get();
  bus.add(std::move(feed), {});
  bus.add(std::move(pcap), {});
  for (auto& c : bus.channels()) c->start(nullptr, 0, nullptr);
  json log = {{"id", 1}, {"action", "bypass"}, {"client", "1.2.3.4:5"}};
  publish_connection(bus, nullptr, "", log);
  std::optional<std::vector<std::string>> none = std::vector<std::string>{};
  publish_connection(bus, &none, "quiet", log);
  std::optional<std::vector<std::string>> events = std::vector<std::string>{"events"};
  publish_connection(bus, &events, "loud", log);
  bus.stop();
  auto recs = feed_raw->connections();
  REQUIRE(recs.size() == 2);
  CHECK(recs[0].action == "bypass");
  CHECK(recs[0].rule == "");
  CHECK(recs[1].rule == "loud");
  CHECK(pcap_raw->connections().empty());
  CHECK(pcap_raw->streams() == 0);
}

TEST_CASE("event feed: readers get the same lines; late readers only later ones; slow readers dropped") {
  std::string path = temp_socket("feed.sock");
  EventFeedOptions o;
  o.socket_path = path;
  o.include_bodies = true;
  o.body_cap = 8;
  o.reader_backlog_bytes = 64 * 1024;
  std::string err;
  auto sink = EventFeedSink::create(o, &err);
  REQUIRE_MESSAGE(sink, err);
  struct stat st{};
  REQUIRE(::lstat(path.c_str(), &st) == 0);
  CHECK(S_ISSOCK(st.st_mode));
  CHECK((st.st_mode & 0777) == 0660);
  CHECK(sink->wants().exchanges);
  CHECK(!sink->wants().streams);
  CHECK(sink->wants().body_cap == 8);

  TestReader a(path), b(path);
  REQUIRE(eventually([&] { return sink->readers() == 2; }));
  ExchangeRecord r = sample_exchange();
  sink->on_exchange(r);
  ConnectionRecord c;
  c.id = 7;
  c.action = "intercept";
  sink->on_connection(c);
  std::string a1 = a.line(), a2 = a.line(), b1 = b.line(), b2 = b.line();
  CHECK(a1 == b1);
  CHECK(a2 == b2);
  CHECK(parse_line(a1)["type"] == "exchange");
  CHECK(parse_line(a1)["request"]["body"] == b64("hello wo"));
  CHECK(parse_line(a2)["type"] == "connection");
  CHECK(sink->exchange_records() == 1);
  CHECK(sink->connection_records() == 1);

  // Connected after those two: sees only what comes next.
  TestReader late(path);
  REQUIRE(eventually([&] { return sink->readers() == 3; }));
  c.id = 8;
  sink->on_connection(c);
  CHECK(parse_line(late.line())["id"] == 8);
  CHECK(parse_line(a.line())["id"] == 8);
  CHECK(parse_line(b.line())["id"] == 8);

  // A reader that never reads: dropped once its backlog passes the cap,
  // while publishing never waits; the others keep receiving.
  TestReader stalled(path, 4096);
  REQUIRE(eventually([&] { return sink->readers() == 4; }));
  std::atomic<bool> done{false};
  std::thread drain([&] {
    while (!done) {
      (void)a.line();
    }
  });
  auto t0 = std::chrono::steady_clock::now();
  r.request.headers.push_back({"x-pad", std::string(2000, 'p')});
  for (int i = 0; i < 2000 && sink->readers_dropped() == 0; ++i) sink->on_exchange(r);
  auto took = std::chrono::steady_clock::now() - t0;
  CHECK(sink->readers_dropped() >= 1);
  CHECK(took < std::chrono::seconds(2));
  // b and late never read either; they may have been dropped too. The
  // stalled reader sees EOF after its buffered lines.
  REQUIRE(eventually([&] { return sink->readers() <= 3; }));
  int lines = 0;
  while (!stalled.line().empty()) ++lines;
  CHECK(lines < 2000);
  sink->on_stop();
  done = true;
  ::shutdown(a.fd, SHUT_RDWR);
  drain.join();
  CHECK(::lstat(path.c_str(), &st) != 0);  // removed at stop
}

TEST_CASE("event feed socket path: stale socket replaced, other files and live listeners refused") {
  std::string path = temp_socket("stale.sock");
  {
    // A socket file nobody listens on (a crashed run).
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::memcpy(sa.sun_path, path.data(), path.size());
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
    ::close(fd);
  }
  EventFeedOptions o;
  o.socket_path = path;
  o.mode = 0600;
  std::string err;
  auto sink = EventFeedSink::create(o, &err);
  REQUIRE_MESSAGE(sink, err);
  struct stat st{};
  REQUIRE(::lstat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  // Another instance on the same path: refused, the live one left alone.
  auto second = EventFeedSink::create(o, &err);
  CHECK(!second);
  CHECK(err.find("another process is listening") != std::string::npos);
  sink.reset();
  CHECK(::lstat(path.c_str(), &st) != 0);

  std::string file = temp_socket("regular");
  { std::FILE* f = std::fopen(file.c_str(), "w"); std::fclose(f); }
  o.socket_path = file;
  CHECK(!EventFeedSink::create(o, &err));
  CHECK(err.find("not a socket") != std::string::npos);
  CHECK(std::filesystem::exists(file));
  std::filesystem::remove(file);
}
