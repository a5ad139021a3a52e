#include "exchange/recording.h"
#include "http/h1_relay.h"

#include <doctest/doctest.h>

#include <string>

using namespace sightline;
using http::Side;

namespace {

// Stands in for the session: records what the relay sends each way.
struct FakeIo final : http::RelayIo {
  std::string to_client, to_upstream;
  bool client_ended = false, upstream_ended = false, failed = false;
  bool client_reading = true;
  std::string close_reason;

  void send(Side to, std::span<const char> d) override {
    (to == Side::client ? to_client : to_upstream).append(d.data(), d.size());
  }
  std::size_t queued(Side) const override { return 0; }
  void end(Side to, bool) override { (to == Side::client ? client_ended : upstream_ended) = true; }
  void stop_reading(Side from) override {
    if (from == Side::client) client_reading = false;
  }
  void pause_reading(Side, bool) override {}
  void fail(std::string r) override {
    failed = true;
    close_reason = std::move(r);
  }
  void set_close_reason(std::string r) override {
    if (close_reason.empty()) close_reason = std::move(r);
  }
};

struct Fixture {
  FakeIo io;
  exchange::RecordingConsumer rec;
  http::H1Relay relay{io, rec, std::make_shared<exchange::ConnectionInfo>(), http::H1Limits{}};
  void client(std::string_view s) { relay.on_data(Side::client, s); }
  void origin(std::string_view s) { relay.on_data(Side::upstream, s); }
};

}  // namespace

TEST_CASE("a request and its response are forwarded unchanged and reported in order") {
  Fixture f;
  const std::string req = "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
  const std::string resp = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n";
  f.client(req);
  CHECK(f.io.to_upstream == req);
  f.origin(resp);
  CHECK(f.io.to_client == resp);
  CHECK(f.rec.violations.empty());
  REQUIRE(f.rec.events.size() >= 6);
  CHECK(f.rec.events.front().rfind("req-head", 0) == 0);
  CHECK(f.rec.events.back().find("resp-end") == 0);
  CHECK(f.rec.events.back().find("trailers=1") != std::string::npos);
  CHECK(f.rec.request_bodies.begin()->second == "hello");
  CHECK(f.rec.response_bodies.begin()->second == "abc");
}

