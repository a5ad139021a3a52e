// The HTTP/2 relay between two real nghttp2 peers (a client and an origin),
// for the cases tests/fuzz/h2_frames_fuzz found: the final response after 1xx
// heads, header blocks nghttp2 rejects, and statuses of no class.
#include "exchange/recording.h"
#include "http/h2_relay.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

using namespace sightline;
using http::Side;

namespace {

struct FakeIo final : http::RelayIo {
  std::string out[2];  // toward the client, toward the origin
  bool failed = false;
  void send(Side to, std::span<const char> d) override { out[to == Side::client ? 0 : 1].append(d.data(), d.size()); }
  std::size_t queued(Side) const override { return 0; }
  void end(Side, bool) override {}
  void stop_reading(Side) override {}
  void pause_reading(Side, bool) override {}
  void fail(std::string) override { failed = true; }
  void set_close_reason(std::string) override {}
};

using Fields = std::vector<std::pair<std::string, std::string>>;

// Points into `f`, which must outlive the result.
std::vector<nghttp2_nv> nv(const Fields& f) {
  std::vector<nghttp2_nv> out;
  for (const auto& [n, v] : f)
    out.push_back({reinterpret_cast<uint8_t*>(const_cast<char*>(n.data())),
                   reinterpret_cast<uint8_t*>(const_cast<char*>(v.data())), n.size(), v.size(), NGHTTP2_NV_FLAG_NONE});
  return out;
}

// One side's nghttp2 session and what it received, per stream.
struct Peer {
  nghttp2_session* s = nullptr;
  std::map<std::int32_t, Fields> fields;  // every header block, in order
  std::map<std::int32_t, std::string> body;
  std::map<std::int32_t, std::uint32_t> closed;  // error code
  std::function<void(Peer&, std::int32_t)> on_request_end;  // origin: answer here
  std::string to_send;  // the origin's response body

  explicit Peer(bool server) {
    nghttp2_session_callbacks* cb = nullptr;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_header_callback(
        cb, [](nghttp2_session*, const nghttp2_frame* f, const uint8_t* n, size_t nl, const uint8_t* v, size_t vl,
               uint8_t, void* ud) {
          static_cast<Peer*>(ud)->fields[f->hd.stream_id].emplace_back(
              std::string(reinterpret_cast<const char*>(n), nl), std::string(reinterpret_cast<const char*>(v), vl));
          return 0;
        });
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(
        cb, [](nghttp2_session*, uint8_t, int32_t id, const uint8_t* d, size_t len, void* ud) {
          static_cast<Peer*>(ud)->body[id].append(reinterpret_cast<const char*>(d), len);
          return 0;
        });
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, [](nghttp2_session*, int32_t id, uint32_t code, void* ud) {
      static_cast<Peer*>(ud)->closed[id] = code;
      return 0;
    });
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, [](nghttp2_session*, const nghttp2_frame* f, void* ud) {
      auto& p = *static_cast<Peer*>(ud);
      if ((f->hd.flags & NGHTTP2_FLAG_END_STREAM) && f->hd.stream_id > 0 && p.on_request_end)
        p.on_request_end(p, f->hd.stream_id);
      return 0;
    });
    if (server) nghttp2_session_server_new(&s, cb, this);
    else nghttp2_session_client_new(&s, cb, this);
    nghttp2_session_callbacks_del(cb);
    nghttp2_submit_settings(s, NGHTTP2_FLAG_NONE, nullptr, 0);
  }
  ~Peer() { nghttp2_session_del(s); }
  Peer(const Peer&) = delete;
  Peer& operator=(const Peer&) = delete;

  void respond(std::int32_t id, const Fields& head, std::string body_text) {
    to_send = std::move(body_text);
    nghttp2_data_provider prd{};
    prd.source.ptr = this;
    prd.read_callback = [](nghttp2_session*, int32_t, uint8_t* buf, size_t len, uint32_t* flags, nghttp2_data_source* src,
                           void*) -> ssize_t {
      auto& p = *static_cast<Peer*>(src->ptr);
      const std::size_t n = std::min(len, p.to_send.size());
      std::memcpy(buf, p.to_send.data(), n);
      p.to_send.erase(0, n);
      if (p.to_send.empty()) *flags |= NGHTTP2_DATA_FLAG_EOF;
      return static_cast<ssize_t>(n);
    };
    auto v = nv(head);
    nghttp2_submit_response(s, id, v.data(), v.size(), &prd);
  }
};

