#include "http/h1_parser.h"

#include <doctest/doctest.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

using namespace sightline::http;
using namespace std::string_literals;
using Kind = H1Parser::Kind;

namespace {

const char* framing_name(Framing f) {
  switch (f) {
    case Framing::none: return "none";
    case Framing::content_length: return "length";
    case Framing::chunked: return "chunked";
    case Framing::until_close: return "close";
    case Framing::tunnel: return "tunnel";
  }
  return "?";
}

// Records callbacks in a form that does not depend on how the input was
// split: consecutive on_body calls are merged, on_forward bytes are
// concatenated, and heads/ends carry the number of bytes forwarded so far
// (which must be the same however the input arrives).
class Recorder : public H1Parser::Handler {
 public:
  std::vector<std::string> events;
  std::string forwarded;
  std::vector<MessageHead> heads;
  std::vector<HeaderList> trailers;

  void on_head(const MessageHead& h, Framing f, std::uint64_t cl, std::string_view raw) override {
    CHECK_FALSE(head_raw_);
    close_body();
    std::string e = "head ";
    e += h.method.empty() ? std::to_string(h.status) : h.method + " " + h.target;
    e += " " + std::string(framing_name(f)) + " " + std::to_string(cl) + " @" + std::to_string(forwarded.size());
    events.push_back(e);
    heads.push_back(h);
    head_raw_ = std::string(raw);
  }
  void on_body(std::span<const char> d) override {
    CHECK_FALSE(head_raw_);
    body_.append(d.data(), d.size());
    in_body_ = true;
  }
  void on_forward(std::span<const char> w) override {
    CHECK(!w.empty());
    if (head_raw_) {
      // The head comes as exactly one call, right after on_head.
      CHECK(std::string_view(w.data(), w.size()) == *head_raw_);
      head_raw_.reset();
    }
    forwarded.append(w.data(), w.size());
  }
  void on_trailers(const HeaderList& t) override {
    CHECK_FALSE(head_raw_);
    close_body();
    std::string e = "trailers";
    for (const auto& f : t) e += " " + f.name + "=" + f.value;
    events.push_back(e);
    trailers.push_back(t);
  }
  void on_message_end() override {
    CHECK_FALSE(head_raw_);
    close_body();
    events.push_back("end @" + std::to_string(forwarded.size()));
  }
  void close_body() {
    if (in_body_) events.push_back("body " + body_);
    body_.clear();
    in_body_ = false;
  }

 private:
  std::string body_;
  bool in_body_ = false;
  std::optional<std::string> head_raw_;
};

struct Result {
  bool ok = false;
  int status = 0;
  std::string reason;
  std::vector<std::string> events;
  std::string forwarded;
  bool tunnel = false;
  bool idle = false;
};

// Feeds `input` in pieces of `step` bytes (0: all at once), then optionally
// calls finish().
Result run(Kind kind, std::string_view input, std::size_t step = 0, bool finish = false,
           std::vector<std::string> methods = {}, H1Limits limits = {}) {
  Recorder rec;
  H1Parser parser(kind, rec, limits);
  for (const auto& m : methods) parser.expect_response_to(m);
  bool ok = true;
  if (step == 0) step = input.size() > 0 ? input.size() : 1;
  for (std::size_t off = 0; off < input.size() && ok; off += step)
    ok = parser.feed({input.data() + off, std::min(step, input.size() - off)});
  if (ok && finish) ok = parser.finish();
  rec.close_body();
  Result r;
  r.ok = ok;
  r.status = parser.error().status;
  r.reason = parser.error().reason;
  r.events = rec.events;
  r.forwarded = rec.forwarded;
  r.tunnel = parser.in_tunnel();
  r.idle = parser.idle();
  // Whatever happens, only a prefix of the input is ever forwarded.
  CHECK(input.substr(0, r.forwarded.size()) == r.forwarded);
  return r;
}

Result req(std::string_view in, bool finish = false) { return run(Kind::request, in, 0, finish); }

Result resp(std::string_view in, std::vector<std::string> methods = {}, bool finish = false) {
  return run(Kind::response, in, 0, finish, std::move(methods));
}

using Events = std::vector<std::string>;

// Same outcome whether fed at once, byte by byte or in odd-sized pieces.
void check_splits(Kind kind, std::string_view in, std::vector<std::string> methods = {},
                  bool finish = false) {
  const Result whole = run(kind, in, 0, finish, methods);
  for (std::size_t step : {1, 2, 3, 7, 64}) {
    CAPTURE(step);
    const Result split = run(kind, in, step, finish, methods);
    CHECK(split.ok == whole.ok);
    CHECK(split.status == whole.status);
    CHECK(split.events == whole.events);
    CHECK(split.forwarded == whole.forwarded);
  }
}

// Rejected with `status`, whether fed at once or byte by byte.
// Rejected with `status` (and a reason containing `why`, when given), whether
// fed at once or byte by byte.
void check_rejected(Kind kind, std::string_view in, int status, std::vector<std::string> methods = {},
                    std::string_view why = {}) {
  CAPTURE(in);
  for (std::size_t step : {0, 1}) {
    CAPTURE(step);
    const Result r = run(kind, in, step, true, methods);
    CHECK_FALSE(r.ok);
    CHECK(r.status == status);
    CHECK_FALSE(r.reason.empty());
    if (!why.empty()) {
      CAPTURE(r.reason);
      CHECK(r.reason.find(why) != std::string::npos);
    }
  }
}

void check_request_rejected(std::string_view in, int status, std::string_view why = {}) {
  check_rejected(Kind::request, in, status, {}, why);
}

std::string with_headers(std::string_view fields, std::string_view rest = {}) {
  return "POST /upload HTTP/1.1\r\nHost: example.com\r\n" + std::string(fields) + "\r\n" + std::string(rest);
}

}  // namespace