TEST_CASE("pipelined requests get their responses in order, 1xx included") {
  Fixture f;
  f.client("GET /1 HTTP/1.1\r\nHost: a\r\n\r\nHEAD /2 HTTP/1.1\r\nHost: a\r\n\r\nGET /3 HTTP/1.1\r\nHost: a\r\n\r\n");
  f.origin("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA");
  f.origin("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n");  // HEAD: no body despite CL
  f.origin("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
  CHECK(f.rec.violations.empty());
  int ends = 0;
  for (const auto& e : f.rec.events) ends += e.rfind("resp-end", 0) == 0;
  CHECK(ends == 3);
  CHECK(f.io.to_client.find("404") != std::string::npos);
}

TEST_CASE("a smuggling attempt never reaches the origin and gets 400") {
  for (const char* bad : {
           "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
           "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
           "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
           "GET / HTTP/1.1\nHost: a\r\n\r\n",
       }) {
    CAPTURE(bad);
    Fixture f;
    f.client(bad);
    CHECK(f.io.to_upstream.empty());
    CHECK(f.io.to_client.rfind("HTTP/1.1 400 Bad Request\r\n", 0) == 0);
    CHECK(f.io.to_client.find("Connection: close") != std::string::npos);
    CHECK(f.io.client_ended);
    CHECK_FALSE(f.io.client_reading);
  }
}

TEST_CASE("an error behind a pipelined request waits for the earlier response") {
  Fixture f;
  f.client("GET /ok HTTP/1.1\r\nHost: a\r\n\r\nGET /bad HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n");
  CHECK(f.io.to_upstream == "GET /ok HTTP/1.1\r\nHost: a\r\n\r\n");
  CHECK(f.io.to_client.empty());
  f.origin("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
  CHECK(f.io.to_client.rfind("HTTP/1.1 200 OK", 0) == 0);
  CHECK(f.io.to_client.find("HTTP/1.1 400 Bad Request") != std::string::npos);
  CHECK(f.rec.violations.empty());
}

TEST_CASE("101 switches to a tunnel in both directions") {
  Fixture f;
  f.client("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
  f.origin("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x01x");
  f.client("\x81\x81" "abcd" "\x01");
  CHECK(f.io.to_upstream.size() >= 5);
  CHECK(f.io.to_upstream.substr(f.io.to_upstream.size() - 7) == "\x81\x81" "abcd" "\x01");
  CHECK(f.io.to_client.substr(f.io.to_client.size() - 3) == "\x81\x01x");
  CHECK(f.rec.violations.empty());
}

TEST_CASE("origin closing before answering gives 502; mid-body gives an abort") {
  {
    Fixture f;
    f.client("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    f.relay.on_end(Side::upstream, true);
    CHECK(f.io.to_client.rfind("HTTP/1.1 502 Bad Gateway", 0) == 0);
  }
  {
    Fixture f;
    f.client("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    f.origin("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
    f.relay.on_end(Side::upstream, true);
    CHECK(f.io.to_client.find("502") == std::string::npos);
    CHECK(f.rec.events.back().rfind("abort", 0) == 0);
    CHECK(f.rec.violations.empty());
  }
}

TEST_CASE("refusal mode answers every request itself") {
  FakeIo io;
  exchange::RecordingConsumer rec;
  http::H1Relay relay{io, rec, std::make_shared<exchange::ConnectionInfo>(), http::H1Limits{},
                      http::Refusal{502, "upstream certificate invalid: expired"}};
  relay.on_data(Side::client, std::string_view("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
  CHECK(io.to_upstream.empty());
  CHECK(io.to_client.rfind("HTTP/1.1 502 Bad Gateway", 0) == 0);
  CHECK(io.to_client.find("upstream certificate invalid: expired") != std::string::npos);
  CHECK(io.to_client.find("Cache-Control: no-store") != std::string::npos);
}

TEST_CASE("exchanges open when the relay goes are aborted") {
  FakeIo io;
  exchange::RecordingConsumer rec;
  {
    http::H1Relay relay{io, rec, std::make_shared<exchange::ConnectionInfo>(), http::H1Limits{}};
    relay.on_data(Side::client, std::string_view("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\nabc"));
  }
  REQUIRE(!rec.events.empty());
  CHECK(rec.events.back().rfind("abort", 0) == 0);
  CHECK(rec.violations.empty());
}

TEST_CASE("refusal mode ends the client when the client ends without a request") {
  FakeIo io;
  exchange::RecordingConsumer rec;
  http::H1Relay relay{io, rec, std::make_shared<exchange::ConnectionInfo>(), http::H1Limits{},
                      http::Refusal{502, "upstream certificate invalid"}};
  relay.on_end(Side::client, true);
  CHECK(io.client_ended);
}

// upstream.reuse: a client's "Connection: close" is hop-by-hop.
TEST_CASE("keep_origin: close ends only the client leg, and the origin is idle after the exchange") {
  FakeIo io;
  exchange::RecordingConsumer rec;
  http::H1Relay relay{io, rec, std::make_shared<exchange::ConnectionInfo>(), http::H1Limits{},
                      std::nullopt, {}, /*keep_origin=*/true};
  CHECK(relay.origin_idle());
  relay.on_data(Side::client, std::string_view("GET /a HTTP/1.1\r\nHost: a\r\nConnection: close, X-T\r\nX-T: 1\r\n\r\n"));
  CHECK(io.to_upstream == "GET /a HTTP/1.1\r\nHost: a\r\nConnection: X-T\r\nX-T: 1\r\n\r\n");
  CHECK_FALSE(relay.origin_idle());  // a response is due
  relay.on_data(Side::upstream,
                std::string_view("HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok"));
  CHECK(io.to_client == "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
  CHECK(io.client_ended);
  CHECK_FALSE(io.upstream_ended);
  CHECK(relay.origin_idle());
  // The client promised nothing more: a late request is not forwarded.
  relay.on_data(Side::client, std::string_view("GET /b HTTP/1.1\r\nHost: a\r\n\r\n"));
  CHECK(io.to_upstream.find("/b") == std::string::npos);
  CHECK(rec.violations.empty());
}

TEST_CASE("keep_origin: an origin that says close, or a close-delimited body, is never idle") {
  for (const char* resp : {"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
                           "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"}) {
    FakeIo io;
    exchange::RecordingConsumer rec;
    http::H1Relay relay{io, rec, std::make_shared<exchange::ConnectionInfo>(), http::H1Limits{},
                        std::nullopt, {}, true};
    relay.on_data(Side::client, std::string_view("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
    relay.on_data(Side::upstream, std::string_view(resp));
    CHECK_MESSAGE(!relay.origin_idle(), resp);
  }
  // Without keep_origin the head is forwarded unchanged and nothing is kept.
  FakeIo io;
  exchange::RecordingConsumer rec;
  http::H1Relay relay{io, rec, std::make_shared<exchange::ConnectionInfo>(), http::H1Limits{}};
  const std::string req = "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
  relay.on_data(Side::client, req);
  CHECK(io.to_upstream == req);
  relay.on_data(Side::upstream, std::string_view("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
  CHECK_FALSE(relay.origin_idle());
}

// NTLM and Negotiate authenticate the connection: sharing it (another
// client's connection, or this client's after a release) would hand over
// the login.
TEST_CASE("keep_origin: connection-bound authentication pins the origin connection") {
  struct Case {
    const char* request;
    const char* response;
  };
  for (const Case& c :
       {Case{"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: NTLM TlRMTVNTUAABAAAA\r\n\r\n",
             "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"},
        Case{"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: negotiate YIIC\r\n\r\n",
             "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"},
        Case{"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
             "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"x\"\r\n"
             "WWW-Authenticate: Negotiate\r\nContent-Length: 0\r\n\r\n"},
        Case{"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
             "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: NTLM\r\nContent-Length: 0\r\n\r\n"},
        Case{"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
             "HTTP/1.1 200 OK\r\nProxy-Support: Session-Based-Authentication\r\nContent-Length: 0\r\n\r\n"}}) {
    FakeIo io;
    exchange::RecordingConsumer rec;
    http::H1Relay relay{io, rec, std::make_shared<exchange::ConnectionInfo>(), http::H1Limits{},
                        std::nullopt, {}, true};
    relay.on_data(Side::client, std::string_view(c.request));
    relay.on_data(Side::upstream, std::string_view(c.response));
    REQUIRE(rec.violations.empty());
    CHECK_MESSAGE(!relay.origin_idle(), c.request, c.response);
  }
  // Per-request schemes leave it shareable.
  FakeIo io;
  exchange::RecordingConsumer rec;
  http::H1Relay relay{io, rec, std::make_shared<exchange::ConnectionInfo>(), http::H1Limits{},
                      std::nullopt, {}, true};
  relay.on_data(Side::client, std::string_view("GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Basic dTpw\r\n\r\n"));
  relay.on_data(Side::upstream,
                std::string_view("HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\nContent-Length: 0\r\n\r\n"));
  CHECK(relay.origin_idle());
}

TEST_CASE("keep_origin: a request pipelined after Connection: close never reaches the origin") {
  FakeIo io;
  exchange::RecordingConsumer rec;
  http::H1Relay relay{io, rec, std::make_shared<exchange::ConnectionInfo>(), http::H1Limits{},
                      std::nullopt, {}, true};
  relay.on_data(Side::client,
                std::string_view("POST /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 2\r\n\r\nxy"
                                 "POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nzz"));
  CHECK(io.to_upstream == "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nxy");
  // The origin answers HTTP/1.0: the version stays, the client is told close.
  relay.on_data(Side::upstream, std::string_view("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nk"));
  CHECK(io.to_client == "HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nk");
  CHECK(io.client_ended);
  CHECK_FALSE(relay.origin_idle());  // an HTTP/1.0 origin is not kept
  int heads = 0;
  for (const auto& e : rec.events) heads += e.rfind("req-head", 0) == 0;
  CHECK(heads == 1);
}

namespace {
// Counts the header fields it is handed, and says whether it wants them.
struct FieldCounter final : exchange::Consumer {
  bool want = false;
  std::size_t request_fields = 0, response_fields = 0;
  std::string method, target, authority;
  int status = 0;
  void on_request_head(const exchange::Exchange&, const exchange::Head& h) override {
    request_fields += h.headers.size();
    method = h.method;
    target = h.target;
    authority = h.authority;
  }
  void on_body(const exchange::Exchange&, exchange::Direction, std::span<const char>) override {}
  void on_request_end(const exchange::Exchange&, const exchange::Headers&) override {}
  void on_response_head(const exchange::Exchange&, const exchange::Head& h) override {
    response_fields += h.headers.size();
    status = h.status;
  }
  void on_response_end(const exchange::Exchange&, const exchange::Headers&) override {}
  void on_abort(const exchange::Exchange&, std::string_view) override {}
  bool wants_headers(const exchange::ConnectionInfo&) const override { return want; }
};
}  // namespace

// Copying every field of every head is skipped when no consumer reads them
// (the access log and metrics read the request line and status only).
TEST_CASE("heads carry their fields only when a consumer wants them") {
  for (bool want : {false, true}) {
    FakeIo io;
    FieldCounter c;
    c.want = want;
    http::H1Relay relay{io, c, std::make_shared<exchange::ConnectionInfo>(), http::H1Limits{}};
    relay.on_data(Side::client, std::string_view("GET /x?y HTTP/1.1\r\nHost: a.test\r\nAccept: */*\r\n\r\n"));
    relay.on_data(Side::upstream, std::string_view("HTTP/1.1 204 No Content\r\nServer: t\r\n\r\n"));
    CHECK(c.method == "GET");
    CHECK(c.target == "/x?y");
    CHECK(c.authority == "a.test");
    CHECK(c.status == 204);
    CHECK(c.request_fields == (want ? 2u : 0u));
    CHECK(c.response_fields == (want ? 1u : 0u));
    CHECK(io.to_upstream == "GET /x?y HTTP/1.1\r\nHost: a.test\r\nAccept: */*\r\n\r\n");
    CHECK(io.to_client == "HTTP/1.1 204 No Content\r\nServer: t\r\n\r\n");
  }
  exchange::Fanout fan;
  auto a = std::make_shared<FieldCounter>();
  fan.add(a);
  exchange::ConnectionInfo info;
  CHECK_FALSE(fan.wants_headers(info));
  auto b = std::make_shared<FieldCounter>();
  b->want = true;
  fan.add(b);
  CHECK(fan.wants_headers(info));
}