struct Fixture {
  FakeIo io;
  exchange::RecordingConsumer rec;
  http::H2Relay relay{io, rec, std::make_shared<exchange::ConnectionInfo>(), http::H2Settings{}, 1 << 20};
  Peer client{false}, origin{true};

  Fixture() { REQUIRE(relay.start()); }

  // Moves bytes both ways until every session is quiet.
  void pump() {
    for (int round = 0; round < 100; ++round) {
      bool moved = false;
      for (auto [peer, side] : {std::pair{&client, Side::client}, std::pair{&origin, Side::upstream}}) {
        const uint8_t* data = nullptr;
        for (ssize_t n; (n = nghttp2_session_mem_send(peer->s, &data)) > 0; moved = true)
          relay.on_data(side, std::span<const char>(reinterpret_cast<const char*>(data), static_cast<std::size_t>(n)));
        std::string& in = io.out[side == Side::client ? 0 : 1];
        if (!in.empty()) {
          CHECK(nghttp2_session_mem_recv(peer->s, reinterpret_cast<const uint8_t*>(in.data()), in.size()) ==
                static_cast<ssize_t>(in.size()));
          in.clear();
          moved = true;
        }
      }
      if (!moved) return;
    }
    FAIL("the sessions never went quiet");
  }

  std::int32_t get(const Fields& extra = {}) {
    Fields f{{":method", "GET"}, {":scheme", "https"}, {":authority", "www.example.com"}, {":path", "/"}};
    f.insert(f.end(), extra.begin(), extra.end());
    auto v = nv(f);
    return nghttp2_submit_request(client.s, nullptr, v.data(), v.size(), nullptr, nullptr);
  }
};

std::string status_of(const Fields& f, std::size_t nth) {
  for (const auto& [n, v] : f)
    if (n == ":status" && nth-- == 0) return v;
  return {};
}

}  // namespace

TEST_CASE("h2: the final response after 1xx heads (103 Early Hints) reaches the client") {
  Fixture f;
  f.origin.on_request_end = [](Peer& o, std::int32_t id) {
    const Fields hints{{":status", "103"}, {"link", "</s.css>; rel=preload"}};
    auto v = nv(hints);
    nghttp2_submit_headers(o.s, NGHTTP2_FLAG_NONE, id, nullptr, v.data(), v.size(), nullptr);
    o.respond(id, {{":status", "200"}, {"content-type", "text/plain"}}, "hello");
  };
  const std::int32_t id = f.get();
  f.pump();
  CHECK(status_of(f.client.fields[id], 0) == "103");
  CHECK(status_of(f.client.fields[id], 1) == "200");
  CHECK(f.client.body[id] == "hello");
  REQUIRE(f.client.closed.count(id));
  CHECK(f.client.closed[id] == NGHTTP2_NO_ERROR);
  CHECK(f.rec.violations.empty());
  CHECK(f.rec.events.back().rfind("resp-end", 0) == 0);
}

TEST_CASE("h2: a request header block nghttp2 rejects is no exchange") {
  Fixture f;
  const std::int32_t id = f.get({{"connection", "close"}});  // malformed in HTTP/2 (RFC 9113 8.2.2)
  f.pump();
  REQUIRE(f.client.closed.count(id));
  CHECK(f.client.closed[id] == NGHTTP2_PROTOCOL_ERROR);
  CHECK(f.rec.events.empty());
  CHECK(f.rec.violations.empty());
  CHECK(!f.io.failed);
}

TEST_CASE("h2: a status of no class (0xx) from the origin gets the client a 502") {
  Fixture f;
  f.origin.on_request_end = [](Peer& o, std::int32_t id) { o.respond(id, {{":status", "067"}}, "odd"); };
  const std::int32_t id = f.get();
  f.pump();
  CHECK(status_of(f.client.fields[id], 0) == "502");
  CHECK(f.client.body[id].find("origin reset the stream") != std::string::npos);
  CHECK(f.rec.violations.empty());
  CHECK(f.rec.events.back().rfind("abort", 0) == 0);
}