TEST_CASE("iequals and MessageHead::find") {
  CHECK(iequals("Content-Length", "content-LENGTH"));
  CHECK_FALSE(iequals("Content-Length", "Content-Lengt"));
  CHECK_FALSE(iequals("a", "b"));
  CHECK(iequals("", ""));
  MessageHead h;
  h.headers = {{"Host", "a"}, {"X-Two", "1"}, {"x-two", "2"}};
  REQUIRE(h.find("x-TWO") != nullptr);
  CHECK(*h.find("x-TWO") == "1");
  CHECK(h.find("missing") == nullptr);
}

TEST_CASE("simple GET") {
  const std::string in = "GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nAccept:  */* \t\r\n\r\n";
  Recorder rec;
  H1Parser p(Kind::request, rec);
  CHECK(p.idle());
  REQUIRE(p.feed({in.data(), in.size()}));
  CHECK(rec.events == Events{"head GET /index.html?q=1 none 0 @0", "end @" + std::to_string(in.size())});
  CHECK(rec.forwarded == in);
  REQUIRE(rec.heads.size() == 1);
  const MessageHead& h = rec.heads[0];
  CHECK(h.method == "GET");
  CHECK(h.target == "/index.html?q=1");
  CHECK(h.version_minor == 1);
  REQUIRE(h.headers.size() == 2);
  CHECK(h.headers[0].name == "Host");
  CHECK(h.headers[1].value == "*/*");  // OWS trimmed
  CHECK(p.idle());
  CHECK(p.finish());
}

// The parser reuses one MessageHead (and its strings) from message to
// message: each head must carry exactly its own start line and fields.
TEST_CASE("consecutive heads on one parser carry only their own fields") {
  Recorder rec;
  H1Parser p(Kind::response, rec);
  const std::string in =
      "HTTP/1.1 200 OK\r\nServer: a-long-server-name/1.0\r\nX-A: 1\r\nX-B: 2\r\nContent-Length: 0\r\n\r\n"
      "HTTP/1.1 404 Not Found here\r\nContent-Length: 0\r\n\r\n"
      "HTTP/1.1 204 \r\nDate: Thu, 27 Nov 2026 15:31:13 GMT\r\nServer: s\r\n\r\n";
  for (int i = 0; i < 3; ++i) p.expect_response_to("GET");
  REQUIRE(p.feed({in.data(), in.size()}));
  REQUIRE(rec.heads.size() == 3);
  CHECK(rec.heads[0].headers.size() == 4);
  CHECK(rec.heads[0].headers[0].value == "a-long-server-name/1.0");
  CHECK(rec.heads[1].status == 404);
  CHECK(rec.heads[1].reason == "Not Found here");
  REQUIRE(rec.heads[1].headers.size() == 1);
  CHECK(rec.heads[1].headers[0].name == "Content-Length");
  CHECK(rec.heads[1].headers[0].value == "0");
  CHECK(rec.heads[2].status == 204);
  CHECK(rec.heads[2].reason.empty());
  REQUIRE(rec.heads[2].headers.size() == 2);
  CHECK(rec.heads[2].headers[0].value == "Thu, 27 Nov 2026 15:31:13 GMT");
  CHECK(rec.heads[2].headers[1].name == "Server");
  CHECK(rec.heads[2].headers[1].value == "s");
  // Trimmed between messages (an idle connection), then a fourth.
  p.trim();
  p.expect_response_to("GET");
  const std::string more = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
  REQUIRE(p.feed({more.data(), more.size()}));
  REQUIRE(rec.heads.size() == 4);
  REQUIRE(rec.heads[3].headers.size() == 1);
  CHECK(rec.heads[3].headers[0].value == "2");
  CHECK(p.idle());
}

TEST_CASE("HTTP/1.0 request without Host") {
  const Result r = req("GET / HTTP/1.0\r\n\r\n");
  CHECK(r.ok);
  CHECK(r.events == Events{"head GET / none 0 @0", "end @18"});
}

TEST_CASE("POST with Content-Length") {
  const std::string in = with_headers("Content-Length: 11\r\n", "hello world");
  const Result r = req(in);
  REQUIRE(r.ok);
  CHECK(r.events == Events{"head POST /upload length 11 @0", "body hello world",
                           "end @" + std::to_string(in.size())});
  CHECK(r.forwarded == in);
  CHECK(r.idle);
}

TEST_CASE("body bytes are passed without copying") {
  const std::string in = with_headers("Content-Length: 5\r\n", "abcde");
  struct Spans : Recorder {
    std::vector<std::span<const char>> bodies;
    void on_body(std::span<const char> d) override { bodies.push_back(d); }
  } rec;
  H1Parser p(Kind::request, rec);
  REQUIRE(p.feed({in.data(), in.size()}));
  REQUIRE(rec.bodies.size() == 1);
  CHECK(rec.bodies[0].data() == in.data() + in.size() - 5);
  CHECK(rec.bodies[0].size() == 5);
}

TEST_CASE("identical repeated Content-Length is accepted") {
  const Result r = req(with_headers("Content-Length: 3, 3\r\nContent-Length: 003\r\n", "abc"));
  CHECK(r.ok);
  CHECK(r.events.size() == 3);
  CHECK(r.events[1] == "body abc");
}

TEST_CASE("largest Content-Length is accepted, then the close is premature") {
  const Result r = req(with_headers("Content-Length: 9223372036854775807\r\n", "x"), true);
  CHECK_FALSE(r.ok);
  CHECK(r.status == 400);
  CHECK(r.reason == "connection closed mid-message");
  REQUIRE_FALSE(r.events.empty());
  CHECK(r.events[0] == "head POST /upload length 9223372036854775807 @0");
}

TEST_CASE("chunked body with extensions and trailers") {
  const std::string in = with_headers("Transfer-Encoding: gzip, Chunked\r\n",
                                      "5;name=value\r\nhello\r\n"
                                      "6 ; a ; b=\"q\"\r\n world\r\n"
                                      "00000000000000A\r\n0123456789\r\n"
                                      "0\r\nX-Checksum: abc\r\nX-Other:  1 \r\n\r\n");
  const Result r = req(in);
  REQUIRE(r.ok);
  CHECK(r.events == Events{"head POST /upload chunked 0 @0", "body hello world0123456789",
                           "trailers X-Checksum=abc X-Other=1", "end @" + std::to_string(in.size())});
  CHECK(r.forwarded == in);
}

TEST_CASE("chunked body without trailers reports an empty trailer list") {
  const std::string in = with_headers("Transfer-Encoding: chunked\r\n", "3\r\nabc\r\n0\r\n\r\n");
  const Result r = req(in);
  REQUIRE(r.ok);
  CHECK(r.events == Events{"head POST /upload chunked 0 @0", "body abc", "trailers",
                           "end @" + std::to_string(in.size())});
}

TEST_CASE("pipelined requests in one feed") {
  const std::string a = "GET /a HTTP/1.1\r\nHost: h\r\n\r\n";
  const std::string b = "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nxyz";
  const std::string c = "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n";
  const std::string d = "GET /d HTTP/1.1\r\nHost: h\r\n\r\n";
  const std::string in = a + b + c + d;
  const Result r = req(in);
  REQUIRE(r.ok);
  const auto at = [](std::size_t n) { return "@" + std::to_string(n); };
  CHECK(r.events == Events{
                        "head GET /a none 0 @0",
                        "end " + at(a.size()),
                        "head POST /b length 3 " + at(a.size()),
                        "body xyz",
                        "end " + at(a.size() + b.size()),
                        "head POST /c chunked 0 " + at(a.size() + b.size()),
                        "body hi",
                        "trailers",
                        "end " + at(a.size() + b.size() + c.size()),
                        "head GET /d none 0 " + at(a.size() + b.size() + c.size()),
                        "end " + at(in.size()),
                    });
  CHECK(r.forwarded == in);
}

TEST_CASE("any split of the input gives the same events and forwards every byte") {
  const std::vector<std::string> requests = {
      "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody"
      "GET /y HTTP/1.0\r\n\r\n",
      with_headers("Transfer-Encoding: chunked\r\n",
                   "1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n1\r\n!\r\n0\r\nT: v\r\nU: w\r\n\r\n") +
          "GET /next HTTP/1.1\r\nHost: a\r\n\r\n",
      with_headers("Content-Length: 0\r\n") + with_headers("Transfer-Encoding: chunked\r\n", "0\r\n\r\n"),
  };
  for (const auto& in : requests) {
    CAPTURE(in);
    const Result whole = req(in);
    CHECK(whole.ok);
    CHECK(whole.forwarded == in);
    check_splits(Kind::request, in);
  }

  struct Case {
    std::string in;
    std::vector<std::string> methods;
    bool finish;
  };
  const std::vector<Case> responses = {
      {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", {"GET"}, false},
      {"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
       "4\r\nwxyz\r\n0\r\nExpires: never\r\n\r\n",
       {"POST"}, false},
      {"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
       "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\nHTTP/1.0 200 OK\r\n\r\nuntil close",
       {"HEAD", "GET", "GET", "GET"}, true},
      {"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello\r\n\r\n", {"GET"}, true},
  };
  for (const auto& c : responses) {
    CAPTURE(c.in);
    const Result whole = run(Kind::response, c.in, 0, c.finish, c.methods);
    CHECK(whole.ok);
    CHECK(whole.forwarded == c.in);
    check_splits(Kind::response, c.in, c.methods, c.finish);
  }
}

TEST_CASE("invalid input is rejected the same way whatever the split") {
  check_splits(Kind::request, "GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost : a\r\n\r\n");
  check_splits(Kind::request, with_headers("Transfer-Encoding: chunked\r\n", "2\r\nab\r\nz\r\n"));
  check_splits(Kind::response, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 200 OK\nA: b\r\n\r\n");
}

TEST_CASE("an invalid head is never forwarded") {
  const std::string good = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
  const Result r = req(good + "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx");
  CHECK_FALSE(r.ok);
  CHECK(r.status == 400);
  CHECK(r.forwarded == good);
  CHECK(r.events == Events{"head GET / none 0 @0", "end @" + std::to_string(good.size())});
}

TEST_CASE("nothing is accepted after an error") {
  Recorder rec;
  H1Parser p(Kind::request, rec);
  const std::string bad = "GET / HTTP/9.9\r\n\r\n";
  CHECK_FALSE(p.feed({bad.data(), bad.size()}));
  CHECK(p.error().status == 505);
  const std::string good = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
  CHECK_FALSE(p.feed({good.data(), good.size()}));
  CHECK_FALSE(p.finish());
  CHECK(rec.events.empty());
  CHECK(rec.forwarded.empty());
  CHECK_FALSE(p.idle());
}

TEST_CASE("HEAD response has no body but reports its Content-Length") {
  const std::string head = "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n";
  const std::string next = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
  const Result r = resp(head + next, {"HEAD", "GET"});
  REQUIRE(r.ok);
  CHECK(r.events == Events{"head 200 none 1234 @0", "end @" + std::to_string(head.size()),
                           "head 200 length 2 @" + std::to_string(head.size()), "body hi",
                           "end @" + std::to_string(head.size() + next.size())});
}

TEST_CASE("204 and 304 have no body") {
  const std::string a = "HTTP/1.1 204 No Content\r\n\r\n";
  const std::string b = "HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n";
  const std::string c = "HTTP/1.1 204\r\n\r\n";   // no SP, no reason
  const std::string d = "HTTP/1.1 204 \r\n\r\n";  // empty reason
  const Result r = resp(a + b + c + d, {"GET", "GET", "GET", "GET"});
  REQUIRE(r.ok);
  CHECK(r.events == Events{"head 204 none 0 @0", "end @" + std::to_string(a.size()),
                           "head 304 none 50 @" + std::to_string(a.size()),
                           "end @" + std::to_string(a.size() + b.size()),
                           "head 204 none 0 @" + std::to_string(a.size() + b.size()),
                           "end @" + std::to_string(a.size() + b.size() + c.size()),
                           "head 204 none 0 @" + std::to_string(a.size() + b.size() + c.size()),
                           "end @" + std::to_string(a.size() + b.size() + c.size() + d.size())});
  CHECK(r.idle);
}

TEST_CASE("status line details are kept") {
  Recorder rec;
  H1Parser p(Kind::response, rec);
  const std::string in = "HTTP/1.0 404 Not  Found\r\nContent-Length: 0\r\n\r\n";
  REQUIRE(p.feed({in.data(), in.size()}));
  REQUIRE(rec.heads.size() == 1);
  CHECK(rec.heads[0].status == 404);
  CHECK(rec.heads[0].reason == "Not  Found");
  CHECK(rec.heads[0].version_minor == 0);
}

TEST_CASE("100 Continue, then the final response for the same request") {
  const std::string c = "HTTP/1.1 100 Continue\r\n\r\n";
  const std::string ok = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
  // The HEAD that follows proves the POST was popped only once.
  const std::string head = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n";
  const Result r = resp(c + c + ok + head, {"POST", "HEAD"});
  REQUIRE(r.ok);
  const auto at = [](std::size_t n) { return "@" + std::to_string(n); };
  CHECK(r.events == Events{"head 100 none 0 @0", "end " + at(c.size()), "head 100 none 0 " + at(c.size()),
                           "end " + at(2 * c.size()), "head 200 length 3 " + at(2 * c.size()), "body abc",
                           "end " + at(2 * c.size() + ok.size()),
                           "head 200 none 3 " + at(2 * c.size() + ok.size()),
                           "end " + at(2 * c.size() + ok.size() + head.size())});
  CHECK(r.forwarded == c + c + ok + head);
}

TEST_CASE("101 Switching Protocols starts a tunnel") {
  const std::string head = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
  const std::string opaque = "\x81\x02hi\r\n\r\nGET / HTTP/1.1\r\n\0\n"s;
  const Result r = resp(head + opaque, {"GET"}, true);
  REQUIRE(r.ok);
  CHECK(r.tunnel);
  CHECK(r.events == Events{"head 101 tunnel 0 @0", "body " + opaque});
  CHECK(r.forwarded == head + opaque);
}

TEST_CASE("2xx to CONNECT starts a tunnel, other answers do not") {
  const std::string head = "HTTP/1.1 200 Connection established\r\n\r\n";
  const Result r = resp(head + "\x16\x03\x01", {"CONNECT"});
  REQUIRE(r.ok);
  CHECK(r.tunnel);
  CHECK(r.events == Events{"head 200 tunnel 0 @0", "body \x16\x03\x01"});

  const std::string denied = "HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 2\r\n\r\nno";
  const Result d = resp(denied, {"CONNECT"});
  REQUIRE(d.ok);
  CHECK_FALSE(d.tunnel);
  CHECK(d.events == Events{"head 407 length 2 @0", "body no", "end @" + std::to_string(denied.size())});
}

TEST_CASE("response bodies delimited by the close") {
  const std::string in = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of this";
  const Result open = resp(in);  // no method pushed: treated as GET
  REQUIRE(open.ok);
  CHECK(open.events == Events{"head 200 close 0 @0", "body all of this"});
  CHECK_FALSE(open.idle);

  const Result closed = resp(in, {}, true);
  REQUIRE(closed.ok);
  CHECK(closed.events == Events{"head 200 close 0 @0", "body all of this", "end @" + std::to_string(in.size())});
  CHECK(closed.idle);

  // Transfer-Encoding that does not end in chunked, or in HTTP/1.0.
  const Result gz = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nzz", {"GET"}, true);
  REQUIRE(gz.ok);
  CHECK(gz.events == Events{"head 200 close 0 @0", "body zz", "end @55"});
  const Result old = resp("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", {"GET"}, true);
  REQUIRE(old.ok);
  CHECK(old.events.at(0) == "head 200 close 0 @0");
}

TEST_CASE("finish") {
  SUBCASE("idle is a clean close") {
    CHECK(req("", true).ok);
    CHECK(req("GET / HTTP/1.1\r\nHost: a\r\n\r\n", true).ok);
    CHECK(resp("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", {}, true).ok);
  }
  SUBCASE("a cut message is an error") {
    const std::vector<std::string> cut = {
        "G",
        "GET / HTTP/1.1\r\nHost: a\r\n",
        with_headers("Content-Length: 10\r\n", "12345"),
        with_headers("Transfer-Encoding: chunked\r\n"),
        with_headers("Transfer-Encoding: chunked\r\n", "5\r\nab"),
        with_headers("Transfer-Encoding: chunked\r\n", "5\r\nabcde"),
        with_headers("Transfer-Encoding: chunked\r\n", "5\r\nabcde\r"),
        with_headers("Transfer-Encoding: chunked\r\n", "5\r\nabcde\r\n"),
        with_headers("Transfer-Encoding: chunked\r\n", "5\r\nabcde\r\n0\r\n"),
        with_headers("Transfer-Encoding: chunked\r\n", "5\r\nabcde\r\n0\r\nA: b\r\n"),
    };
    for (const auto& in : cut) {
      CAPTURE(in);
      const Result r = req(in, true);
      CHECK_FALSE(r.ok);
      CHECK(r.status == 400);
      CHECK(r.reason == "connection closed mid-message");
    }
    const Result r = resp("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", {"GET"}, true);
    CHECK_FALSE(r.ok);
    CHECK(r.status == 502);
    CHECK(r.reason == "connection closed mid-message");
  }
}

TEST_CASE("request smuggling vectors are rejected") {
  SUBCASE("Content-Length and Transfer-Encoding together") {
    check_request_rejected(with_headers("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"), 400);
    check_request_rejected(with_headers("Transfer-Encoding: chunked\r\nContent-Length: 0\r\n", "0\r\n\r\n"), 400);
  }
  SUBCASE("ambiguous Content-Length") {
    check_request_rejected(with_headers("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"), 400);
    check_request_rejected(with_headers("Content-Length: 5, 6\r\n", "hello!"), 400);
    check_request_rejected(with_headers("Content-Length: 5,\r\n", "hello"), 400);
    check_request_rejected(with_headers("Content-Length: ,5\r\n", "hello"), 400);
    check_request_rejected(with_headers("Content-Length:\r\n"), 400);
    check_request_rejected(with_headers("Content-Length: +5\r\n", "hello"), 400);
    check_request_rejected(with_headers("Content-Length: -5\r\n", "hello"), 400);
    check_request_rejected(with_headers("Content-Length: 5 0\r\n", "hello"), 400);
    check_request_rejected(with_headers("Content-Length: 0x5\r\n", "hello"), 400);
    check_request_rejected(with_headers("Content-Length: 5.0\r\n", "hello"), 400);
    check_request_rejected(with_headers("Content-Length: 9223372036854775808\r\n"), 413);
    check_request_rejected(with_headers("Content-Length: 18446744073709551621\r\n", "hello"), 413);
    check_request_rejected(with_headers("Content-Length: 99999999999999999999999999\r\n"), 413);
  }
  SUBCASE("Transfer-Encoding that does not end in chunked") {
    check_request_rejected(with_headers("Transfer-Encoding: gzip\r\n", "x"), 400);
    check_request_rejected(with_headers("Transfer-Encoding: chunked, gzip\r\n", "0\r\n\r\n"), 400);
    check_request_rejected(with_headers("Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n"), 400);
    check_request_rejected(with_headers("Transfer-Encoding: chunked, chunked\r\n", "0\r\n\r\n"), 400);
    check_request_rejected(with_headers("Transfer-Encoding: chunked,\r\n", "0\r\n\r\n"), 400);
    check_request_rejected(with_headers("Transfer-Encoding: , chunked\r\n", "0\r\n\r\n"), 400);
    check_request_rejected(with_headers("Transfer-Encoding:\r\n"), 400);
    check_request_rejected(with_headers("Transfer-Encoding: \"chunked\"\r\n"), 400);
    check_request_rejected(with_headers("Transfer-Encoding: chunked;q=1\r\n", "0\r\n\r\n"), 400);
    check_request_rejected(with_headers("Transfer-Encoding: x-custom\r\n", "x"), 501);
    check_request_rejected(with_headers("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"), 501);
    check_request_rejected(
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400);
  }
  SUBCASE("header names and line structure") {
    check_request_rejected(with_headers("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"), 400, "whitespace between");
    check_request_rejected(with_headers("Content-Length\t: 0\r\n"), 400, "whitespace between");
    check_request_rejected(with_headers("X-A: 1\r\n : chunked\r\n"), 400);
    check_request_rejected(with_headers(": x\r\n"), 400, "empty header name");
    check_request_rejected(with_headers("No-Colon\r\n"), 400);
    check_request_rejected(with_headers("Bad(Name): 1\r\n"), 400);
    // obs-fold, with SP and HTAB
    check_request_rejected(with_headers("X-A: 1\r\n 2\r\n"), 400, "folding");
    check_request_rejected(with_headers("Transfer-Encoding:\r\n\tchunked\r\n", "0\r\n\r\n"), 400, "folding");
  }
  SUBCASE("bare CR, bare LF, NUL") {
    check_request_rejected("GET / HTTP/1.1\r\nHost: a\rX-A: b\r\n\r\n", 400, "bare CR");
    check_request_rejected("GET /\r HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bare CR");
    check_request_rejected("GET / HTTP/1.1\r\nHost: a\r\r\n\r\n", 400, "bare CR");
    check_request_rejected("GET / HTTP/1.1\nHost: a\r\n\r\n", 400, "bare LF");
    check_request_rejected("GET / HTTP/1.1\r\nHost: a\n\r\n", 400, "bare LF");
    check_request_rejected("GET / HTTP/1.1\r\nHost: a\r\n\n", 400, "bare LF");
    check_request_rejected("\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bare LF");
    check_request_rejected("GET / HTTP/1.1\r\nHost: a\r\nX-A: \0b\r\n\r\n"s, 400, "NUL");
    check_request_rejected("GET / HTTP/1.1\r\nHost: a\r\nX\0A: b\r\n\r\n"s, 400, "NUL");
    check_request_rejected("GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n"s, 400, "NUL");
    check_request_rejected("GET / HTTP/1.1\r\nHost: a\r\nX-A: \x01\r\n\r\n", 400);
    check_request_rejected("GET / HTTP/1.1\r\nHost: a\r\nX-A: \x7f\r\n\r\n", 400);
  }
  SUBCASE("Host") {
    check_request_rejected("GET / HTTP/1.1\r\n\r\n", 400);
    check_request_rejected("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400);
  }
  SUBCASE("CONNECT with content") {
    check_request_rejected("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nContent-Length: 2\r\n\r\nab", 400);
  }
}

TEST_CASE("invalid chunked framing is rejected") {
  auto chunked = [](std::string_view body) { return with_headers("Transfer-Encoding: chunked\r\n", body); };
  check_request_rejected(chunked("\r\n\r\n"), 400);                        // empty size
  check_request_rejected(chunked("g\r\nabc\r\n0\r\n\r\n"), 400);           // not hex
  check_request_rejected(chunked("-1\r\n0\r\n\r\n"), 400);
  check_request_rejected(chunked("+1\r\nx\r\n0\r\n\r\n"), 400);
  check_request_rejected(chunked("0x1\r\nx\r\n0\r\n\r\n"), 400);
  check_request_rejected(chunked(" 1\r\nx\r\n0\r\n\r\n"), 400);
  check_request_rejected(chunked("1 \r\nx\r\n0\r\n\r\n"), 400);            // whitespace, no extension
  check_request_rejected(chunked("10000000000000000\r\n"), 400);           // 17 digits
  check_request_rejected(chunked("00000000000000001\r\nx\r\n0\r\n\r\n"), 400);
  check_request_rejected(chunked("1;a\x01\r\nx\r\n0\r\n\r\n"), 400);      // CTL in extension
  check_request_rejected(chunked("1;a\rb\r\nx\r\n0\r\n\r\n"), 400);       // CR in extension
  check_request_rejected(chunked("1\nx\r\n0\r\n\r\n"), 400, "bare LF");    // bare LF
  check_request_rejected(chunked("5\r\nhelloX\r\n0\r\n\r\n"), 400, "chunk terminator");
  check_request_rejected(chunked("5\r\nhello\n0\r\n\r\n"), 400);
  check_request_rejected(chunked("5\r\nhello\rX0\r\n\r\n"), 400);
  check_request_rejected(chunked("5\r\nhello world\r\n0\r\n\r\n"), 400);   // chunk longer than its size
  check_request_rejected(chunked("0\r\nA: b\n\r\n"), 400, "bare LF");      // bare LF in trailers
  check_request_rejected(chunked("0\r\n b\r\n\r\n"), 400, "folding");      // fold in trailers
  check_request_rejected(chunked("0\r\nA : b\r\n\r\n"), 400, "whitespace between");
  check_request_rejected(chunked("0\r\nA: \0\r\n\r\n"s), 400, "NUL");
  // 16 hex digits is the most allowed; this one is merely huge.
  const Result big = req(chunked("FFFFFFFFFFFFFFFF\r\nabc"), true);
  CHECK_FALSE(big.ok);
  CHECK(big.reason == "connection closed mid-message");
  CHECK(big.events.at(1) == "body abc");
}

TEST_CASE("start lines") {
  check_request_rejected("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505);
  check_request_rejected("GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505);
  check_request_rejected("GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505);
  check_request_rejected("GET / http/1.1\r\nHost: a\r\n\r\n", 400);
  check_request_rejected("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400);
  check_request_rejected("GET / HTTP/11\r\nHost: a\r\n\r\n", 400);
  check_request_rejected("GET / HTTP/2\r\nHost: a\r\n\r\n", 400);
  check_request_rejected("GET /\r\nHost: a\r\n\r\n", 400);
  check_request_rejected("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
  check_request_rejected(" GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
  check_request_rejected("G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
  check_request_rejected("GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", 400);
  check_request_rejected("GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n", 400);
  check_request_rejected("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "empty line");  // leading empty line
  check_request_rejected("\r\n\r\n", 400);
}

TEST_CASE("head size limits") {
  H1Limits limits;
  limits.max_head = 64;
  const std::string fits = "GET / HTTP/1.1\r\nHost: a\r\nX: " + std::string(64 - 32, 'x') + "\r\n\r\n";
  REQUIRE(fits.size() == 64);
  CHECK(run(Kind::request, fits, 0, true, {}, limits).ok);
  CHECK(run(Kind::request, fits, 1, true, {}, limits).ok);
  const std::string over = "GET / HTTP/1.1\r\nHost: a\r\nX: " + std::string(64 - 31, 'x') + "\r\n\r\n";
  for (std::size_t step : {0, 1, 5}) {
    const Result r = run(Kind::request, over, step, false, {}, limits);
    CHECK_FALSE(r.ok);
    CHECK(r.status == 431);
    CHECK(r.forwarded.empty());
  }
  // No terminator at all: refused as soon as the limit is reached.
  const Result at_limit = run(Kind::request, std::string(64, 'A'), 0, false, {}, limits);
  CHECK_FALSE(at_limit.ok);
  CHECK(at_limit.status == 431);
  CHECK(run(Kind::request, std::string(63, 'A'), 0, false, {}, limits).ok);
  const Result endless = run(Kind::request, std::string(200, 'A'), 1, false, {}, limits);
  CHECK_FALSE(endless.ok);
  CHECK(endless.status == 431);
  // Default limit, request and response.
  check_request_rejected("GET / HTTP/1.1\r\nHost: a\r\nX: " + std::string(70000, 'x') + "\r\n\r\n", 431);
  check_rejected(Kind::response, "HTTP/1.1 200 OK\r\nX: " + std::string(70000, 'x') + "\r\n\r\n", 502, {"GET"});
}

TEST_CASE("chunk line and trailer limits") {
  H1Limits limits;
  limits.max_chunk_line = 16;
  limits.max_trailers = 32;
  const std::string head = with_headers("Transfer-Encoding: chunked\r\n");
  const std::string ext_ok = "1;" + std::string(12, 'e') + "\r\nx\r\n0\r\n\r\n";  // 16-byte line
  CHECK(run(Kind::request, head + ext_ok, 0, true, {}, limits).ok);
  CHECK(run(Kind::request, head + ext_ok, 1, true, {}, limits).ok);
  const std::string ext_long = "1;" + std::string(13, 'e') + "\r\nx\r\n0\r\n\r\n";
  CHECK(run(Kind::request, head + ext_long, 0, true, {}, limits).status == 400);
  CHECK(run(Kind::request, head + ext_long, 1, true, {}, limits).status == 400);

  const std::string tr_ok = "0\r\nT: " + std::string(32 - 7, 't') + "\r\n\r\n";
  const Result ok = run(Kind::request, head + tr_ok, 3, true, {}, limits);
  CHECK(ok.ok);
  CHECK(ok.forwarded == head + tr_ok);
  const std::string tr_long = "0\r\nT: " + std::string(32 - 6, 't') + "\r\n\r\n";
  CHECK(run(Kind::request, head + tr_long, 0, true, {}, limits).status == 431);
  CHECK(run(Kind::request, head + tr_long, 1, true, {}, limits).status == 431);
}

TEST_CASE("invalid responses are bad gateway") {
  const std::vector<std::string> bad = {
      "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
      "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
      "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
      "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
      "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
      "HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
      "HTTP/1.1 200 OK\r\nX : a\r\n\r\n",
      "HTTP/2 200 OK\r\n\r\n",
      "HTTP/2.0 200 OK\r\n\r\n",
      "HTTP/1.1 20 OK\r\n\r\n",
      "HTTP/1.1 2000 OK\r\n\r\n",
      "HTTP/1.1 200OK\r\n\r\n",
      "HTTP/1.1 099 Low\r\n\r\n",
      "HTTP/1.1  200 OK\r\n\r\n",
      "HTTP/1.1 200 O\x01K\r\n\r\n",
      "http/1.1 200 OK\r\n\r\n",
      "\r\nHTTP/1.1 200 OK\r\n\r\n",
  };
  for (const auto& in : bad) check_rejected(Kind::response, in, 502, {"GET"});
}
